"""Tests for vit_jax.training.distill: the soft / hard losses against NumPy, a distilled train
step (teacher bit-unchanged, loss = the published mixture, student learns), loading the teacher
onto the mesh, the resolution / class / value errors, and the teacher's FLOPs in the train log;
DeiT's distillation token (models/vit.py distilled=True): its forward against NumPy, the
two-head objective by hand and by NumPy, the real train step with it, checkpoint loading, and
the configs/deit.py *_distilled presets."""
import dataclasses

import jax
import numpy as np
import numpy_reference as ref
import pytest
from flax import linen as nn
from helpers import (  # pylint: disable=g-bad-import-order
  load_config_file,
  setup_for,
  synthetic_batches,
  tiny_config,
)

from vit_jax import checkpoint, models, sharding
from vit_jax.run import loop
from vit_jax.training import distill, flexi, param_groups, train_state, train_step


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


@pytest.mark.parametrize("mode,distilled", [("soft", False), ("hard", False), ("hard", True),
                                             ("soft", True)])
def test_distilled_step_keeps_teacher_and_mixes_the_losses(tmp_path, mode, distilled):
  """With distilled=True the task loss is the class head's and the distillation loss the
  distillation head's (DeiT); without it both act on the one head."""
  config = _teacher_config("unused", tmp_path, mode=mode, weight=0.3, temperature=2.0)
  path, host_teacher = _teacher_file(tmp_path, config)
  with config.unlocked():
    config.distill.path = str(path)
    config.model.distilled = distilled
    config.model.head_zeroinit = False  # Heads with opinions: zero logits would hide a swap.
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
  # The first step's loss, by NumPy from the models' logits (the student's heads in train
  # mode: no dropout here, so they are deterministic).
  forward = lambda model, train: jax.jit(lambda p, x: model.apply(
      {"params": p}, x, train=train, rngs={"dropout": jax.random.PRNGKey(0)}))
  out = jax.device_get(forward(setup.model, True)(state.params, batch["image"]))
  t = np.asarray(forward(teacher.model, False)(teacher_params, batch["image"]))
  assert len(set(t.argmax(-1))) > 1  # A teacher with opinions.
  assert isinstance(out, tuple) == distilled
  s, s_kd = out if distilled else (out, out)
  if distilled:  # Two heads that disagree: a swapped or averaged head would show.
    assert not np.allclose(s, s_kd, atol=1e-2)
  labels = np.asarray(batch["label"])
  task = -(labels * _log_softmax(s)).sum(-1).mean()
  if mode == "soft":
    pt = np.exp(_log_softmax(t / 2.0))
    kd = ((pt * (_log_softmax(t / 2.0) - _log_softmax(s_kd / 2.0))).sum(-1) * 4.0).mean()
  else:
    kd = -_log_softmax(s_kd)[np.arange(32), t.argmax(-1)].mean()
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


@pytest.mark.parametrize("distilled", [False, True])
def test_train_loop_distills_and_logs_the_teachers_flops_share(tmp_path, data_dir, distilled):
  config = _teacher_config("unused", data_dir, mode="hard", weight=0.5)
  path, _ = _teacher_file(tmp_path, config)
  with config.unlocked():
    config.distill.path = str(path)
    config.model.distilled = distilled  # The teacher (the student's architecture) has no token.
    config.total_steps, config.log_every, config.checkpoint_every = 4, 4, 0
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  share = result["train"]["teacher_flops_share"]
  assert 0.05 < share < 0.5, share  # A 2-layer forward inside a 1-layer forward + backward step.
  assert np.isfinite(result["train"]["distill_loss"]) and "task_loss" in result["train"]
  if distilled:  # Evaluated on the two heads' mean; the token and head are checkpointed.
    assert "head_dist" in result["state"].params and "dist_token" in result["state"].params
    assert 0.0 <= result["eval"]["accuracy"] <= 1.0


# ------------------------------------------------ DeiT's distillation token (distilled=True)

TINY = dict(patches={"size": (8, 8)}, hidden_size=32,
            transformer=dict(num_layers=2, mlp_dim=64, num_heads=2, dropout_rate=0.0,
                             attention_dropout_rate=0.0))


