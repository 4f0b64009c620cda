"""Google's `vit_jax.inference_time`: `inference_time(config, workdir)` times a model's
inference forward and writes imgs_sec_core_{min,max,mean,std} to TensorBoard in `workdir`;
`get_config()` is its config (Google's vit_jax/configs/inference_time.py, same keys).

The forward and the timing loop are ours (planning/timing.py): jitted on all local devices
with the global `config.batch` split over a data mesh (no pmap). Unlike Google's code, the
`config.steps` runs after the `config.initial_steps` untimed ones are the timed ones.
"""
from __future__ import annotations

import logging
import numbers
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from vit_jax import sharding
from vit_jax.configs import base
from vit_jax.models import registry
from vit_jax.planning import timing

TRAINER = "inference_time"  # config.trainer (Google's main) / config.train (Google's config).
CONFIG_FILE = "vit_jax/configs/inference_time.py"
KEYS = ("model_name", "steps", "initial_steps", "batch", "num_classes", "image_size")


def get_config() -> ml_collections.ConfigDict:
  """Google's inference-time defaults; batch, num_classes and image_size must be set."""
  c = ml_collections.ConfigDict()
  c.model_name = "ViT-B_32"    # A registered name (vit_jax.configs.models.MODEL_CONFIGS).
  c.log_dir = "."              # Kept for Google's layout; the events go to the workdir.
  c.steps = 30                 # Timed runs.
  c.initial_steps = 10         # Untimed runs before them (after the compile).
  c.batch = 0                  # Global batch, split over the local devices.
  c.num_classes = 0
  c.image_size = 0             # Width = height, px.
  c.train = TRAINER            # The key Google's config sets ...
  c.trainer = TRAINER          # ... and the one Google's main (and ours) dispatches on.
  return c


def is_inference_time_config(config: Any) -> bool:
  """True for a config asking for this benchmark (config.trainer or config.train)."""
  return hasattr(config, "keys") and any(
      key in config and config[key] == TRAINER for key in ("trainer", "train"))


def check_config(config: Any, num_devices: int) -> None:
  """One ValueError naming every --config.<key> to set (absent or out-of-range values)."""
  missing = [k for k in KEYS if k not in config]
  if missing:
    raise ValueError(f"config has no {', '.join(missing)}: the inference-time benchmark takes "
                     f"its own config, --config={CONFIG_FILE}.")
  problems = [f"--config.{k} (now {config[k]!r}; must be > 0)" for k in
              ("batch", "num_classes", "image_size", "steps") if not _positive_int(config[k])]
  if not (isinstance(config.initial_steps, numbers.Integral) and config.initial_steps >= 0):
    problems.append(f"--config.initial_steps (now {config.initial_steps!r}; must be >= 0)")
  if not problems and config.batch % num_devices:
    problems.append(f"--config.batch (now {config.batch}; the global batch must be a multiple "
                    f"of the {num_devices} local devices)")
  if problems:
    example = (" For example: --config.batch=64 --config.num_classes=1000 --config.image_size=224"
               if any(not _positive_int(config[k]) for k in ("batch", "num_classes", "image_size"))
               else "")
    raise ValueError(f"inference time: set {'; '.join(problems)}.{example}")


def _positive_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value > 0


def inference_time(config: Any, workdir: str, *,
                   clock: Optional[Callable[[], float]] = None) -> dict[str, Any]:
  """Compiles the forward, runs it `initial_steps` times untimed and `steps` times timed, and
  writes (process 0) the config as hparams and the per-device images/s figures at step 0 to
  TensorBoard in `workdir`; returns those figures (with num_devices and the run seconds)."""
  devices = jax.local_devices()
  check_config(config, len(devices))
  try:
    model = registry.create_model(config.model_name, config.num_classes)
  except ValueError as e:
    raise ValueError(f"--config.model_name: {e}") from e
  mesh = sharding.make_mesh(base.DEFAULT_MESH, devices)
  logging.info("Compiling %s at %d px, batch %d over %d devices ...", config.model_name,
               config.image_size, config.batch, len(devices))
  call, _ = timing.forward_on_mesh(model, mesh, batch=config.batch,
                                   image_size=config.image_size)
  logging.info("%d untimed runs, then %d timed runs.", config.initial_steps, config.steps)
  seconds = timing.time_windows(call, config.steps, 1, warmup=config.initial_steps,
                                clock=clock)["window_s"]
  rates = config.batch / len(devices) / np.asarray(seconds, np.float64)
  figures = {"imgs_sec_core_min": float(rates.min()), "imgs_sec_core_max": float(rates.max()),
             "imgs_sec_core_mean": float(rates.mean()), "imgs_sec_core_std": float(rates.std())}
  for name, value in figures.items():
    logging.info("%s=%f", name, value)
  if jax.process_index() == 0:
    _write_events(workdir, config, figures)
  return dict(figures, num_devices=len(devices), run_seconds=seconds)


def _write_events(workdir: str, config: Any, figures: dict[str, float]) -> None:
  from clu import metric_writers  # pylint: disable=g-import-not-at-top  # imports TensorFlow.
  writer = metric_writers.SummaryWriter(workdir)
  try:
    writer.write_hparams(config.to_dict() if hasattr(config, "to_dict") else dict(config))
    writer.write_scalars(0, figures)
    writer.flush()
  finally:
    writer.close()


def summary_line(config: Any, result: dict, workdir: str) -> str:
  """One line for the command line: the mean and spread, what was timed, where the events are."""
  return (f"Inference time: {config.model_name} at {config.image_size} px, batch "
          f"{config.batch} over {result['num_devices']} device(s), {len(result['run_seconds'])} "
          f"timed runs: {result['imgs_sec_core_mean']:.1f} img/s per device (min "
          f"{result['imgs_sec_core_min']:.1f}, max {result['imgs_sec_core_max']:.1f}, std "
          f"{result['imgs_sec_core_std']:.1f}); TensorBoard events in {workdir}.")
