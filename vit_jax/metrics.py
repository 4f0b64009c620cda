"""Training metrics: FLOPs/MFU from the compiled step, throughput, data wait, and the writers.

Process 0 writes scalars to TensorBoard (clu.metric_writers, imported lazily because it
pulls in TensorFlow) and to the console (a tqdm progress bar with ETA plus one log line
per `log_every` steps); other processes write nothing.
"""
from __future__ import annotations

import time
from typing import Any, Optional

import jax

# Dense bf16 peak FLOP/s per chip (vendor datasheets). MFU uses these; unknown kinds → no MFU.
PEAK_FLOPS_BY_DEVICE_KIND = {
    "TPU v2": 45e12,
    "TPU v3": 123e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5": 459e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
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
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Some backends do not implement it.
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


class Throughput:
  """Accumulates step and data-wait time between log points; returns rates at each log."""

  def __init__(self, global_batch: int, num_devices: int, flops_per_device_step: Optional[float],
               peak_flops: Optional[float]):
    self.global_batch = global_batch
    self.num_devices = num_devices
    self.flops = flops_per_device_step
    self.peak = peak_flops
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
    """img/s, img/s/device, data-wait share, MFU (when known) since the last reset; then resets."""
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
    if self._bar is not None:
      self._bar.write(line)
    else:
      print(line, flush=True)

  def text(self, message: str) -> None:
    if not self.active:
      return
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
