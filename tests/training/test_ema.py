"""Tests for vit_jax.training.ema: the EMA of the params against a NumPy loop over the real
trajectory, its sharding, its checkpoint round trip, the evaluators' 'ema/' results and export
--params."""
import jax
import numpy as np
import pytest
from helpers import setup_for, synthetic_batches, tiny_config  # pylint: disable=g-bad-import-order

from vit_jax import artifacts, exits, inference, sharding
from vit_jax.evaluators import runner
from vit_jax.export_formats import writers
from vit_jax.run import loop, run_state
from vit_jax.training import ema, train_state, train_step


def _numpy_decay(decay, warmup, t):
  return min(decay, (1.0 + t) / (10.0 + t)) if warmup else decay


@pytest.mark.parametrize("decay,warmup,every", [(0.8, False, 1), (0.95, True, 2)])
def test_ema_equals_a_numpy_loop_over_the_param_trajectory(tmp_path, decay, warmup, every):
  config = tiny_config(tmp_path, optimizer="adamw", base_lr=1e-2)
  with config.unlocked():
    config.ema.update(dict(decay=decay, warmup=warmup, every=every))
  mesh = sharding.make_mesh((("data", -1),))
  setup = setup_for(config, mesh)
  state = train_state.create_train_state(setup, 0)
  assert jax.tree.leaves(setup.state_shardings.ema_params) == jax.tree.leaves(setup.param_shardings)
  for e, p in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(state.params)):
    assert e.sharding == p.sharding
    ptr = lambda x: x.addressable_shards[0].data.unsafe_buffer_pointer()
    assert ptr(e) != ptr(p)  # Own buffers: the step donates both.
  step = train_step.make_train_step(setup)
  bsh = sharding.batch_sharding(mesh)
  want = jax.device_get(state.params)
  updates = 0
  for i, batch in enumerate(synthetic_batches(6, 32, 8)):
    state, _ = step(state, {k: jax.device_put(v, bsh) for k, v in batch.items()})
    params = jax.device_get(state.params)
    if (i + 1) % every == 0:
      d = np.float32(_numpy_decay(decay, warmup, updates))
      want = jax.tree.map(lambda e, p, d=d: d * e + (np.float32(1) - d) * p, want, params)
      updates += 1
    got = jax.device_get(state.ema_params)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7), got, want)
  # The EMA lags the raw params (they really differ) and stays finite.
  assert not np.allclose(jax.device_get(state.params)["head"]["kernel"],
                         jax.device_get(state.ema_params)["head"]["kernel"])


def test_warmup_decay_and_bad_values():
  cfg = ema.EmaConfig(decay=0.999, warmup=True)
  assert [float(ema.decay_at(cfg, t)) for t in (0, 90)] == pytest.approx([0.1, 0.91])
  assert float(ema.decay_at(ema.EmaConfig(decay=0.5, warmup=True), 10**6)) == 0.5
  config = tiny_config("/tmp")
  assert ema.from_config(config) is None
  for key, value, match in (("decay", 1.0, r"ema.decay=1.0"), ("decay", -0.1, "ema.decay"),
                            ("every", 0, "ema.every=0")):
    with config.unlocked():
      config.ema.decay, config.ema.every = 0.9, 1
      config.ema[key] = value
    with pytest.raises(ValueError, match=match):
      ema.from_config(config)


def test_ema_evaluated_beside_raw_checkpointed_and_exported(tmp_path, data_dir):
  config = tiny_config(data_dir, total_steps=6, checkpoint_every=3, eval_every=6, log_every=3)
  with config.unlocked():
    config.ema.decay = 0.5
  workdir = tmp_path / "run"
  result = loop.train_and_evaluate(config, str(workdir))
  values = result["eval"]
  for key in ("accuracy", "loss", "top5_accuracy"):
    assert f"ema/{key}" in values and key in values
  assert values["ema/examples"] == values["examples"]
  assert "ema/accuracy" in run_state.last_eval(str(workdir))
  # Named evaluators: '<name>/ema/<metric>'.
  spec = runner.Spec("val", "classification", 1, {})
  assert runner.ema_name(spec, "val/top1") == "val/ema/top1"
  # The checkpoint holds both; export picks one.
  restored = artifacts.resolve(workdir=str(workdir))
  raw, step = restored.params, restored.step
  averaged = artifacts.resolve(workdir=str(workdir), which="ema").params
  assert step == 6
  jax.tree.map(np.testing.assert_array_equal, averaged, jax.device_get(result["state"].ema_params))
  jax.tree.map(np.testing.assert_array_equal, raw, jax.device_get(result["state"].params))
  out = writers.export(str(workdir), str(tmp_path / "ema.npz"), params="ema")
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  np.testing.assert_array_equal(checkpoint.load(out)["head"]["kernel"], averaged["head"]["kernel"])
  # The inference / evaluate / inspect loaders take the same choice (--params=ema).
  args = inference.parse_args(["--workdir", str(workdir), "--params", "ema", "x.png"])
  loaded = artifacts.from_args(args).params
  jax.tree.map(np.testing.assert_array_equal, loaded, averaged)
  with pytest.raises(SystemExit):
    inference.parse_args(["--checkpoint", out, "--params", "ema", "x.png"])
  with pytest.raises(ValueError, match="pass --workdir"):
    artifacts.resolve(checkpoint_path=out, which="ema")


def test_state_without_ema_is_the_old_pytree_and_old_checkpoints_restore(tmp_path):
  """EMA off: no ema_params node at all, so a checkpoint of the 4-field state of older versions
  restores into today's TrainState (and today's EMA-off checkpoints are the old ones)."""
  import flax  # pylint: disable=g-import-not-at-top

  @flax.struct.dataclass
  class OldState:  # TrainState as it was before the EMA field.
    step: jax.Array
    params: dict
    opt_state: tuple
    rng: jax.Array

  mesh = sharding.make_mesh((("data", -1),))
  setup = setup_for(tiny_config(tmp_path), mesh)
  state = train_state.create_train_state(setup, 0)
  keys = [jax.tree_util.keystr(p[:1]) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  assert sorted(set(keys)) == [".opt_state", ".params", ".rng", ".step"]
  old = OldState(step=state.step, params=state.params, opt_state=state.opt_state, rng=state.rng)
  ckpt = run_state.Checkpointer(str(tmp_path / "old"), async_save=False)
  ckpt.save(1, old, {})
  restored, _ = ckpt.restore(1, setup.abstract_state)
  ckpt.close()
  assert isinstance(restored, train_state.TrainState) and restored.ema_params is None
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.params),
               jax.device_get(state.params))


def test_export_ema_of_a_run_without_ema_is_one_clear_error(tmp_path):
  workdir = str(tmp_path / "plain")
  run_state.check_or_write_config(workdir, tiny_config(tmp_path), has_checkpoint=False)
  with pytest.raises(exits.UserError, match="kept no EMA"):
    artifacts.resolve(workdir=workdir, which="ema")
  with pytest.raises(exits.UserError, match="params='best' is unknown"):
    artifacts.resolve(workdir=workdir, which="best")