def _random_params(model, x, seed=1):
  """Every leaf random (zero heads would hide a swapped head); LayerNorm scales near 1."""
  shapes = nn.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), x, train=False))["params"])
  rng = np.random.RandomState(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, a: (rng.normal(0, 0.3, a.shape) + (path[-1].key == "scale")).astype(
          np.float32), shapes)


def _numpy_distilled_heads(params, images):
  """(cls logits, dist logits) in float64: tokens [cls, dist, patches] + posemb, the encoder,
  then `head` on token 0 and `head_dist` on token 1 (DeiT's paper, timm's deit.py)."""
  p = ref.as_f64(params)
  x = ref.patch_embed(np.asarray(images, np.float64), p["embedding"])
  b, _, d = x.shape
  x = np.concatenate([np.broadcast_to(p["cls"], (b, 1, d)),
                      np.broadcast_to(p["dist_token"], (b, 1, d)), x], axis=1)
  t = p["Transformer"]
  x = x + t["posembed_input"]["pos_embedding"]
  for i in range(2):
    x = ref.encoder_block(x, t[f"encoderblock_{i}"])
  x = ref.layer_norm(x, t["encoder_norm"])
  return ref.dense(x[:, 0], p["head"]), ref.dense(x[:, 1], p["head_dist"])


