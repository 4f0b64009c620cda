"""Tests for vit_jax.training.distill: the soft / hard losses against NumPy, a distilled train
step (teacher bit-unchanged, loss = the published mixture, student learns), loading the teacher
onto the mesh, the resolution / class / value errors, and the teacher's FLOPs in the train log."""
import jax
import numpy as np
import pytest
from helpers import setup_for, synthetic_batches, tiny_config  # pylint: disable=g-bad-import-order

from vit_jax import checkpoint, sharding
from vit_jax.run import loop
from vit_jax.training import distill, train_state, train_step


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_and_hard_losses_equal_their_numpy_formulas(temperature):
  rng = np.random.RandomState(0)
  s, t = rng.normal(size=(2, 6, 7)).astype(np.float32) * 3
  pt = np.exp(_log_softmax(t / temperature))
  kl = (pt * (_log_softmax(t / temperature) - _log_softmax(s / temperature))).sum(-1)
  np.testing.assert_allclose(distill.loss(s, t, "soft", temperature), kl * temperature ** 2,
                             rtol=1e-5, atol=1e-6)
  hard = -_log_softmax(s)[np.arange(6), t.argmax(-1)]
  np.testing.assert_allclose(distill.loss(s, t, "hard"), hard, rtol=1e-5)
  assert float(distill.combine(2.0, 4.0, 0.25)) == pytest.approx(2.5)
  np.testing.assert_allclose(distill.loss(t, t, "soft", temperature), 0.0, atol=1e-5)


def _teacher_config(path, tmp_path, **distill_kw):
  config = tiny_config(tmp_path, optimizer="adamw", base_lr=3e-3)
  with config.unlocked():
    config.model.transformer.dropout_rate = 0.0
    config.distill.path = str(path)
    config.distill.model.transformer.num_layers = 2  # Another architecture than the student's.
    config.distill.update(distill_kw)
  return config


_TEACHERS = {}  # (classes, crop, seed) -> host params: each teacher's init compiles once.


def _teacher_file(tmp_path, config, num_classes=10, seed=5):
  """A fixture teacher: a 2-layer model of the student's width, saved as an official .npz."""
  key = (num_classes, config.pp.crop, seed)
  if key not in _TEACHERS:
    teacher_cfg = tiny_config(tmp_path, num_classes=num_classes)
    with teacher_cfg.unlocked():
      teacher_cfg.model.transformer.num_layers = 2
      teacher_cfg.pp.crop = config.pp.crop
    setup = setup_for(teacher_cfg, sharding.make_mesh((("data", -1),)), num_classes)
    params = jax.device_get(train_state.init_params(setup, seed))
    head = params["head"]["kernel"]  # A classifier, not the zero head of a fresh init.
    params["head"]["kernel"] = np.random.RandomState(seed).normal(size=head.shape).astype(
        head.dtype)
    _TEACHERS[key] = params
  params = jax.tree.map(np.copy, _TEACHERS[key])  # A test's own copy.
  path = tmp_path / f"teacher_{num_classes}_{config.pp.crop}.npz"
  checkpoint.save(params, str(path))
  return path, params


def test_distilled_step_keeps_teacher_and_mixes_the_losses(tmp_path, mode="soft"):
  config = _teacher_config("unused", tmp_path, mode=mode, weight=0.3, temperature=2.0)
  path, host_teacher = _teacher_file(tmp_path, config)
  with config.unlocked():
    config.distill.path = str(path)
  mesh = sharding.make_mesh((("data", -1),))
  setup = setup_for(config, mesh)
  teacher = distill.from_config(config, mesh, 10, setup.rules, setup.input_shape)
  teacher_params = distill.load_params(teacher, 8)
  for leaf, want in zip(jax.tree.leaves(teacher_params), jax.tree.leaves(teacher.shardings)):
    assert leaf.sharding == want
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(teacher_params), host_teacher)
  state = train_state.create_train_state(setup, 0)
  step = train_step.make_train_step(setup, teacher=teacher)
  bsh = sharding.batch_sharding(mesh)
  batch = {k: jax.device_put(v, bsh) for k, v in next(synthetic_batches(1, 32, 8)).items()}
  # The first step's loss, by NumPy from the two models' logits.
  forward = lambda model: jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))
  s = np.asarray(forward(setup.model)(state.params, batch["image"]))
  t = np.asarray(forward(teacher.model)(teacher_params, batch["image"]))
  assert len(set(t.argmax(-1))) > 1  # A teacher with opinions.
  labels = np.asarray(batch["label"])
  task = -(labels * _log_softmax(s)).sum(-1).mean()
  if mode == "soft":
    pt = np.exp(_log_softmax(t / 2.0))
    kd = ((pt * (_log_softmax(t / 2.0) - _log_softmax(s / 2.0))).sum(-1) * 4.0).mean()
  else:
    kd = -_log_softmax(s)[np.arange(32), t.argmax(-1)].mean()
  losses = []
  for _ in range(8):  # The same batch: the student fits it.
    state, metrics = step(state, batch, teacher_params)
    losses.append(float(metrics["loss"]))
    if len(losses) == 1:
      np.testing.assert_allclose(float(metrics["task_loss"]), task, rtol=1e-4)
      np.testing.assert_allclose(float(metrics["distill_loss"]), kd, rtol=1e-4)
      np.testing.assert_allclose(losses[0], 0.7 * task + 0.3 * kd, rtol=1e-4)
  assert losses[-1] < losses[0], losses
  # Not donated, not updated: the teacher's arrays are alive and bit-identical.
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), b), teacher_params,
               host_teacher)


def test_teacher_errors_name_the_cause(tmp_path):
  mesh = sharding.make_mesh((("data", -1),))
  config = _teacher_config("unused", tmp_path)
  setup = setup_for(config, mesh)
  make = lambda c, classes=10: distill.from_config(c, mesh, classes, setup.rules, setup.input_shape)
  assert make(tiny_config(tmp_path)) is None
  # A teacher made for another resolution (12 px: 3x3 patches, not 2x2).
  other = tiny_config(tmp_path)
  with other.unlocked():
    other.pp.crop = 12
  path, _ = _teacher_file(tmp_path, other)
  with config.unlocked():
    config.distill.path = str(path)
  with pytest.raises(ValueError, match=r"student's 8px input"):
    distill.load_params(make(config), 8)
  # A teacher with another label space.
  path, _ = _teacher_file(tmp_path, config, num_classes=21)
  with config.unlocked():
    config.distill.path = str(path)
  with pytest.raises(ValueError,
                     match=r"distillation teacher .* 'head/kernel' has shape \(16, 21\)"):
    distill.load_params(make(config), 8)
  for key, value, match in (("mode", "kl", "distill.mode='kl'"), ("weight", 1.5, "weight=1.5"),
                            ("temperature", 0.0, "temperature=0.0"),
                            ("model_name", "ViT-Q_16", "ViT-Q_16")):
    bad = _teacher_config(path, tmp_path, **{key: value})
    with pytest.raises(ValueError, match=match):
      make(bad)


def test_train_loop_distills_and_logs_the_teachers_flops_share(tmp_path, data_dir):
  config = _teacher_config("unused", data_dir, mode="hard", weight=0.5)
  path, _ = _teacher_file(tmp_path, config)
  with config.unlocked():
    config.distill.path = str(path)
    config.total_steps, config.log_every, config.checkpoint_every = 4, 4, 0
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  share = result["train"]["teacher_flops_share"]
  assert 0.05 < share < 0.5, share  # A 2-layer forward inside a 1-layer forward + backward step.
  assert np.isfinite(result["train"]["distill_loss"]) and "task_loss" in result["train"]

