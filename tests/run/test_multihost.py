"""Multi-host on one machine: 2 processes × 4 fake CPU devices (gloo), killed and resumed,
train what 1 process × 8 fake devices trains (equal up to float summation order).

`launch/local.sh` starts real `python -m vit_jax.main` processes connected over 127.0.0.1.
The 2-process run is SIGKILLed (every process at once, as when a job's hosts die) after a
checkpoint has been committed, restarted with the same command (it resumes from the newest
checkpoint: params, optimizer state, RNG and the data position in *global* batches), and
finishes. A 1-process run of the same config must end with the same params: the input
pipeline gives the same global batches (augmentation, mixup) whatever the process count,
and the process-major mesh puts process p's rows at the same place of the global batch.
One train image is truncated and skipped (config.input.skip_bad_examples): the replacement is
the same on any process count, and the run's skip count (summed over the processes, carried
through the kill in the data state) is the unbroken run's.
"""
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from helpers import REPO, gloo_available, latest_step  # pylint: disable=g-bad-import-order
from PIL import Image

from vit_jax import artifacts
from vit_jax.run import run_state

TOTAL, EVERY = 16, 4  # Steps; checkpoint period.
LAUNCH_TIMEOUT = 240  # Seconds, for local.sh (it stops every process and exits 124).


pytestmark = [pytest.mark.slow,  # several processes, killed and resumed
              pytest.mark.skipif(not gloo_available(),
                                 reason="this jaxlib has no gloo CPU collectives")]


EVALS_CONFIG = """
import ml_collections
from vit_jax.configs import base

def get_config(dataset):
  c = base.load_config_file({quickstart!r}).get_config()
  with c.unlocked():
    c.evals = ml_collections.ConfigDict({{
        "val": dict(type="classification", split="test", every=0, topk=3, per_class=True),
        "fs": dict(type="fewshot", every=0, shots=(1, 2),
                   datasets={{"f": (dataset, "train", "test")}})}})
  return c
"""


