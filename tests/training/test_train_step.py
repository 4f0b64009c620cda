"""Tests for the train step and loop (vit_jax.run.loop, train_step, train_state).

Mesh equivalence, real param sharding, gradient accumulation, the loss and eval
metrics against numpy, and end-to-end runs of `loop.train_and_evaluate` on the
embedded 'digits' dataset (learning, fine-tuning from a fixture checkpoint, NaN guard,
wrong-model workdir). """
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import REPO, needs8, refused_url, setup_for, synthetic_batches, tiny_config

from vit_jax import sharding
from vit_jax.evaluators import classification_evaluator
from vit_jax.run import loop, run_state
from vit_jax.training import train_state, train_step


def run_steps(config, mesh, batches, accum_steps=1):
  """Trains from the same init on `mesh`; returns (losses, final state)."""
  setup = setup_for(config, mesh)
  state = train_state.create_train_state(setup, config.seed)
  step = train_step.make_train_step(setup, accum_steps)
  bsh = sharding.batch_sharding(mesh)
  losses = []
  for b in batches:
    state, m = step(state, {k: jax.device_put(v, bsh) for k, v in b.items()})
    losses.append(float(m["loss"]))
  return losses, state


@needs8
def test_meshes_match_single_device(tmp_path):
  # SGD: Adam would turn reduction-order noise in ~0 gradients into lr-sized updates.
  config = tiny_config(tmp_path, warmup_steps=1, base_lr=0.1, optimizer="sgd")
  batches = list(synthetic_batches(5, 32, 8))
  ref, ref_state = run_steps(config, sharding.make_mesh((("data", 1),), jax.devices()[:1]), batches)
  assert len(set(ref[1:])) == len(ref) - 1, ref  # The params move: a real trajectory.
  for mesh_config in [(("data", 8),), (("data", 2), ("fsdp", 4)),
                      (("data", 2), ("fsdp", 2), ("model", 2))]:
    losses, state = run_steps(config, sharding.make_mesh(mesh_config), batches)
    np.testing.assert_allclose(losses, ref, rtol=2e-5, atol=2e-6, err_msg=str(mesh_config))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5),
                 state.params, ref_state.params)


@needs8
def test_params_and_opt_state_really_sharded(tmp_path):
  config = tiny_config(tmp_path, optimizer="sgd")
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("model", 2)))
  state = train_state.create_train_state(setup_for(config, mesh), 0)
  specs = {jax.tree_util.keystr(p): x.sharding.spec
           for p, x in jax.tree_util.tree_flatten_with_path(state.params)[0]}
  sharded = {k: s for k, s in specs.items() if any(a is not None for a in s)}
  assert any("fsdp" in str(s) for s in sharded.values()), specs
  assert any("model" in str(s) for s in sharded.values()), specs
  for leaf in jax.tree.leaves(state.params):
    if any(a is not None for a in leaf.sharding.spec):
      assert leaf.addressable_shards[0].data.size < leaf.size
  # Momentum has the same layout as its parameter.
  jax.tree.map(
      lambda p, m: (p.sharding == m.sharding) or pytest.fail(f"{p.sharding} vs {m.sharding}"),
      state.params, state.opt_state[1][0].trace)


def _without_dropout(tmp_path):
  """(mesh over every device, setup, initial state) of the tiny config without dropout."""
  config = tiny_config(tmp_path)
  with config.unlocked():
    config.model.transformer.dropout_rate = 0.0
  mesh = sharding.make_mesh((("data", -1),))
  setup = setup_for(config, mesh)
  return mesh, setup, train_state.create_train_state(setup, 0)


def test_grad_accumulation_equals_full_batch(tmp_path):
  mesh, setup, state = _without_dropout(tmp_path)
  batch = next(synthetic_batches(1, 32, 8))
  bsh = sharding.batch_sharding(mesh)
  batch = {k: jax.device_put(v, bsh) for k, v in batch.items()}
  loss4, _, g4 = jax.jit(train_step.make_loss_and_grad(setup, 4))(state.params, batch, state.rng)

  # Independent formulation: jax.grad of the plain mean loss over the whole batch.
  def full_loss(p):
    logits = setup.model.apply({"params": p}, batch["image"], train=False)
    return -jnp.mean(jnp.sum(batch["label"] * jax.nn.log_softmax(logits), -1))
  loss1, g1 = jax.jit(jax.value_and_grad(full_loss))(state.params)
  np.testing.assert_allclose(float(loss4), float(loss1), rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g4, g1)