@pytest.mark.parametrize("batch_chunks", [1, 2])
def test_distilled_vit_is_cls_dist_patches_with_two_heads_against_numpy(batch_chunks):
  model = models.VisionTransformer(num_classes=5, distilled=True, batch_chunks=batch_chunks,
                                   **TINY)
  x = np.random.RandomState(0).uniform(-1, 1, (4, 32, 32, 3)).astype(np.float32)
  params = _random_params(model, x)
  assert params["dist_token"].shape == (1, 1, 32) and params["head_dist"]["kernel"].shape == (
      32, 5)
  assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 2 + 16, 32)
  cls_want, dist_want = _numpy_distilled_heads(params, x)
  apply = lambda train: jax.jit(lambda p, x: model.apply(
      {"params": p}, x, train=train, rngs={"dropout": jax.random.PRNGKey(0)}))
  cls_got, dist_got = apply(True)(params, x)
  np.testing.assert_allclose(cls_got, cls_want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dist_got, dist_want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(cls_want, dist_want, atol=1e-2)
  # Eval / inference: the mean of the two heads' logits (timm's (x + x_dist) / 2).
  np.testing.assert_allclose(apply(False)(params, x), (cls_want + dist_want) / 2, rtol=1e-5,
                             atol=1e-5)
  with pytest.raises(ValueError, match="needs classifier='token'"):
    models.VisionTransformer(num_classes=5, distilled=True, classifier="gap", **TINY).init(
        jax.random.PRNGKey(0), x, train=False)


def test_two_head_objective_by_hand():
  """Two classes, logits chosen so the softmaxes are (1/4, 3/4) and (3/4, 1/4)."""
  cls, dist = np.array([[0.0, np.log(3.0)]]), np.array([[np.log(3.0), 0.0]])
  label, teacher = np.array([[1.0, 0.0]]), np.array([[5.0, 1.0]])  # Teacher's argmax: class 0.
  loss, task, kd = distill.objective((cls, dist), label, teacher, mode="hard", weight=0.5)
  assert float(task) == pytest.approx(np.log(4.0), rel=1e-6)        # -log(1/4), class head.
  assert float(kd) == pytest.approx(np.log(4.0 / 3.0), rel=1e-6)    # -log(3/4), dist head.
  assert float(loss) == pytest.approx(0.5 * np.log(16.0 / 3.0), rel=1e-6)
  # Soft, T = 1, a teacher of (1/2, 1/2): KL = 1/2 log(1/2 / 3/4) + 1/2 log(1/2 / 1/4).
  _, _, kd = distill.objective((cls, dist), label, np.zeros((1, 2)), mode="soft", weight=0.5)
  assert float(kd) == pytest.approx(0.5 * np.log(2.0 / 3.0) + 0.5 * np.log(2.0), rel=1e-6)


@pytest.mark.parametrize("mode,temperature", [("hard", 1.0), ("soft", 1.0), ("soft", 3.0)])
def test_two_head_objective_equals_numpy(mode, temperature):
  rng = np.random.RandomState(1)
  cls, dist, t = (rng.normal(size=(6, 7)).astype(np.float32) * 3 for _ in range(3))
  hard = rng.randint(0, 7, 6)
  labels = np.eye(7, dtype=np.float32)[hard] * 0.9 + 0.1 / 7  # Label smoothing 0.1.
  task = -(labels * _log_softmax(cls)).sum(-1).mean()  # The class head only.
  if mode == "hard":
    kd = -_log_softmax(dist)[np.arange(6), t.argmax(-1)].mean()  # No smoothing of the teacher.
  else:
    log_pt = _log_softmax(t / temperature)
    kd = ((np.exp(log_pt) * (log_pt - _log_softmax(dist / temperature))).sum(-1)).mean() * \
        temperature ** 2
  loss, got_task, got_kd = distill.objective((cls, dist), labels, t, mode=mode, weight=0.5,
                                             temperature=temperature)
  np.testing.assert_allclose([got_task, got_kd, loss], [task, kd, 0.5 * task + 0.5 * kd],
                             rtol=1e-5)
  # One head (no distillation token): both terms on it, as before.
  _, one_task, one_kd = distill.objective(cls, labels, t, mode=mode, weight=0.5,
                                          temperature=temperature)
  np.testing.assert_allclose([one_task, one_kd],
                             [task, float(distill.loss(cls, t, mode, temperature).mean())],
                             rtol=1e-5)


def test_distilled_checkpoint_loads_at_another_grid_and_class_count(tmp_path):
  """Both extra tokens keep their position rows; the distillation head is replaced with the
  class head."""
  small = models.VisionTransformer(num_classes=5, distilled=True, **TINY)
  x16 = np.zeros((1, 16, 16, 3), np.float32)
  params = _random_params(small, x16)
  checkpoint.save(params, str(tmp_path / "deit.npz"))
  big = models.VisionTransformer(num_classes=3, distilled=True, **TINY)
  init = jax.eval_shape(lambda: big.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)),
                                         train=False))["params"]
  loaded, report = checkpoint.load_pretrained(pretrained_path=str(tmp_path / "deit.npz"),
                                              init_params=nn.meta.unbox(init), report=True)
  old = params["Transformer"]["posembed_input"]["pos_embedding"]
  new = loaded["Transformer"]["posembed_input"]["pos_embedding"]
  assert old.shape == (1, 2 + 4, 32) and new.shape == (1, 2 + 16, 32)
  np.testing.assert_array_equal(new[:, :2], old[:, :2])  # cls and dist rows as they were.
  np.testing.assert_allclose(new[0, 2], old[0, 2], atol=1e-6)  # Aligned corners: (0, 0).
  assert report.head == "replaced" and loaded["head_dist"]["kernel"].shape == (32, 3)
  assert not np.any(loaded["head_dist"]["kernel"])  # The abstract init: a zero head.
  np.testing.assert_array_equal(loaded["dist_token"], params["dist_token"])


def test_deit_distilled_presets_need_a_teacher(tmp_path):
  c = load_config_file("deit", "s16_distilled")
  assert c.model_name == "ViT-S_16" and c.model.distilled is True
  assert (c.distill.mode, c.distill.weight, c.distill.require_teacher) == ("hard", 0.5, True)
  assert c.pp.label_smoothing == 0.1 and load_config_file("deit", "s16").model.distilled is None
  assert load_config_file("deit", "b16_distilled,cifar100").num_classes == 100
  with pytest.raises(ValueError, match="unknown model 'l16'"):
    load_config_file("deit", "l16_distilled")
  config = tiny_config(tmp_path)
  with config.unlocked():
    config.model.distilled, config.distill.require_teacher = True, True
  mesh = sharding.make_mesh((("data", -1),))
  setup = setup_for(config, mesh)
  with pytest.raises(ValueError, match="names no teacher: pass --config.distill.path="):
    distill.from_config(config, mesh, 10, setup.rules, setup.input_shape)



