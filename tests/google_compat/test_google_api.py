"""Google's vit_jax API and command lines against this package (names, signatures, results).

Parameter counts are the published ones of Google's models_test; the Colab flow (data →
model → load_pretrained → replicate → pmap eval → make_update_fn steps) runs on TFDS mock
cifar10 and a local fixture checkpoint; train_and_evaluate runs a Google-layout config on
an image folder and leaves the checkpoint_<step> file a Google caller restores.
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from PIL import Image

from vit_jax import checkpoint, input_pipeline, models, train, utils
from vit_jax.configs import common as common_config, models as models_config
from vit_jax.datasets import sources
from vit_jax.google_compat import schema
from vit_jax.models import lit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Published parameter counts at 224 px with a 1000-class head (Google's models_test).
GOOGLE_SIZES = {
    "Mixer-B_16": 59_880_472, "Mixer-B_32": 60_293_428, "Mixer-L_16": 208_196_168,
    "R+ViT-Ti_16": 6_337_704, "R26+ViT-B_32": 101_383_976, "R26+ViT-S_32": 36_431_912,
    "R50+ViT-B_16": 98_659_112, "R50+ViT-L_32": 328_994_856, "ViT-B_8": 86_576_872,
    "ViT-B_16": 86_567_656, "ViT-B_16-gap-norep": 86_566_120, "ViT-B_32": 88_224_232,
    "ViT-B_32-gap-norep": 88_222_696, "ViT-H_14": 632_045_800, "ViT-L_16": 304_326_632,
    "ViT-L_32": 306_535_400, "ViT-S_16": 22_050_664, "ViT-S_16-gap-norep": 22_049_896,
    "ViT-S_32": 22_878_952, "ViT-S_32-gap-norep": 22_878_184, "ViT-Ti_16": 5_717_416,
    "testing": 21_390, "testing-unpooled": 21_370,
}
LIT_NAMES = ("LiT-B16B", "LiT-B16B_2", "LiT-L16L", "LiT-L16S", "LiT-L16Ti")


@pytest.mark.parametrize("name", sorted(GOOGLE_SIZES))
def test_get_model_has_the_published_parameter_count(name):
  model = models.get_model(name, num_classes=1000)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.ones((2, 224, 224, 3)),
                                             train=False))
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == GOOGLE_SIZES[name]


def test_testing_models_run_and_unpooled_keeps_tokens():
  images = jnp.ones((2, 224, 224, 3), jnp.float32)
  for name, shape in (("testing", (2, 1000)), ("testing-unpooled", (2, 196, 1000))):
    model = models.get_model(name, num_classes=1000)
    variables = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0), images, train=False))
    out = jax.eval_shape(lambda v, m=model: m.apply(v, images, train=False), variables)
    assert out.shape == shape


def test_every_registered_model_has_its_config_function_and_lit_ones_too():
  names = {models_config.GETTERS[f] for f in models_config.GETTERS}
  assert names == set(models_config.ALL_MODEL_CONFIGS)
  # Google's registry, exactly: its image models and its five LiT models.
  assert set(models_config.MODEL_CONFIGS) == set(GOOGLE_SIZES) | set(LIT_NAMES)
  assert models_config.MODEL_CONFIGS["Ti_16"].model_name == "ViT-Ti_16"  # AugReg short names.
  for fn in ("get_b16_config", "get_r50_b16_config", "get_mixer_b16_config", "get_ti16_config",
             "get_s16_gap_norep_config", "get_r_ti16_config", "get_testing_unpooled_config",
             "get_h14_config", "get_b8_config", "get_r26_s32_config"):
    config = getattr(models_config, fn)()
    assert config.to_dict() == models_config.MODEL_CONFIGS[config.model_name].to_dict()
    config.hidden_size = 1  # A fresh, unlocked copy: the registry is not changed.
  assert models_config.MODEL_CONFIGS["ViT-B_16"].hidden_size == 768
  assert models_config.get_G14_config().hidden_size == 1664
  assert models_config.get_g14_config().hidden_size == 1408
  for fn, name in models_config.LIT_GETTERS.items():
    config = getattr(models_config, fn)()
    assert config.model_name == name and config.to_dict() == lit.LIT_CONFIGS[name].to_dict()
  lit_b16b = models_config.get_lit_b16b_config()
  assert lit_b16b.out_dim == (768, 768) and lit_b16b.text.config == "base"
  assert lit_b16b.image.to_dict() == models_config.MODEL_CONFIGS["ViT-B_16"].to_dict()
  assert models_config.get_lit_l16s_config().text.vocab_size == 16_000
  assert isinstance(models.get_model("LiT-B16B"), models.LitModel)
  assert models.model_configs.MODEL_CONFIGS is models_config.MODEL_CONFIGS  # The LiT Colab's.


def test_google_config_layout_and_its_translation():
  config = common_config.get_config()
  with pytest.raises(AttributeError):
    config.no_such_key = 1  # Locked, as Google's.
  assert config.accum_steps == 8 and config.optim_dtype == "bfloat16" and config.pp is None
  config = common_config.with_dataset(config, "cifar10")
  assert config.pp.to_dict() == {"train": "train[:98%]", "test": "test", "crop": 384}
  assert config.total_steps == 10_000
  assert ("config.pp.crop", 384) in list(common_config.flatten(config))
  config.model = models_config.get_b16_config()
  config.model.transformer.dropout_rate = 0.05
  config.decay_type = "linear"
  ours = schema.to_run_config(config)
  assert ours.model_name == "ViT-B_16" and ours.model.transformer.dropout_rate == 0.05
  assert ours.pretrained_path == os.path.join(".", "ViT-B_16.npz")
  assert (ours.train_split, ours.eval_split, ours.pp.crop) == ("train[:98%]", "test", 384)
  assert ours.num_classes == 10  # Known datasets need no data for a dry run.
  assert (ours.pp.train, ours.pp.eval, ours.optimizer, ours.momentum) == (
      "inception_crop", "resize", "sgd", 0.9)
  assert (ours.accum_steps, ours.optim_dtype, ours.end_lr, ours.total_steps) == (
      8, "bfloat16", 1e-5, 10_000)
  config.model.hidden_size = 10
  with pytest.raises(ValueError, match="hidden_size=10 differs"):
    schema.to_run_config(config)
  config.model = models_config.get_b16_config()
  config.trainer = "inference_time"
  with pytest.raises(ValueError, match="trainer"):
    schema.to_run_config(config)


def test_augreg_config_resolves_the_best_i21k_file_from_pretrained_dir(tmp_path):
  from vit_jax.configs import augreg  # pylint: disable=g-import-not-at-top  (Google's layout)
  index = open(os.path.join(REPO, "tests", "fixtures", "augreg_index.csv")).read()
  (tmp_path / "index.csv").write_text(index)
  config = augreg.get_config("R_Ti_16")
  assert config.model.model_name == "R+ViT-Ti_16" and config.pp.crop == 384
  config.dataset, config.pretrained_dir = "oxford_iiit_pet", str(tmp_path)
  ours = schema.to_run_config(config)
  name = os.path.basename(ours.pretrained_path)
  assert name.startswith("R_Ti_16-i21k-300ep-") and name.endswith(".npz")
  from vit_jax.checkpoint import augreg as augreg_index  # pylint: disable=g-import-not-at-top
  best = augreg_index.resolve("R_Ti_16", index_path=str(tmp_path / "index.csv"))
  assert name[:-4] == best.filename.removesuffix(".npz")
  config.pretrained_dir = schema.AUGREG_BUCKET  # Ours resolves it (Hugging Face copy first).
  assert schema.to_run_config(config).model_or_filename == "R_Ti_16"


def _numpy_schedule(step, total, base, decay, warmup, end=1e-5):
  progress = min(max((step - warmup) / (total - warmup), 0.0), 1.0)
  if decay == "linear":
    lr = end + (base - end) * (1 - progress)
  else:
    lr = base * 0.5 * (1 + np.cos(np.pi * progress))
  return lr * min(1.0, step / warmup) if warmup else lr


@pytest.mark.parametrize("decay", ["cosine", "linear"])
def test_learning_rate_schedule_matches_the_formula(decay):
  fn = utils.create_learning_rate_schedule(100, 0.03, decay, 10)
  for step in (0, 1, 5, 10, 11, 50, 99, 100, 130):
    np.testing.assert_allclose(float(fn(step)), _numpy_schedule(step, 100, 0.03, decay, 10),
                               rtol=1e-5, atol=1e-9)
  assert fn(3).dtype == jnp.float32


def test_accumulate_gradient_equals_the_full_batch_gradient():
  w = jnp.arange(6.0).reshape(3, 2) / 10
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
  y = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
  fn = jax.value_and_grad(lambda w, x, y: jnp.mean((x @ w - y) ** 2))
  full = fn(w, x, y)
  for accum in (1, 2, 4):
    got = utils.accumulate_gradient(fn, w, x, y, accum)
    np.testing.assert_allclose(got[0], full[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], full[1], rtol=1e-5)


_FIXTURE_PARAMS = {}  # (repr(model), image size) -> host params: equal models init once.


def _fixture_checkpoint(path, model, image_size):
  key = (repr(model), image_size)
  if key not in _FIXTURE_PARAMS:
    # Compiled once: eager dispatch would compile every primitive of the init on its own.
    variables = jax.jit(lambda x: model.init(jax.random.PRNGKey(1), x, train=False))(
        jnp.ones((1, image_size, image_size, 3)))
    _FIXTURE_PARAMS[key] = jax.tree.map(np.asarray, variables["params"])
  checkpoint.save(_FIXTURE_PARAMS[key], str(path))


def test_colab_flow_on_mock_cifar10(tmp_path):
  """Google's Colab, cell by cell, on TFDS mock data and a local checkpoint."""
  import flax  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  model_name, dataset, batch_size = "testing", "cifar10", 16
  _fixture_checkpoint(
      tmp_path / f"{model_name}.npz",
      models.VisionTransformer(num_classes=21, **models_config.MODEL_CONFIGS[model_name]), 32)
  sources.clear_cache()
  try:
    with tfds.testing.mock_data(num_examples=32):
      config = common_config.with_dataset(common_config.get_config(), dataset)
      config.batch = batch_size
      config.batch_eval = batch_size
      config.pp.crop = 32
      ds_train = input_pipeline.get_data_from_tfds(config=config, mode="train")
      ds_test = input_pipeline.get_data_from_tfds(config=config, mode="test")
      num_classes = input_pipeline.get_dataset_info(dataset, "train")["num_classes"]
      assert num_classes == 10
      batch = next(iter(ds_test.as_numpy_iterator()))
      devices = jax.local_device_count()
      assert batch["image"].shape == (devices, batch_size // devices, 32, 32, 3)
      assert batch["label"].shape == (devices, batch_size // devices, 10)
      np.testing.assert_array_equal(batch["label"].sum(-1), 1.0)
      assert int(ds_test.cardinality().numpy()) == 32 // batch_size
      model_config = models_config.MODEL_CONFIGS[model_name]
      model = models.VisionTransformer(num_classes=num_classes, **model_config)
      variables = jax.jit(lambda: model.init(jax.random.PRNGKey(0), batch["image"][0, :1],
                                             train=False), backend="cpu")()
      params = checkpoint.load_pretrained(pretrained_path=str(tmp_path / f"{model_name}.npz"),
                                          init_params=variables["params"],
                                          model_config=model_config)
      params_repl = flax.jax_utils.replicate(params)
      apply_repl = jax.pmap(lambda p, x: model.apply(dict(params=p), x, train=False))

      def get_accuracy(params_repl):
        good = total = 0
        steps = input_pipeline.get_dataset_info(dataset, "test")["num_examples"] // batch_size
        for _, b in zip(range(steps), ds_test.as_numpy_iterator()):
          same = apply_repl(params_repl, b["image"]).argmax(-1) == b["label"].argmax(-1)
          good, total = good + same.sum(), total + same.size
        return good / total

      before = get_accuracy(params_repl)
      lr_fn = utils.create_learning_rate_schedule(6, 0.03, "cosine", 2)
      tx = optax.chain(optax.clip_by_global_norm(1.0),
                       optax.sgd(learning_rate=lr_fn, momentum=0.9, accumulator_dtype="bfloat16"))
      update_fn_repl = train.make_update_fn(apply_fn=model.apply, accum_steps=2, tx=tx)
      opt_state_repl = flax.jax_utils.replicate(tx.init(params))
      rng_repl = flax.jax_utils.replicate(jax.random.PRNGKey(0))
      losses = []
      for _, b in zip(range(1, 7), input_pipeline.prefetch(ds_train, 2)):
        params_repl, opt_state_repl, loss_repl, rng_repl = update_fn_repl(
            params_repl, opt_state_repl, b, rng_repl)
        losses.append(float(loss_repl[0]))
      after = get_accuracy(params_repl)
  finally:
    sources.clear_cache()
  assert len(losses) == 6 and np.all(np.isfinite(losses)) and 0 <= before <= 1 and 0 <= after <= 1
  # Inference with checkpoint.load (Google's pre_logits placeholder line included).
  loaded = checkpoint.load(str(tmp_path / f"{model_name}.npz"))
  loaded["pre_logits"] = {}
  model21 = models.VisionTransformer(num_classes=21, **models_config.MODEL_CONFIGS[model_name])
  logits, = jax.jit(lambda p, x: model21.apply(dict(params=p), x, train=False))(
      loaded, np.zeros((1, 32, 32, 3), np.float32))
  assert logits.shape == (21,)


def test_make_update_fn_step_equals_a_numpy_sgd_step():
  """One pmap step with accumulation equals the full-batch gradient step on the same loss."""
  model = models.get_model("testing", num_classes=3)
  model = model.clone(transformer=dict(model.transformer, dropout_rate=0.0))
  devices = jax.local_device_count()
  # Host (NumPy) data and arithmetic outside the compiled functions: every eager jax op would
  # compile on its own.
  x = np.random.default_rng(0).normal(size=(2 * devices, 32, 32, 3)).astype(np.float32)
  y = np.eye(3, dtype=np.float32)[np.arange(2 * devices) % 3]
  # The model's names and shapes with random values (no init to compile; and unlike the model's
  # zero-initialised head, they give every parameter a nonzero gradient).
  rng = np.random.default_rng(1)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(1), x[:1], train=False))["params"]
  params = jax.tree.map(lambda s: rng.normal(0, 0.2, s.shape).astype(np.float32), shapes)
  tx = optax.sgd(0.1)
  fn = train.make_update_fn(apply_fn=model.apply, accum_steps=2, tx=tx)
  batch = {"image": x.reshape((devices, -1) + x.shape[1:]), "label": y.reshape(devices, -1, 3)}
  replicate = lambda tree: jax.tree.map(lambda a: np.stack([np.asarray(a)] * devices), tree)
  new, _, loss, _ = fn(replicate(params), replicate(tx.init(params)), batch,
                       replicate(jax.random.PRNGKey(0)))
  def full_loss(p):
    logp = jax.nn.log_softmax(model.apply({"params": p}, x, train=False))
    return -jnp.mean(jnp.sum(logp * y, -1))
  value, grads = jax.jit(jax.value_and_grad(full_loss))(params)
  np.testing.assert_allclose(float(loss[0]), float(value), rtol=1e-5)
  expected = jax.tree.map(lambda p, g: p - np.float32(0.1) * g, *jax.device_get((params, grads)))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, atol=1e-6), jax.device_get(new),
               expected)


