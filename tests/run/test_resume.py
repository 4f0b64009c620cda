"""Run-state contract tests (docs/architecture.md): kill -9 and resume is bit-identical, SIGTERM
saves, restore onto another mesh.

The killed / preempted runs are real `python -m vit_jax.main` processes (8 fake CPU devices,
inherited XLA_FLAGS) on the embedded 'digits' dataset.
"""
import os
import random
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO, TINY_FLAGS, setup_for, tiny_config  # pylint: disable=g-bad-import-order

from vit_jax import artifacts, exits, sharding
from vit_jax.run import loop, run_state

pytestmark = pytest.mark.slow  # kill -9 / SIGTERM of real runs, restores onto another mesh

# The tiny run of test_train.tiny_config as main.py flags.


def _overrides(total_steps, checkpoint_every, log_every):
  return dict(total_steps=total_steps, checkpoint_every=checkpoint_every, log_every=log_every)


def _start(workdir, data_dir, total_steps, checkpoint_every, log_every=1000, extra=()):
  flags = TINY_FLAGS + [f"--workdir={workdir}", f"--config.tfds_data_dir={data_dir}",
                        f"--config.total_steps={total_steps}",
                        f"--config.checkpoint_every={checkpoint_every}",
                        f"--config.log_every={log_every}"] + list(extra)
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.Popen([sys.executable, "-m", "vit_jax.main"] + flags, cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(predicate, proc, timeout=120):
  deadline = time.time() + timeout
  while not predicate():
    if proc.poll() is not None:
      pytest.fail(f"process exited early ({proc.returncode}):\n{proc.stdout.read()[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      pytest.fail("timed out")
    time.sleep(0.01)


def _kill9_and_resume(workdir, data_dir, total, every, extra=()) -> str:
  """Starts the run, kills it with SIGKILL at an arbitrary step after its first checkpoint,
  reruns the same command to the end; returns the resumed run's output."""
  proc = _start(workdir, data_dir, total, checkpoint_every=every, extra=extra)
  _wait_for(lambda: (workdir / "checkpoints" / str(every)).exists(), proc)
  time.sleep(random.uniform(0.0, 0.2))  # An arbitrary step (mid-step, mid-save, ...).
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  ckpt = run_state.Checkpointer(str(workdir))
  stopped_at = ckpt.latest_step()
  ckpt.close()
  assert stopped_at is not None and stopped_at < total, f"run was not interrupted ({stopped_at})"
  resumed = _start(workdir, data_dir, total, checkpoint_every=every, extra=extra)
  out, _ = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, out[-3000:]
  assert f"Resuming from the workdir checkpoint at step {stopped_at}" in out
  return out


def test_kill9_and_resume_is_bit_identical(tmp_path, data_dir):
  total = 30
  killed = tmp_path / "killed"
  _kill9_and_resume(killed, data_dir, total, every=5)

  # The same run, never interrupted, in this process.
  config = tiny_config(data_dir, **_overrides(total, 5, 1000))
  with config.unlocked():
    config.eval_every = 0
  loop.train_and_evaluate(config, str(tmp_path / "unbroken"))
  a = artifacts.resolve(workdir=str(killed))
  b = artifacts.resolve(workdir=str(tmp_path / "unbroken"))
  assert a.step == b.step == total
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_kill9_and_resume_with_ema_distillation_cutmix_and_param_groups_is_bit_identical(
    tmp_path, data_dir):
  """The recipes' extra state (EMA params, masked optimizer state of frozen parameters) and
  inputs (a teacher reloaded on resume, CutMix's random boxes) resume bit for bit too."""
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train_state
  teacher_cfg = tiny_config(data_dir)
  setup = setup_for(teacher_cfg, sharding.make_mesh((("data", -1),)))
  teacher = jax.device_get(train_state.init_params(setup, 11))
  teacher["head"]["kernel"] = np.random.RandomState(0).normal(
      size=teacher["head"]["kernel"].shape).astype(np.float32)
  checkpoint.save(teacher, str(tmp_path / "teacher.npz"))
  recipe = {"ema.decay": 0.9, "ema.warmup": True, "distill.path": str(tmp_path / "teacher.npz"),
            "distill.temperature": 2.0, "pp.cutmix_alpha": 1.0, "pp.mixup_alpha": 0.2,
            "layer_decay": 0.75, "param_groups": (("cls", "freeze"),), "optimizer": "adamw"}
  extra = [f"--config.{k}={v}" for k, v in recipe.items()]
  total = 16
  killed = tmp_path / "killed"
  out = _kill9_and_resume(killed, data_dir, total, every=4, extra=extra)
  assert "Distillation: soft" in out and "Parameter groups" in out

  config = tiny_config(data_dir, **_overrides(total, 4, 1000), **recipe)
  with config.unlocked():
    config.eval_every = 0
  loop.train_and_evaluate(config, str(tmp_path / "unbroken"))
  for which in ("raw", "ema"):
    a = artifacts.resolve(workdir=str(killed), which=which)
    b = artifacts.resolve(workdir=str(tmp_path / "unbroken"), which=which)
    assert a.step == b.step == total
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


def test_sigterm_saves_at_step_boundary_and_exits_75(tmp_path, data_dir):
  workdir = tmp_path / "term"
  proc = _start(workdir, data_dir, 100_000, checkpoint_every=0, log_every=1)
  lines = []
  while True:  # Wait until training is under way.
    line = proc.stdout.readline()
    if not line:
      pytest.fail("process ended before training:\n" + "".join(lines[-50:]))
    lines.append(line)
    if line.startswith("step 3:"):
      break
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  # 75: "preempted, checkpoint saved, rerun to continue" (exits.PREEMPTED) — a scheduler that
  # requeues failed jobs must not take a preempted run for a finished one.
  assert proc.returncode == exits.PREEMPTED == 75, out[-3000:]
  assert "SIGTERM" in out and "Rerun the same command to continue" in out
  ckpt = run_state.Checkpointer(str(workdir))
  step = ckpt.latest_step()
  ckpt.close()
  assert step is not None and 3 <= step < 100_000


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_restore_onto_a_different_mesh(tmp_path, data_dir):
  config = tiny_config(data_dir, total_steps=4, checkpoint_every=4)
  result = loop.train_and_evaluate(config, str(tmp_path / "m"))
  saved = jax.device_get(result["state"].params)
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("model", 2)))
  setup = setup_for(config, mesh)
  ckpt = run_state.Checkpointer(str(tmp_path / "m"))
  state, data_state = ckpt.restore(4, setup.abstract_state)
  ckpt.close()
  assert data_state, "input pipeline position missing from the checkpoint"
  assert int(state.step) == 4
  wanted = jax.tree.leaves(setup.state_shardings.params)
  for leaf, want in zip(jax.tree.leaves(state.params), wanted):
    assert leaf.sharding == want
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), saved)
  # Fewer devices than the checkpoint was written with (8 → 4) also restores.
  small = setup_for(config, sharding.make_mesh((("fsdp", 4),), jax.devices()[:4]))
  ckpt = run_state.Checkpointer(str(tmp_path / "m"))
  state4, _ = ckpt.restore(4, small.abstract_state)
  ckpt.close()
  assert {d.id for leaf in jax.tree.leaves(state4.params) for d in leaf.devices()} <= {
      d.id for d in jax.devices()[:4]}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state4.params), saved)
  # The restored state trains on the new mesh.
  from helpers import synthetic_batches  # pylint: disable=g-import-not-at-top

  from vit_jax.training import train_step  # pylint: disable=g-import-not-at-top
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh))
           for k, v in next(synthetic_batches(1, 32, 8)).items()}
  state, metrics = train_step.make_train_step(setup)(state, batch)
  assert np.isfinite(float(metrics["loss"])) and int(state.step) == 5