def test_a_token_mismatch_names_distilled_and_the_tree_has_layer_depths(tmp_path):
  x = np.zeros((1, 32, 32, 3), np.float32)
  deit = models.VisionTransformer(num_classes=5, distilled=True, **TINY)
  plain = models.VisionTransformer(num_classes=5, **TINY)
  abstract = lambda m: nn.meta.unbox(jax.eval_shape(
      lambda: m.init(jax.random.PRNGKey(0), x, train=False))["params"])
  for saved, target, says in ((deit, plain, "distilled=True"), (plain, deit, "distilled=False")):
    path = str(tmp_path / "params.npz")
    checkpoint.save(_random_params(saved, x), path)
    with pytest.raises(ValueError, match=f"distillation token .* {says}"):
      checkpoint.load_pretrained(pretrained_path=path, init_params=abstract(target))
  # Layer decay: the token with the embeddings (depth 0), its head with the head (L + 1).
  depths, layers = param_groups.layer_depths(param_groups.named_leaves(abstract(deit)))
  assert layers == 2 and depths["dist_token"] == depths["cls"] == 0
  assert depths["head_dist/kernel"] == depths["head/kernel"] == 3


def test_distilled_features_are_the_mean_of_the_two_tokens():
  """Without a head (the feature step) a distilled ViT gives the mean of its class and
  distillation tokens after the final LayerNorm (timm's forward_head(pre_logits=True))."""
  model = models.VisionTransformer(num_classes=5, distilled=True, **TINY)
  x = np.random.RandomState(2).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  params = _random_params(model, x)
  p = ref.as_f64(params)
  tokens = np.concatenate([np.broadcast_to(p["cls"], (2, 1, 32)),
                           np.broadcast_to(p["dist_token"], (2, 1, 32)),
                           ref.patch_embed(np.asarray(x, np.float64), p["embedding"])], axis=1)
  t = p["Transformer"]
  y = tokens + t["posembed_input"]["pos_embedding"]
  for i in range(2):
    y = ref.encoder_block(y, t[f"encoderblock_{i}"])
  y = ref.layer_norm(y, t["encoder_norm"])
  setup = dataclasses.replace(setup_for(tiny_config("unused"), sharding.make_mesh(
      (("data", -1),))), model=model)
  got = train_step.make_feature_step(setup)(params, x)  # `params` with both heads.
  np.testing.assert_allclose(got, (y[:, 0] + y[:, 1]) / 2, rtol=1e-5, atol=1e-5)


def test_formula_flops_count_the_distillation_token_and_head():
  from vit_jax.planning import flops  # pylint: disable=g-import-not-at-top
  cfg = dict(TINY, classifier="token")
  d, mlp, layers, classes = 32, 64, 2, 5
  plain = flops.formula_flops_per_image(cfg, 32, classes)
  deit = flops.formula_flops_per_image(dict(cfg, distilled=True), 32, classes)
  assert flops.tokens_per_image(dict(cfg, distilled=True), 32) == 16 + 2
  per_token = 2 * (4 * d * d + 2 * d * mlp)  # Projections and MLP of one more token.
  attention = 4 * d * (18 ** 2 - 17 ** 2)    # QK^T and AV over 18 instead of 17 tokens.
  assert deit - plain == layers * (per_token + attention) + 2 * d * classes


def test_a_flexivit_student_distils_from_a_fixed_patch_teacher(tmp_path, data_dir, capfd):
  """big_vision's FlexiViT distillation: the student at a patch size drawn per step, the
  teacher (its own fixed patch size) on the same images; a step compiled per patch size."""
  config = _teacher_config("unused", data_dir, mode="soft", weight=1.0)
  path, _ = _teacher_file(tmp_path, config)
  with config.unlocked():
    config.distill.path = str(path)
    config.flexi.patch_sizes = (2, 4)
    config.total_steps, config.log_every, config.checkpoint_every = 6, 1, 0
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(result["train"]["distill_loss"])
  assert result["train"]["patch_size"] in (2.0, 4.0)
  log = "".join(capfd.readouterr())
  drawn = {flexi.patch_size_at(config, s) for s in range(6)}
  assert drawn == {2, 4} and "Train step at patch size" in log
