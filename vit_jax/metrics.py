"""Training metrics: FLOPs/MFU from the compiled step, throughput, data wait, and the writers.

Process 0 writes scalars to TensorBoard (clu.metric_writers, imported lazily because it
pulls in TensorFlow) and to the console (a tqdm progress bar with ETA plus one log line
per `log_every` steps); other processes write nothing.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import jax

from vit_jax import compiled_stats, run_log, topology

# Dense bf16 peak FLOP/s per chip (vendor datasheets). MFU uses these; unknown kinds → no MFU.
# TPU v4 and later come from topology.GENERATIONS (the one table of TPU figures).
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v2": 45e12,
    "TPU v3": 123e12,
    **{kind: topology.GENERATIONS[gen].peak_bf16_flops
       for kind, gen in topology.DEVICE_KINDS.items()},
    "NVIDIA H200": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA GH200": 989e12,
    "NVIDIA B200": 2250e12,
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "NVIDIA A10G": 125e12,
    "Tesla V100": 125e12,
}


def peak_flops_per_device(device: Optional[jax.Device] = None) -> tuple[Optional[float], str]:
  """(peak bf16 FLOP/s of one device, or None, and a reason when None)."""
  device = device or jax.devices()[0]
  kind = device.device_kind
  # Longest matching prefix wins ("TPU v5 lite" before "TPU v5", "NVIDIA H100 80GB HBM3" → H100).
  for name in sorted(PEAK_FLOPS_BY_DEVICE_KIND, key=len, reverse=True):
    if kind.startswith(name):
      return PEAK_FLOPS_BY_DEVICE_KIND[name], ""
  return None, (f"MFU omitted: no peak FLOP/s known for device kind {kind!r} "
                f"(platform {device.platform}); add it to metrics.PEAK_FLOPS_BY_DEVICE_KIND.")


def compiled_flops(compiled: Any) -> Optional[float]:
  """FLOPs of one execution of a compiled jit function on one device (XLA cost analysis)."""
  return compiled_stats.cost(compiled)["flops"]


def tokens_per_image(cfg: Any, resolution: int) -> int:
  """Encoder sequence length of a plain ViT at `resolution`: patches plus the class token."""
  from vit_jax.models import fields  # pylint: disable=g-import-not-at-top  (flax)
  return fields.sequence_length(cfg["patches"], cfg.get("classifier", "token"), resolution,
                                resolution)


def formula_flops_per_image(cfg: Any, resolution: int, num_classes: int) -> float:
  """Forward FLOPs of one image by the standard formula (2 x matmul multiply-adds).

  Patch embedding, per layer the four attention projections, the two MLP matmuls and the
  two (tokens x tokens) attention matmuls, and the head. Plain ViT only (0 for hybrids and
  Mixers); a training step is 3x this (forward + backward).
  """
  if "transformer" not in cfg or cfg.get("resnet") is not None:
    return 0.0
  ph, pw = tuple(cfg["patches"]["size"])
  d, t = cfg["hidden_size"], cfg["transformer"]
  tokens = tokens_per_image(cfg, resolution)
  per_layer = 2 * tokens * (4 * d * d + 2 * d * t["mlp_dim"]) + 2 * 2 * tokens * tokens * d
  embed = 2 * (resolution // ph) * (resolution // pw) * ph * pw * 3 * d
  return float(embed + t["num_layers"] * per_layer + 2 * d * num_classes)


class Throughput:
  """Accumulates step and data-wait time between log points; returns rates at each log."""

  def __init__(self, global_batch: int, num_devices: int, flops_per_device_step: Optional[float],
               peak_flops: Optional[float], fixed: Optional[dict[str, float]] = None):
    self.global_batch = global_batch
    self.num_devices = num_devices
    self.flops = flops_per_device_step
    self.peak = peak_flops
    self.fixed = dict(fixed or {})  # Figures repeated in every summary (e.g. teacher_flops_share).
    self.reset()

  def reset(self) -> None:
    self.start = time.perf_counter()
    self.steps = 0
    self.data_wait = 0.0

  def add_data_wait(self, seconds: float) -> None:
    self.data_wait += seconds

  def step_done(self) -> None:
    self.steps += 1

  def summary(self) -> dict[str, float]:
    """img/s, img/s/device, data-wait share, MFU (when known; a distillation teacher's forward
    counts as work) and the fixed figures since the last reset; then resets."""
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    out = {}
    if self.steps:
      step_time = elapsed / self.steps
      out["img_per_sec"] = self.global_batch / step_time
      out["img_per_sec_per_device"] = out["img_per_sec"] / self.num_devices
      out["step_time_sec"] = step_time
      out["data_wait_share"] = self.data_wait / elapsed
      if self.flops and self.peak:
        out["mfu"] = self.flops / step_time / self.peak
      out.update(self.fixed)
    self.reset()
    return out


class Writer:
  """Scalars → TensorBoard + console on process 0; a no-op elsewhere."""

  def __init__(self, workdir: str, total_steps: int, start_step: int, progress: bool = True):
    self.active = jax.process_index() == 0
    self._tb = None
    self._bar = None
    if not self.active:
      return
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  # imports TensorFlow.
    # TensorBoard only: the console lines come from `scalars` below (no duplicate logging).
    self._tb = metric_writers.AsyncWriter(metric_writers.SummaryWriter(workdir))
    if progress:
      import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                            mininterval=1.0)

  def advance(self, steps: int = 1) -> None:
    if self._bar is not None:
      self._bar.update(steps)

  def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
    if not self.active:
      return
    values = {f"{prefix}{k}": float(v) for k, v in values.items()}
    self._tb.write_scalars(step, values)
    line = f"step {step}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items())
    run_log.write(line)
    if self._bar is not None:
      self._bar.write(line)
    else:
      print(line, flush=True)

  def text(self, message: str) -> None:
    if not self.active:
      return
    run_log.write(message)
    if self._bar is not None:
      self._bar.write(message)
    else:
      print(message, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def _fmt(v: float) -> str:
  return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.4e}"