def test_checkpointer_takes_a_relative_workdir(tmp_path, monkeypatch):
  """`--workdir=workdirs/run` (as scripts/quickstart.sh passes it) saves and restores."""
  monkeypatch.chdir(tmp_path)
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray(7)}
  ckpt = run_state.Checkpointer("workdirs/run", async_save=True)
  assert ckpt.directory == tmp_path / "workdirs" / "run" / "checkpoints"
  assert ckpt.save(7, state, {"batch_index": 3})
  ckpt.close()
  ckpt = run_state.Checkpointer("workdirs/run")
  assert ckpt.latest_step() == 7
  restored, data = ckpt.restore(7, jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state))
  ckpt.close()
  assert data == {"batch_index": 3}
  jax.tree.map(np.testing.assert_array_equal, restored, state)
  assert run_state.absolute_dir("gs://bucket/run") == run_state.epath.Path("gs://bucket/run")


def test_a_reader_leaves_the_unfinished_save_of_a_running_training_alone(tmp_path):
  """Export / evaluate read a workdir while its training may be writing step N: the reader's
  manager must not delete `N.orbax-checkpoint-tmp*`; the training's next start does."""
  state = {"w": jnp.arange(6.0).reshape(2, 3)}
  ckpt = run_state.Checkpointer(str(tmp_path / "run"))
  assert ckpt.save(4, state, {"batch_index": 1})
  ckpt.close()
  unfinished = tmp_path / "run" / "checkpoints" / "8.orbax-checkpoint-tmp-1234"
  (unfinished / "state").mkdir(parents=True)
  (unfinished / "state" / "part").write_bytes(b"being written")
  reader = run_state.Checkpointer(str(tmp_path / "run"), read_only=True)
  assert reader.latest_step() == 4 and reader.all_steps() == [4]
  reader.close()
  assert (unfinished / "state" / "part").exists()
  assert not (tmp_path / "absent").exists()
  absent = run_state.Checkpointer(str(tmp_path / "absent"), read_only=True)
  assert absent.latest_step() is None
  absent.close()
  assert not (tmp_path / "absent").exists()  # a reader creates nothing
  writer = run_state.Checkpointer(str(tmp_path / "run"))
  writer.close()  # waits for its start-up clean-up
  assert not unfinished.exists()
  assert run_state.Checkpointer(str(tmp_path / "run"), read_only=True).all_steps() == [4]