def _black_folder(root, per_class=8):
  for split in ("train", "test"):
    for name in ("test1", "test2"):
      os.makedirs(root / split / name, exist_ok=True)
      for i in range(per_class):
        Image.fromarray(np.full((1, 1, 3), 30 * i, np.uint8)).save(root / split / name / f"{i}.jpg")


def test_train_and_evaluate_with_a_google_config_leaves_checkpoint_1(tmp_path):
  from flax.training import checkpoints as flax_checkpoints  # pylint: disable=g-import-not-at-top
  config = common_config.get_config()
  config.model = models_config.get_testing_config()
  config.batch, config.accum_steps, config.batch_eval, config.total_steps = 16, 2, 8, 1
  config.dataset = str(tmp_path / "dataset")
  config.pp = ml_collections.ConfigDict({"crop": 32})
  _black_folder(tmp_path / "dataset")
  config.pretrained_dir = str(tmp_path)
  _fixture_checkpoint(tmp_path / "testing.npz",
                      models.VisionTransformer(num_classes=2, **config.model), 32)
  workdir = str(tmp_path / "work")
  params = train.train_and_evaluate(config, workdir)
  assert os.path.exists(f"{workdir}/checkpoint_1")
  restored = flax_checkpoints.restore_checkpoint(workdir, (params, None, 0))
  assert restored[2] == 1
  jax.tree.map(np.testing.assert_array_equal, restored[0], params)
  assert params["head"]["kernel"].shape == (10, 2)
  # Our own run state is there too (the trainer resumes from it).
  assert os.path.isdir(os.path.join(workdir, "checkpoints"))


def test_google_readme_command_line(tmp_path):
  _black_folder(tmp_path / "dataset")
  _fixture_checkpoint(
      tmp_path / "testing.npz",
      models.VisionTransformer(num_classes=2, **models_config.MODEL_CONFIGS["testing"]), 32)
  cmd = [sys.executable, "-m", "vit_jax.main", f"--workdir={tmp_path / 'work'}",
         f"--config={REPO}/vit_jax/configs/vit.py:testing,cifar10",
         f"--config.pretrained_dir={tmp_path}", f"--config.dataset={tmp_path / 'dataset'}",
         "--config.total_steps=2", "--config.batch=8", "--config.batch_eval=8",
         "--config.accum_steps=1", "--config.pp.crop=32", "--config.warmup_steps=1",
         "--config.pp.train=train", "--config.pp.test=test"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "Done: step 2" in out.stdout and "eval accuracy" in out.stdout
  assert os.path.isfile(tmp_path / "work" / "checkpoint_2")
  bad = subprocess.run(cmd[:5] + ["--config.no_such=1"], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
  assert bad.returncode == 2 and "Unknown config key" in bad.stderr