def _flags(dataset, workdir):
  """A tiny ViT, a few steps, with the augmentations that use the data RNGs (flip, mixup), and
  named evaluators (classification, few-shot) at the end (config file beside the data)."""
  config_file = os.path.join(os.path.dirname(dataset), "evals_config.py")
  if not os.path.exists(config_file):
    with open(config_file, "w", encoding="utf-8") as f:
      f.write(EVALS_CONFIG.format(quickstart=str(REPO / "configs" / "quickstart.py")))
  return [
      f"--config={config_file}:{dataset}", f"--workdir={workdir}", f"--config.dataset={dataset}",
      "--config.model.hidden_size=16", "--config.model.patches.size=(4,4)",
      "--config.model.transformer.mlp_dim=32", "--config.model.transformer.num_heads=2",
      "--config.model.transformer.num_layers=1", "--config.model.transformer.dropout_rate=0.1",
      "--config.pp.crop=8", "--config.pp.resize=10", "--config.pp.flip=True",
      "--config.pp.mixup_alpha=0.2", "--config.batch=32", "--config.batch_eval=32",
      # SGD: with AdamW, the attention key bias (whose true gradient is exactly 0: softmax
      # ignores a shift of all logits) would take lr-sized steps driven by round-off alone.
      "--config.optimizer=sgd", "--config.base_lr=0.1", "--config.weight_decay=0",
      "--config.warmup_steps=2", f"--config.total_steps={TOTAL}",
      f"--config.checkpoint_every={EVERY}", "--config.log_every=4", "--config.eval_every=0",
      "--config.progress=False", "--config.input.num_workers=0",
      "--config.input.skip_bad_examples=True",
  ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A 10-class PNG folder (160 train, 32 test images); class c is darker or lighter."""
  root = tmp_path_factory.mktemp("mh_data")
  rng = np.random.default_rng(0)
  for split, n in (("train", 160), ("test", 32)):
    for k in range(n):
      folder = root / split / f"c{k % 10}"
      folder.mkdir(parents=True, exist_ok=True)
      pixels = np.clip(rng.normal(25 * (k % 10), 30, (10, 10, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(pixels).save(folder / f"{k:04d}.png")
  bad = root / "train" / "c7" / "0007.png"
  bad.write_bytes(bad.read_bytes()[:30])  # truncated: skipped and counted
  return str(root)


def _launch(num_processes, devices, flags, cache_dir):
  """Starts local.sh in a new session (so every process it starts can be killed at once)."""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "JAX_", "XLA_FLAGS", "OMPI_", "TPU_"))}
  env.update(VIT_JAX_LAUNCH_PYTHON=sys.executable, TF_CPP_MIN_LOG_LEVEL="2",
             # Compiling is most of a short run's time: later launches reuse the programs.
             JAX_COMPILATION_CACHE_DIR=str(cache_dir),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  cmd = [str(REPO / "launch" / "local.sh"), "--num_processes", str(num_processes),
         "--devices_per_process", str(devices), "--timeout", str(LAUNCH_TIMEOUT),
         "--kill_grace", "5", "--quiet", "--", *flags]
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _session_pids(sid):
  pids = []
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      with open(f"/proc/{entry}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
      continue
    if int(fields[3]) == sid:  # Fields after the name: state, ppid, pgrp, session, ...
      pids.append(int(entry))
  return pids


def _kill_session(proc):
  """SIGKILL local.sh and every process it started, all at once (no clean-up code runs)."""
  for pid in _session_pids(proc.pid):
    try:
      os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
      pass
  proc.wait(timeout=30)
  deadline = time.monotonic() + 30
  while _session_pids(proc.pid) and time.monotonic() < deadline:
    time.sleep(0.05)


def _finish(proc, workdir):
  out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT + 30)
  logs = "".join(f"\n--- {p.name}\n" + p.read_text()[-3000:]
                 for p in sorted((workdir / "launch_logs").glob("*.log")))
  assert proc.returncode == 0, f"local.sh exited {proc.returncode}:\n{out[-3000:]}{logs}"
  return (workdir / "launch_logs" / "process_0.log").read_text()


def _wait_for_checkpoint(proc, step_dir):
  deadline = time.monotonic() + LAUNCH_TIMEOUT
  while not step_dir.exists():  # Orbax renames the step folder when the save is committed.
    if proc.poll() is not None:
      pytest.fail(f"2-process run ended before its first checkpoint ({proc.returncode}):\n"
                  + proc.stdout.read()[-3000:])
    if time.monotonic() > deadline:
      pytest.fail("2-process run wrote no checkpoint in time")
    time.sleep(0.02)


def test_two_processes_killed_and_resumed_train_like_one(tmp_path, dataset):
  multi, single = tmp_path / "multi", tmp_path / "single"
  start = time.monotonic()
  launched = []
  try:
    # The 1-process × 8 devices reference runs alongside (a launch spends much of its time
    # waiting: imports, compiles, checkpoint commits).
    reference = _launch(1, 8, _flags(dataset, single), tmp_path / "cache_1x8")
    killed = _launch(2, 4, _flags(dataset, multi), tmp_path / "cache_2x4")
    launched += [reference, killed]
    _wait_for_checkpoint(killed, multi / "checkpoints" / str(EVERY))
    _kill_session(killed)
    stopped_at = latest_step(multi)
    assert stopped_at is not None and stopped_at < TOTAL, f"not interrupted ({stopped_at})"

    resumed = _launch(2, 4, _flags(dataset, multi), tmp_path / "cache_2x4")
    launched.append(resumed)
    log = _finish(resumed, multi)
    assert f"Resuming from the workdir checkpoint at step {stopped_at}" in log, log[-3000:]
    reference_log = _finish(reference, single)
  finally:
    for proc in launched:
      if proc.poll() is None or _session_pids(proc.pid):
        _kill_session(proc)
  elapsed = time.monotonic() - start

  restored_a = artifacts.resolve(workdir=str(multi))
  restored_b = artifacts.resolve(workdir=str(single))
  a, b = restored_a.params, restored_b.params
  assert restored_a.step == restored_b.step == TOTAL
  # Same batches, same RNG; only the order of floating-point sums may differ (gloo's
  # cross-process all-reduce vs one process's reduction over its 8 devices).
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5), a, b)
  # The named evaluators covered the 32 test images (and the few-shot train split) exactly
  # once on 2 processes as on 1, with the same figures.
  ev_a, ev_b = run_state.last_eval(str(multi)), run_state.last_eval(str(single))
  assert ev_a["step"] == ev_b["step"] == TOTAL
  assert ev_a["val/examples"] == ev_b["val/examples"] == 32
  assert set(ev_a) == set(ev_b) and {"fs/f_1shot", "fs/f_2shot", "val/class_9"} <= set(ev_a)
  for key in ev_a:
    assert ev_a[key] == pytest.approx(ev_b[key], abs=1e-6), key
  # 16 steps x 32 images read 3.2 passes over the 160 images: the bad one 3 or 4 times.
  skipped = [re.findall(r"Skipped (\d+) undecodable train examples", text)
             for text in (log, reference_log)]
  assert skipped[0] == skipped[1] and skipped[0][-1] in ("3", "4"), skipped
  print(f"3 launches in {elapsed:.0f}s; resumed from step {stopped_at}")