def test_a_uint8_batch_trains_as_its_float_values_with_accumulation(tmp_path):
  """The trainer's uint8 batches (pipeline uint8_images=True): the step's loss and gradients
  equal those of the float32 [-1, 1] batch made on the host by NumPy (x / 127.5 - 1), also per
  micro-batch of an accumulated step."""
  mesh, setup, state = _without_dropout(tmp_path)
  rng = np.random.RandomState(1)
  raw = {"image": rng.randint(0, 256, (32, 8, 8, 3)).astype(np.uint8),
         "label": np.eye(10, dtype=np.float32)[rng.randint(0, 10, 32)]}
  floats = dict(raw, image=(raw["image"] / 127.5 - 1.0).astype(np.float32))
  bsh = sharding.batch_sharding(mesh)
  for accum in (1, 4):
    fn = jax.jit(train_step.make_loss_and_grad(setup, accum))
    got = fn(state.params, {k: jax.device_put(v, bsh) for k, v in raw.items()}, state.rng)
    want = fn(state.params, {k: jax.device_put(v, bsh) for k, v in floats.items()}, state.rng)
    np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 got[2], want[2])


def test_the_abstract_batch_is_uint8_where_the_trainer_sends_uint8(tmp_path):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,reimported
  mesh = sharding.make_mesh((("data", -1),))
  config = tiny_config(tmp_path)
  assert config.pp.train in ("inception_crop", "vit_finetune") and not config.pp.mixup_alpha
  assert train_step.abstract_batch(config, 10, mesh)["image"].dtype == jnp.uint8
  with config.unlocked():
    config.pp.mixup_alpha = 0.2
  batch = train_step.abstract_batch(config, 10, mesh)
  assert batch["image"].dtype == jnp.float32 and batch["label"].dtype == jnp.float32


def test_cross_entropy_and_eval_step_against_numpy(tmp_path):
  logits = np.random.RandomState(0).normal(size=(6, 5)).astype(np.float32)
  labels = np.eye(5, dtype=np.float32)[[0, 1, 2, 3, 4, 0]] * 0.9 + 0.02
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(train_step.cross_entropy(logits, labels), -(labels * logp).sum(-1),
                             rtol=1e-5)
  config = tiny_config(tmp_path)
  mesh = sharding.make_mesh((("data", -1),))
  setup = setup_for(config, mesh)
  state = train_state.create_train_state(setup, 0)
  batch = next(synthetic_batches(1, 16, 8))
  batch["mask"] = np.array([1.0] * 11 + [0.0] * 5, np.float32)
  out = classification_evaluator.make_eval_step(setup)(state.params, batch)
  logits = np.asarray(setup.model.apply({"params": state.params}, batch["image"], train=False))
  keep = batch["mask"] > 0
  correct = (logits.argmax(-1) == batch["label"].argmax(-1))[keep].sum()
  assert float(out["count"]) == 11 and float(out["correct"]) == correct


def test_accum_steps_validation():
  with pytest.raises(ValueError, match="accum_steps"):
    train_step.check_accum_steps(32, 3, 1)
  with pytest.raises(ValueError, match="batch shards"):
    train_step.check_accum_steps(32, 8, 8)


def test_train_and_evaluate_learns_on_digits(tmp_path, data_dir):
  config = tiny_config(data_dir, total_steps=40, base_lr=3e-3, eval_every=40, checkpoint_every=0)
  workdir = tmp_path / "run"
  result = loop.train_and_evaluate(config, str(workdir))
  assert result["step"] == 40
  assert result["eval"]["examples"] > 0 and result["eval"]["accuracy"] > 0.3, result["eval"]
  assert result["train"]["loss"] < np.log(10), result["train"]
  for key in ("lr", "grad_norm", "img_per_sec", "img_per_sec_per_device", "data_wait_share"):
    assert key in result["train"]
  assert list((workdir).glob("events.out.tfevents.*")), "no TensorBoard event file"
  assert (workdir / "config.json").exists()
  assert run_state.Checkpointer(str(workdir)).latest_step() == 40


