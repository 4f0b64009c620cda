"""Training metrics: throughput, MFU (peak FLOP/s from planning/datasheets.py), data wait, and
the writers.

Process 0 writes scalars to TensorBoard (clu.metric_writers, imported lazily because it
pulls in TensorFlow) and to the console (a tqdm progress bar with ETA plus one log line
per `log_every` steps); other processes write nothing.
"""
from __future__ import annotations

import time
from typing import Optional

import jax

from vit_jax.run import run_log


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
    self.images = 0
    self.flops_done = 0.0
    self.data_wait = 0.0

  def add_data_wait(self, seconds: float) -> None:
    self.data_wait += seconds

  def step_done(self, images: Optional[int] = None, flops: Optional[float] = None) -> None:
    """One step of `images` (default: the global batch) costing `flops` per device (default:
    the constructor's); they differ per step under a resolution schedule or FlexiViT."""
    self.steps += 1
    self.images += self.global_batch if images is None else int(images)
    step_flops = self.flops if flops is None else flops
    self.flops_done += float(step_flops or 0.0)

  def summary(self) -> dict[str, float]:
    """img/s, img/s/device, data-wait share, MFU (when known; a distillation teacher's forward
    counts as work) and the fixed figures since the last reset; then resets."""
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    out = {}
    if self.steps:
      step_time = elapsed / self.steps
      out["img_per_sec"] = self.images / elapsed
      out["img_per_sec_per_device"] = out["img_per_sec"] / self.num_devices
      out["step_time_sec"] = step_time
      out["data_wait_share"] = self.data_wait / elapsed
      if self.flops_done and self.peak:
        out["mfu"] = self.flops_done / elapsed / self.peak
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
