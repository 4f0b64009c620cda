r"""Config-level benchmark: the TRAINER's compiled step (train_step.compile_train_step), any config.

  python bench/train_throughput.py --config=configs/vit.py:b16,cifar10 \
      --config.batch=256 --config.accum_steps=1 --config.model.dtype=bfloat16 --steps=10

What it adds to bench/train_step.py (the model-level benchmark): the step is exactly the
one `vit_jax.main` trains with — the config's optimizer (AdamW/SGD/Adafactor, schedule,
clipping, optimizer-state dtype), gradient accumulation, mesh and logical sharding rules —
on synthetic batches already on the devices (no input pipeline). Comparing its img/s with
the trainer's logged img/s on real data gives the input pipeline's cost. The library's
start-up defaults (vit_jax.runtime_defaults) are applied as main.py applies them.

Two warm-up steps are excluded, then `--windows` windows of `--steps` steps, each blocking on
its result; prints one JSON line (median window): model, batch, devices, device kind, step
time, img/s, img/s/device, FLOPs/step/device (XLA cost analysis) and MFU (device peak known).
"""
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vit.py:b16,cifar10",
                                          "Experiment config.")
_STEPS = flags.DEFINE_integer("steps", 5, "Steps per timed window.")
_WINDOWS = flags.DEFINE_integer("windows", 3, "Timed windows (the median is reported).")
_JSON = flags.DEFINE_string("json", None, "Also write the result to this file.")


def main(_):
  from vit_jax import runtime_defaults  # pylint: disable=g-import-not-at-top
  runtime_defaults.apply_defaults()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding
  from vit_jax.planning import compiled_stats, datasheets  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train_state, train_step
  runtime_defaults.apply_host_defaults()
  config = _CONFIG.value
  mesh = sharding.mesh_for_config(config)
  num_classes = int(config.num_classes or 10)
  setup = train_state.setup_from_config(config, mesh, num_classes, int(config.total_steps or 1000))
  abstract = train_step.abstract_batch(config, num_classes, mesh)
  shapes = {k: v.shape for k, v in abstract.items()}
  t0 = time.perf_counter()
  compiled = train_step.compile_train_step(setup, config, num_classes)
  compile_s = time.perf_counter() - t0
  state = train_state.create_train_state(setup, 0)
  rng = np.random.RandomState(0)
  labels = rng.randint(0, num_classes, config.batch)
  images = (rng.randint(0, 256, shapes["image"]).astype(np.uint8)  # the trainer's uint8 batches
            if abstract["image"].dtype == np.uint8 else
            rng.uniform(-1, 1, shapes["image"]).astype(np.float32))
  batch = {"image": images,
           "label": np.eye(num_classes, dtype=np.float32)[labels]}
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
  for _ in range(2):
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  windows = []
  for _ in range(_WINDOWS.value):
    start = time.perf_counter()
    for _ in range(_STEPS.value):
      state, m = compiled(state, batch)
    jax.block_until_ready((state, m))
    windows.append((time.perf_counter() - start) / _STEPS.value)
  step_time = statistics.median(windows)
  flops = compiled_stats.compiled_flops(compiled)
  peak, reason = datasheets.peak_flops_per_device()
  result = {"model": config.model_name, "batch": config.batch, "crop": config.pp.crop,
            "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            "compile_s": compile_s, "step_time_s": step_time,
            "step_time_s_windows": windows, "img_per_sec": config.batch / step_time,
            "img_per_sec_per_device": config.batch / step_time / jax.device_count(),
            "flops_per_step_per_device": flops,
            "mfu": (flops / step_time / peak) if flops and peak else None,
            "mfu_note": reason or None, "load_average": os.getloadavg()}
  print(json.dumps(result))
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  app.run(main)