def test_finetune_from_fixture_checkpoint(tmp_path, data_dir):
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  # Fixture: the official-layout .npz of a model with another head (21 classes).
  source = tiny_config(data_dir, num_classes=21)
  setup = setup_for(source, sharding.make_mesh((("data", -1),)), num_classes=21)
  params = jax.device_get(train_state.create_train_state(setup, 7).params)
  fixture = tmp_path / "fixture.npz"
  checkpoint.save(params, str(fixture))

  config = tiny_config(data_dir, total_steps=16, pretrained_path=str(fixture), log_every=1)
  target = setup_for(config, sharding.make_mesh((("data", -1),)))
  loaded = loop.load_pretrained_params(config, target)
  np.testing.assert_array_equal(loaded["embedding"]["kernel"], params["embedding"]["kernel"])
  assert np.asarray(loaded["head"]["kernel"]).shape[-1] == 10

  first = {}
  original = loop.check_finite
  def spy(pending):
    out = original(pending)
    if out:
      first.setdefault("loss", out[1]["loss"])
    return out
  loop.check_finite = spy
  try:
    result = loop.train_and_evaluate(config, str(tmp_path / "ft"))
  finally:
    loop.check_finite = original
  assert result["train"]["loss"] < first["loss"], (first, result["train"])


def test_pretrained_weights_fall_back_to_the_next_copy(tmp_path, data_dir, monkeypatch):
  """The trainer reads pretrained weights through checkpoint.candidate_locations/load_first."""
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  config = tiny_config(data_dir, model_or_filename="B/16")
  setup = setup_for(config, sharding.make_mesh((("data", -1),)))
  params = jax.device_get(train_state.create_train_state(setup, 3).params)
  fixture = tmp_path / "copy_two.npz"
  checkpoint.save(params, str(fixture))
  asked = []
  def locations(name):
    asked.append(name)
    return (refused_url(), str(fixture))
  monkeypatch.setattr(checkpoint, "candidate_locations", locations)
  monkeypatch.setenv("VIT_JAX_CACHE", str(tmp_path / "cache"))
  with pytest.warns(UserWarning, match="all zeros"):  # the fixture's fresh head is zero-init
    loaded = loop.load_pretrained_params(config, setup)
  assert asked == ["B/16"]
  np.testing.assert_array_equal(loaded["embedding"]["kernel"], params["embedding"]["kernel"])
  monkeypatch.setattr(checkpoint, "candidate_locations", lambda name: (refused_url(),) * 2)
  with pytest.raises(FileNotFoundError, match="could not fetch the checkpoint from any"):
    loop.load_pretrained_params(config, setup)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, data_dir):
  config = tiny_config(data_dir, base_lr=1e30, grad_norm_clip=0.0, warmup_steps=0,
                       checkpoint_every=1, log_every=1, optimizer="sgd")
  workdir = tmp_path / "nan"
  with pytest.raises(FloatingPointError, match=r"at step \d+") as err:
    loop.train_and_evaluate(config, str(workdir))
  bad_step = int(str(err.value).split("at step ")[1].split()[0].rstrip(";"))
  assert "last good checkpoint is kept" in str(err.value)
  ckpt = run_state.Checkpointer(str(workdir))
  latest = ckpt.latest_step()
  ckpt.close()
  assert latest is not None and latest < bad_step, (latest, bad_step)
  from vit_jax import artifacts  # pylint: disable=g-import-not-at-top
  params = artifacts.resolve(workdir=str(workdir)).params
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_workdir_with_other_model_fails_naming_both(tmp_path, data_dir):
  workdir = str(tmp_path / "wd")
  loop.train_and_evaluate(tiny_config(data_dir, total_steps=2, checkpoint_every=2), workdir)
  other = tiny_config(data_dir, total_steps=2)
  with other.unlocked():
    other.model.hidden_size = 24
  with pytest.raises(ValueError, match="another model") as err:
    loop.train_and_evaluate(other, workdir)
  assert "16" in str(err.value) and "24" in str(err.value)


def test_trainer_modules_do_not_import_tensorflow():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys, vit_jax.run.loop, vit_jax.sharding, vit_jax.training.train_step, "
          "vit_jax.run.run_state, "
          "vit_jax.run.metrics, vit_jax.planning.dry_run, vit_jax.export; "
          "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_total_steps_from_epochs():
  from vit_jax.training import optim  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(dict(total_steps=0, total_epochs=2.5, batch=100,
                                     naflex=dict(seq_len=0, images_per_pack=4)))
  assert optim.total_steps(c, 1000) == 25
  c.naflex.seq_len = 64  # packed: a step reads batch x images_per_pack images
  assert optim.total_steps(c, 1000) == 6
  c.total_steps = 7
  assert optim.total_steps(c, 1000) == 7
  with pytest.raises(ValueError, match="total_epochs"):
    optim.total_steps(ml_collections.ConfigDict(dict(total_steps=0, total_epochs=0, batch=1,
                                                     naflex=dict(seq_len=0))), 10)
