r"""Benchmark: train-step throughput (img/s, img/s/device) and MFU on this machine's devices.

Synthetic batches already on device (no input pipeline), so this measures the model +
optimizer + sharding only. Any experiment config works:

  python bench/train_throughput.py --config=configs/vit.py:b16,cifar10 \
      --config.batch=256 --config.accum_steps=1 --config.model.dtype=bfloat16 --steps=20

Prints one JSON line: model, batch, devices, device kind, step time, img/s, img/s/device,
FLOPs/step/device (XLA cost analysis) and MFU (when the device's peak is known).
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from absl import app, flags  # pylint: disable=g-import-not-at-top,wrong-import-position
from ml_collections import config_flags  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", "configs/vit.py:b16,cifar10", "Experiment config.")
_STEPS = flags.DEFINE_integer("steps", 20, "Timed steps (after 2 warm-up steps).")


def main(_):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from vit_jax import metrics, sharding, train, train_state  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  mesh = train._prepare(config)  # pylint: disable=protected-access
  num_classes = int(config.num_classes or 10)
  setup = train_state.setup_from_config(config, mesh, num_classes, int(config.total_steps or 1000))
  shapes = train.abstract_batch_shapes(config, num_classes)
  compiled = train.compile_train_step(setup, config, shapes)
  state = train_state.create_train_state(setup, 0)
  rng = np.random.RandomState(0)
  batch = {"image": rng.uniform(-1, 1, shapes["image"]).astype(np.float32),
           "label": np.eye(num_classes, dtype=np.float32)[rng.randint(0, num_classes, config.batch)]}
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh)) for k, v in batch.items()}
  for _ in range(2):
    state, m = compiled(state, batch)
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = compiled(state, batch)
  jax.block_until_ready((state, m))
  step_time = (time.perf_counter() - start) / _STEPS.value
  flops = metrics.compiled_flops(compiled)
  peak, reason = metrics.peak_flops_per_device()
  result = {"model": config.model_name, "batch": config.batch, "crop": config.pp.crop,
            "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
            "step_time_s": step_time, "img_per_sec": config.batch / step_time,
            "img_per_sec_per_device": config.batch / step_time / jax.device_count(),
            "flops_per_step_per_device": flops,
            "mfu": (flops / step_time / peak) if flops and peak else None,
            "mfu_note": reason or None}
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
