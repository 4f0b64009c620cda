"""Tests for vit_jax.models: parameter trees, forward vs the NumPy oracle, scan/remat/attention
variants, dtypes, dropout / stochastic depth, errors and logical partitioning."""
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from flax import linen as nn, traverse_util

from vit_jax import models
from vit_jax.configs import models as models_config
from vit_jax.models import registry, transformer as transformer_lib

TINY = dict(patches={"size": (4, 4)}, hidden_size=32,
            transformer=dict(num_layers=2, mlp_dim=64, num_heads=4, dropout_rate=0.0,
                             attention_dropout_rate=0.0))
TINY_HYBRID = dict(TINY, patches={"size": (1, 1)}, resnet=dict(num_layers=(1, 1), width_factor=0.5))
TINY_MIXER = dict(patches={"size": (4, 4)}, hidden_dim=16, num_blocks=2, tokens_mlp_dim=8,
                  channels_mlp_dim=32)


def images(shape=(2, 16, 16, 3), seed=0):
  return jnp.asarray(np.random.RandomState(seed).uniform(-1, 1, shape), jnp.float32)


def init(model, x):
  """Abstract init (shapes/dtypes only, nothing compiled) -> zero float32 params; see randomize."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))["params"]
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), nn.meta.unbox(abstract))


def randomize(params, seed=1, scale=0.3):
  """Every leaf random (zero-initialised heads / gn3 would hide bugs); LN/GN scales near 1."""
  rng = np.random.RandomState(seed)
  flat = traverse_util.flatten_dict(params)
  out = {}
  for path, v in flat.items():
    noise = rng.normal(size=v.shape).astype(np.float32)
    out[path] = 1.0 + 0.1 * noise if path[-1] == "scale" else scale * noise
  return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(out))


def shapes(tree):
  return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def abstract_params(model, size):
  boxed = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                            jnp.zeros((1, size, size, 3)), train=False))
  return nn.meta.unbox(boxed)["params"]


def logits(model, params, x):
  """model.apply (eval) compiled once: eager dispatch compiles every primitive on its own."""
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x))


# ---------------------------------------------------------------- exact trees (written by hand)

def test_vit_b16_tree_is_the_official_one():
  model = models.VisionTransformer(num_classes=1000, **models_config.MODEL_CONFIGS["ViT-B_16"])
  expected = {
      "embedding/kernel": (16, 16, 3, 768), "embedding/bias": (768,), "cls": (1, 1, 768),
      "Transformer/posembed_input/pos_embedding": (1, 197, 768),
      "Transformer/encoder_norm/scale": (768,), "Transformer/encoder_norm/bias": (768,),
      "head/kernel": (768, 1000), "head/bias": (1000,)}
  block = {
      "LayerNorm_0/scale": (768,), "LayerNorm_0/bias": (768,),
      "MultiHeadDotProductAttention_0/query/kernel": (768, 12, 64),
      "MultiHeadDotProductAttention_0/query/bias": (12, 64),
      "MultiHeadDotProductAttention_0/key/kernel": (768, 12, 64),
      "MultiHeadDotProductAttention_0/key/bias": (12, 64),
      "MultiHeadDotProductAttention_0/value/kernel": (768, 12, 64),
      "MultiHeadDotProductAttention_0/value/bias": (12, 64),
      "MultiHeadDotProductAttention_0/out/kernel": (12, 64, 768),
      "MultiHeadDotProductAttention_0/out/bias": (768,),
      "LayerNorm_1/scale": (768,), "LayerNorm_1/bias": (768,),
      "MlpBlock_0/Dense_0/kernel": (768, 3072), "MlpBlock_0/Dense_0/bias": (3072,),
      "MlpBlock_0/Dense_1/kernel": (3072, 768), "MlpBlock_0/Dense_1/bias": (768,)}
  for i in range(12):
    expected.update({f"Transformer/encoderblock_{i}/{k}": v for k, v in block.items()})
  assert shapes(abstract_params(model, 224)) == expected


def test_r50_vit_b16_tree_is_the_official_one():
  model = models.VisionTransformer(num_classes=1000, **models_config.MODEL_CONFIGS["R50+ViT-B_16"])
  tree = shapes(abstract_params(model, 224))
  expected = {"conv_root/kernel": (7, 7, 3, 64), "gn_root/scale": (64,), "gn_root/bias": (64,),
              "embedding/kernel": (1, 1, 1024, 768), "embedding/bias": (768,), "cls": (1, 1, 768),
              "Transformer/posembed_input/pos_embedding": (1, 197, 768),
              "head/kernel": (768, 1000), "head/bias": (1000,)}
  # stage: (units, input channels, bottleneck width, output channels)
  stages = {"block1": (3, 64, 64, 256), "block2": (4, 256, 128, 512), "block3": (9, 512, 256, 1024)}
  for stage, (units, cin, mid, cout) in stages.items():
    for u in range(1, units + 1):
      p = f"{stage}/unit{u}/"
      expected.update({p + "conv1/kernel": (1, 1, cin if u == 1 else cout, mid),
                       p + "conv2/kernel": (3, 3, mid, mid), p + "conv3/kernel": (1, 1, mid, cout),
                       p + "gn1/scale": (mid,), p + "gn1/bias": (mid,), p + "gn2/scale": (mid,),
                       p + "gn2/bias": (mid,), p + "gn3/scale": (cout,), p + "gn3/bias": (cout,)})
      if u == 1:
        expected.update({p + "conv_proj/kernel": (1, 1, cin, cout), p + "gn_proj/scale": (cout,),
                         p + "gn_proj/bias": (cout,)})
  non_vit = {k: v for k, v in tree.items() if "encoderblock" not in k and "encoder_norm" not in k}
  assert non_vit == expected
  assert tree["Transformer/encoderblock_11/MlpBlock_0/Dense_0/kernel"] == (768, 3072)
  assert not any("encoderblock_12" in k for k in tree)


def test_mixer_b16_tree_is_the_official_one():
  model = models.MlpMixer(num_classes=1000, **models_config.MODEL_CONFIGS["Mixer-B_16"])
  expected = {"stem/kernel": (16, 16, 3, 768), "stem/bias": (768,),
              "pre_head_layer_norm/scale": (768,), "pre_head_layer_norm/bias": (768,),
              "head/kernel": (768, 1000), "head/bias": (1000,)}
  block = {"LayerNorm_0/scale": (768,), "LayerNorm_0/bias": (768,),
           "token_mixing/Dense_0/kernel": (196, 384), "token_mixing/Dense_0/bias": (384,),
           "token_mixing/Dense_1/kernel": (384, 196), "token_mixing/Dense_1/bias": (196,),
           "LayerNorm_1/scale": (768,), "LayerNorm_1/bias": (768,),
           "channel_mixing/Dense_0/kernel": (768, 3072), "channel_mixing/Dense_0/bias": (3072,),
           "channel_mixing/Dense_1/kernel": (3072, 768), "channel_mixing/Dense_1/bias": (768,)}
  for i in range(12):
    expected.update({f"MixerBlock_{i}/{k}": v for k, v in block.items()})
  assert shapes(abstract_params(model, 224)) == expected


# ---------------------------------------------------------------- forward vs NumPy oracle

@pytest.mark.parametrize("overrides,size", [
    (dict(classifier="token"), 16),
    (dict(classifier="gap"), 16),
    (dict(classifier="map"), 16),
    (dict(classifier="token", representation_size=24), 16),
    (dict(classifier="unpooled"), 16),
    (dict(classifier="token", num_classes=None), 16),
    (dict(TINY_HYBRID), 32),
], ids=["token", "gap", "map", "representation", "unpooled", "no_head", "hybrid"])
def test_vit_forward_matches_numpy(overrides, size):
  kwargs = dict(TINY, num_classes=5)
  kwargs.update(overrides)
  model = models.VisionTransformer(**kwargs)
  x = images((2, size, size, 3))
  params = randomize(init(model, x))
  got = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x))
  resnet = kwargs.get("resnet")
  want = ref.vit_forward(params, np.asarray(x), classifier=kwargs.get("classifier", "token"),
                         resnet_layers=resnet["num_layers"] if resnet else None)
  assert got.dtype == np.float32 and got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_exact_gelu_option_matches_numpy():
  model = models.VisionTransformer(num_classes=5, approximate_gelu=False, **TINY)
  x = images()
  params = randomize(init(model, x))
  want = ref.vit_forward(params, np.asarray(x), gelu=ref.gelu_erf)
  np.testing.assert_allclose(logits(model, params, x), want, rtol=1e-5, atol=1e-5)


def test_mixer_forward_matches_numpy():
  model = models.MlpMixer(num_classes=5, **TINY_MIXER)
  x = images()
  params = randomize(init(model, x))
  np.testing.assert_allclose(logits(model, params, x),
                             ref.mixer_forward(params, np.asarray(x)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- layouts / implementations

def stack_blocks(params, num_layers):
  """Unrolled encoderblock_{i} -> one 'encoderblock' subtree with a leading layer axis."""
  t = dict(params["Transformer"])
  blocks = [t.pop(f"encoderblock_{i}") for i in range(num_layers)]
  t["encoderblock"] = jax.tree.map(lambda *xs: np.stack(xs), *blocks)
  return dict(params, Transformer=t)


def test_scan_layers_equals_unrolled():
  x = images()
  unrolled = models.VisionTransformer(num_classes=5, **TINY)
  scanned = models.VisionTransformer(num_classes=5, scan_layers=True, **TINY)
  params = randomize(init(unrolled, x))
  stacked = stack_blocks(params, 2)
  assert shapes(stacked) == shapes(init(scanned, x))
  np.testing.assert_allclose(logits(scanned, stacked, x), logits(unrolled, params, x),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["xla", "einsum", "einsum_vjp"])
def test_attention_implementations_agree(impl):
  x = images()
  base = models.VisionTransformer(num_classes=5, **TINY)
  params = randomize(init(base, x))
  other = models.VisionTransformer(num_classes=5, attention_impl=impl, **TINY)
  np.testing.assert_allclose(logits(other, params, x), logits(base, params, x), rtol=1e-5,
                             atol=1e-5)


def test_unknown_attention_impl_is_rejected():
  with pytest.raises(ValueError, match="attention_impl"):
    models.VisionTransformer(num_classes=5, attention_impl="flash", **TINY).init(
        jax.random.PRNGKey(0), images(), train=False)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_gives_same_outputs_and_grads(scan):
  x = images()
  plain = models.VisionTransformer(num_classes=5, scan_layers=scan, **TINY)
  remat = models.VisionTransformer(num_classes=5, scan_layers=scan, remat=True, **TINY)
  params = randomize(init(plain, x))
  assert shapes(params) == shapes(init(remat, x))

  def loss_and_grad(model):
    loss = lambda p: jnp.sum(model.apply({"params": p}, x, train=False) ** 2)
    return jax.value_and_grad(loss)(params)

  (l0, g0), (l1, g1) = jax.jit(lambda: loss_and_grad(plain))(), \
      jax.jit(lambda: loss_and_grad(remat))()
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g0))  # key-bias grads are ~0 noise
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale), g0, g1)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  x = images()
  f32 = models.VisionTransformer(num_classes=5, **TINY)
  bf16 = models.VisionTransformer(num_classes=5, dtype="bfloat16", **TINY)
  params = init(bf16, x)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(params))
  params = randomize(params)
  got, want = _outputs(bf16, params, x, False), _outputs(f32, params, x, False)
  assert got.dtype == jnp.float32
  assert not np.allclose(got, want, rtol=0, atol=1e-7)  # really computed in bf16
  np.testing.assert_allclose(got, want, rtol=0.1, atol=0.1 * float(jnp.abs(want).max()))


# ---------------------------------------------------------------- regularisers

_COMPILED = {}


def _outputs(model, params, x, train, seed=0):
  """Jitted apply, compiled once per (model, train) within the session."""
  key = (id(model), train)
  if key not in _COMPILED:
    _COMPILED[key] = (model, jax.jit(lambda p, x, rng: model.apply(
        {"params": p}, x, train=train, rngs={"dropout": rng})))
  return np.asarray(_COMPILED[key][1](params, x, jax.random.PRNGKey(seed)))


@pytest.mark.parametrize("field", ["dropout_rate", "attention_dropout_rate", "stochastic_depth"])
def test_regularisers_only_act_in_training(field):
  x = images((8, 16, 16, 3))
  if field == "stochastic_depth":
    model = models.VisionTransformer(num_classes=5, stochastic_depth=0.5, **TINY)
  else:
    kwargs = dict(TINY, transformer=dict(TINY["transformer"], **{field: 0.5}))
    model = models.VisionTransformer(num_classes=5, **kwargs)
  clean = models.VisionTransformer(num_classes=5, **TINY)
  params = randomize(init(clean, x))
  eval_out = _outputs(model, params, x, train=False)
  np.testing.assert_allclose(eval_out, _outputs(clean, params, x, train=False), rtol=1e-6)
  train0, train1 = _outputs(model, params, x, True, 0), _outputs(model, params, x, True, 1)
  assert not np.allclose(train0, eval_out) and not np.allclose(train0, train1)
  np.testing.assert_array_equal(train0, _outputs(model, params, x, True, 0))


def test_stochastic_depth_rule_and_drop_path():
  np.testing.assert_allclose(transformer_lib.stochastic_depth_rates(0.2, 3), [0.0, 0.1, 0.2])
  np.testing.assert_allclose(transformer_lib.stochastic_depth_rates(0.3, 1), [0.0])
  x = jnp.ones((4000, 2, 3))
  y = np.asarray(transformer_lib.drop_path(x, 0.25, jax.random.PRNGKey(0)))
  per_example = y[:, 0, 0]
  assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.75)}
  assert (y == per_example[:, None, None]).all()      # whole examples dropped
  assert abs((per_example == 0).mean() - 0.25) < 0.03


def test_mixer_stochastic_depth_only_in_training():
  x = images()
  model = models.MlpMixer(num_classes=5, stochastic_depth=0.5, **TINY_MIXER)
  params = randomize(init(model, x))
  eval_out = _outputs(model, params, x, False)
  np.testing.assert_allclose(eval_out, ref.mixer_forward(params, np.asarray(x)), rtol=1e-5,
                             atol=1e-5)
  assert not np.allclose(_outputs(model, params, x, True), eval_out)


# ---------------------------------------------------------------- shapes, errors, partitioning

def test_position_embedding_follows_the_input_grid():
  model = models.VisionTransformer(num_classes=5, **TINY)
  params = init(model, images((1, 32, 16, 3)))
  assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1 + 8 * 4, 32)
  with pytest.raises(ValueError, match="load_pretrained"):
    model.apply({"params": params}, images((1, 16, 16, 3)), train=False)


@pytest.mark.parametrize("kwargs,size", [(TINY, (1, 18, 16, 3)), (TINY_HYBRID, (1, 36, 36, 3))])
def test_image_size_not_divisible_by_patch_is_a_clear_error(kwargs, size):
  model = models.VisionTransformer(num_classes=5, **kwargs)
  with pytest.raises(ValueError, match=r"not divisible by the effective patch size .*resize"):
    model.init(jax.random.PRNGKey(0), images(size), train=False)


def test_mixer_image_size_error():
  with pytest.raises(ValueError, match="not divisible"):
    models.MlpMixer(num_classes=5, **TINY_MIXER).init(jax.random.PRNGKey(0), images((1, 15, 16, 3)),
                                                      train=False)


def test_unknown_classifier_is_rejected():
  with pytest.raises(ValueError, match="classifier"):
    models.VisionTransformer(num_classes=5, classifier="cls", **TINY).init(
        jax.random.PRNGKey(0), images(), train=False)


def test_output_shapes_of_pooling_variants():
  x = images()
  for classifier, nc, shape in [("token_unpooled", None, (2, 17, 32)), ("unpooled", 5, (2, 16, 5)),
                                ("map", None, (2, 32)), ("gap", 7, (2, 7))]:
    model = models.VisionTransformer(num_classes=nc, classifier=classifier, **TINY)
    # Shapes only: traced, not run (eager dispatch would compile every primitive).
    out = jax.eval_shape(lambda p, m=model: m.apply({"params": p}, x, train=False),
                         init(model, x))
    assert out.shape == shape, classifier


def test_init_returns_plain_arrays_and_every_param_has_logical_axis_names():
  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  P = jax.sharding.PartitionSpec
  for kwargs in (dict(TINY, classifier="map", representation_size=8), TINY_HYBRID):
    model = models.VisionTransformer(num_classes=5, **kwargs)
    init = lambda m=model: m.init(jax.random.PRNGKey(0), images((1, 32, 32, 3)),
                                  train=False)["params"]
    plain = jax.eval_shape(init)
    assert all(isinstance(v, jax.ShapeDtypeStruct) for v in jax.tree.leaves(plain))
    _, specs = sharding.param_layout(init)
    assert all(isinstance(s, P) and len(s) for s in jax.tree.leaves(
        specs, is_leaf=lambda s: isinstance(s, P))), "a parameter without logical axis names"
  _, specs = sharding.param_layout(
      lambda: models.VisionTransformer(num_classes=5, scan_layers=True, **TINY).init(
          jax.random.PRNGKey(0), images(), train=False)["params"])
  assert specs["embedding"]["kernel"] == P("patch", "patch", "patch", "embed")
  assert specs["Transformer"]["posembed_input"]["pos_embedding"] == P(None, "posemb", "embed")
  block = specs["Transformer"]["encoderblock"]
  assert block["MultiHeadDotProductAttention_0"]["query"]["kernel"] == P("layers", "embed",
                                                                         "heads", "kv")
  assert block["MultiHeadDotProductAttention_0"]["out"]["kernel"] == P("layers", "heads", "kv",
                                                                       "embed")
  assert block["MlpBlock_0"]["Dense_0"]["kernel"] == P("layers", "embed", "mlp")
  assert specs["head"]["kernel"] == P("embed", "classes")
  _, mixer_specs = sharding.param_layout(
      lambda: models.MlpMixer(num_classes=5, **TINY_MIXER).init(jax.random.PRNGKey(0), images(),
                                                                train=False)["params"])
  assert mixer_specs["MixerBlock_0"]["token_mixing"]["Dense_0"]["kernel"] == P("tokens", "mlp")


def test_normalisation_epsilons_and_weight_standardisation():
  """Low-variance inputs make eps visible: LayerNorm 1e-6, GroupNorm 1e-6, StdConv 1e-5."""
  from vit_jax.models import resnet as resnet_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  x = jnp.asarray(1e-3 * rng.normal(size=(2, 4, 4, 64)), jnp.float32)
  p = {"scale": 1.0 + 0.1 * rng.normal(size=(64,)), "bias": 0.1 * rng.normal(size=(64,))}
  ln = transformer_lib.layer_norm(jnp.float32, "ln")
  np.testing.assert_allclose(jax.jit(ln.apply)({"params": p}, x),
                             ref.layer_norm(np.asarray(x, np.float64), p), rtol=1e-4, atol=1e-4)
  gn = resnet_lib.group_norm(jnp.float32, "gn")
  np.testing.assert_allclose(jax.jit(gn.apply)({"params": p}, x),
                             ref.group_norm(np.asarray(x, np.float64), p), rtol=1e-4, atol=1e-4)
  w = 1e-5 * rng.normal(size=(3, 3, 64, 8))  # std ~ eps: the 1e-5 matters
  conv = resnet_lib.StdConv(8, (3, 3), (2, 2))
  got = jax.jit(conv.apply)({"params": {"kernel": jnp.asarray(w, jnp.float32)}}, x * 1e3)
  np.testing.assert_allclose(got, ref.std_conv(np.asarray(x * 1e3, np.float64), w, 2), rtol=1e-4,
                             atol=1e-4)


def test_mixer_rejects_another_resolution_and_remat_is_transparent():
  x = images()
  model = models.MlpMixer(num_classes=5, **TINY_MIXER)
  params = randomize(init(model, x))
  with pytest.raises(ValueError, match="cannot change resolution"):
    model.apply({"params": params}, images((2, 32, 32, 3)), train=False)
  remat = models.MlpMixer(num_classes=5, remat=True, **TINY_MIXER)
  np.testing.assert_allclose(logits(remat, params, x), logits(model, params, x), rtol=1e-6)


def test_scanned_regularisers_train_and_eval():
  x = images((8, 16, 16, 3))
  kwargs = dict(TINY, transformer=dict(TINY["transformer"], dropout_rate=0.1,
                                       attention_dropout_rate=0.1))
  model = models.VisionTransformer(num_classes=5, scan_layers=True, remat=True,
                                   stochastic_depth=0.5, **kwargs)
  clean = models.VisionTransformer(num_classes=5, **TINY)
  params = randomize(init(clean, x))
  stacked = stack_blocks(params, 2)
  eval_out = _outputs(model, stacked, x, False)
  np.testing.assert_allclose(eval_out, _outputs(clean, params, x, False), rtol=1e-5, atol=1e-5)
  train0 = _outputs(model, stacked, x, True, 0)
  assert not np.allclose(train0, eval_out) and not np.allclose(train0, _outputs(model, stacked, x,
                                                                                True, 1))


@pytest.mark.skipif(jax.default_backend() != "gpu", reason="cuDNN attention needs a GPU")
def test_cudnn_attention_matches_einsum_on_gpu():
  x = images((2, 32, 32, 3))
  kwargs = dict(TINY, patches={"size": (2, 2)})  # 256 tokens
  cudnn = models.VisionTransformer(num_classes=5, dtype="bfloat16", attention_impl="cudnn",
                                   **kwargs)
  einsum = models.VisionTransformer(num_classes=5, dtype="bfloat16", attention_impl="einsum",
                                    **kwargs)
  params = randomize(init(einsum, x), scale=0.1)
  got = cudnn.apply({"params": params}, x, train=False)
  want = einsum.apply({"params": params}, x, train=False)
  np.testing.assert_allclose(got, want, rtol=0.05, atol=0.05 * float(jnp.abs(want).max()))


# ---------------------------------------------------------------- CPU formulations (speed)
# The per-platform formulations (vit.py / attention.py docs) must keep the official
# parameters, the values of the plain formulation (logits within 1e-5 of the NumPy oracle)
# and its gradients.

class _FlaxReferenceAttention(nn.Module):
  """The textbook Flax layout: four nn.DenseGeneral submodules (init reference)."""
  num_heads: int

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    proj = lambda name: nn.DenseGeneral((self.num_heads, d // self.num_heads), name=name,
                                        kernel_init=nn.initializers.xavier_uniform())(x)
    q, k, v = proj("query"), proj("key"), proj("value")
    y = jnp.einsum("bqhk,bthk->bqhk", q, k) + v
    return nn.DenseGeneral(d, axis=(-2, -1), kernel_init=nn.initializers.xavier_uniform(),
                           name="out")(y)


def test_parameters_are_created_exactly_as_flax_layers_create_them():
  x = images((2, 5, 12, 1))[..., 0]
  ours = nn.meta.unbox(models.MultiHeadDotProductAttention(num_heads=3).init(
      jax.random.PRNGKey(3), x, x))
  ref = _FlaxReferenceAttention(num_heads=3).init(jax.random.PRNGKey(3), x)
  jax.tree.map(np.testing.assert_array_equal, ours, ref)
  from vit_jax.models import vit as vit_lib  # pylint: disable=g-import-not-at-top

  class Conv(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Conv(8, (4, 4), strides=(4, 4), padding="VALID", name="embedding")(x)

  class Ours(nn.Module):
    @nn.compact
    def __call__(self, x):
      k, b = vit_lib.PatchEmbedParams((4, 4), 3, 8, name="embedding")()
      return vit_lib.patch_embed(x, k, b)

  x = images((2, 8, 8, 3))
  ref, ours = Conv().init(jax.random.PRNGKey(5), x), Ours().init(jax.random.PRNGKey(5), x)
  jax.tree.map(np.testing.assert_array_equal, nn.meta.unbox(ours), ref)


def test_patch_embedding_matmul_equals_the_convolution():
  from vit_jax.models import vit as vit_lib  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.uniform(-1, 1, (3, 12, 8, 3)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(4, 2, 3, 5)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(5,)), jnp.float32)
  conv = vit_lib.patch_embed(x, k, b, as_matmul=False)
  np.testing.assert_allclose(vit_lib.patch_embed(x, k, b, as_matmul=True), conv, atol=1e-5)
  assert conv.shape == (3, 3 * 4, 5)
  np.testing.assert_allclose(conv[:, 0], ref.patch_embed(np.asarray(x[:, :4, :2]),
                                                         {"kernel": k, "bias": b})[:, 0],
                             atol=1e-5)


@pytest.mark.parametrize("chunks", [1, 2, 4])
def test_batch_chunks_match_numpy_and_unchunked_gradients(chunks):
  x = images((4, 16, 16, 3))
  plain = models.VisionTransformer(num_classes=5, attention_impl="einsum", batch_chunks=1, **TINY)
  fast = models.VisionTransformer(num_classes=5, attention_impl="einsum_vjp", batch_chunks=chunks,
                                  **TINY)
  params = randomize(init(plain, x))
  got = jax.jit(lambda p: fast.apply({"params": p}, x, train=False))(params)
  np.testing.assert_allclose(got, ref.vit_forward(params, np.asarray(x)), rtol=1e-5, atol=1e-5)
  labels = jnp.arange(4) % 5

  def grads(model):
    def loss(p):
      logits = model.apply({"params": p}, x, train=True)
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))
    return jax.jit(jax.grad(loss))(params)

  want, have = grads(plain), grads(fast)
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(want))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale),
               have, want)


def test_resolve_batch_chunks():
  from vit_jax.models import platform  # pylint: disable=g-import-not-at-top
  assert platform.resolve_batch_chunks(None, (32, 197, 192), True, "gpu") == 1
  assert platform.resolve_batch_chunks(None, (8, 17, 32), True, "cpu") == 1  # too little work
  cpu_train = platform.resolve_batch_chunks(None, (32, 197, 192), True, "cpu")
  assert 32 % cpu_train == 0 and 1 <= cpu_train <= 4 * platform.cpu_cores()
  if jax.device_count() > 1:  # (the test session forces several CPU devices)
    assert cpu_train == 1
  assert platform.resolve_batch_chunks(None, (7, 197, 192), True, "cpu") in (1, 7)
  assert platform.resolve_batch_chunks(2, (8, 17, 32), False, "gpu") == 2
  deep = platform.resolve_batch_chunks(None, (32, 197, 1024), True, "cpu", unrolled_layers=24)
  assert deep <= platform.CPU_MAX_UNROLLED_BLOCKS // 24
  # An explicit value is an upper bound: the largest divisor of the batch not above it.
  assert platform.resolve_batch_chunks(3, (8, 17, 32), True, "cpu") == 2
  assert platform.resolve_batch_chunks(8, (1, 17, 32), True, "cpu") == 1  # model.init's batch
  assert platform.resolve_batch_chunks(8, (12, 17, 32), True, "cpu") == 6
  with pytest.raises(ValueError, match=">= 1"):
    platform.resolve_batch_chunks(0, (8, 17, 32), True, "cpu")


def test_cross_attention_projection_and_width_check():
  probe_model = models.VisionTransformer(num_classes=5, classifier="map", **TINY)
  x = images()
  params = randomize(init(probe_model, x))
  want = ref.vit_forward(params, np.asarray(x), classifier="map")
  for impl in ("einsum", "einsum_vjp", "xla"):
    got = logits(models.VisionTransformer(num_classes=5, classifier="map", attention_impl=impl,
                                          **TINY), params, x)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  mha = models.MultiHeadDotProductAttention(num_heads=2)
  with pytest.raises(ValueError, match="inputs_kv width"):
    mha.init(jax.random.PRNGKey(0), jnp.zeros((1, 3, 8)), jnp.zeros((1, 3, 6)))


# --- ViT-22B-class options ------------------------------------------------------------------
@pytest.mark.parametrize("name,want", [("ViT-B_16", 86.6e6), ("ViT-e_14", 3.8e9),
                                       ("ViT-22B_14", 21.7e9)])
def test_large_configs_parameter_counts(name, want):
  from flax.linen import meta  # pylint: disable=g-import-not-at-top
  cfg = registry.MODEL_CONFIGS[name]
  model = models.VisionTransformer(num_classes=1000, scan_layers=True, **cfg)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)),
                                             train=False))["params"]
  got = sum(x.size for x in jax.tree.leaves(meta.unbox(shapes)))
  from test_model_configs import closed_form  # pylint: disable=g-import-not-at-top
  assert got == closed_form(cfg, 1000, 224)  # the formula, independent of the Flax code
  assert abs(got - want) / want < 0.02, got  # the published size


@pytest.mark.parametrize("options", [
    dict(parallel_block=True), dict(qk_norm=True), dict(use_bias=False),
    dict(parallel_block=True, qk_norm=True, use_bias=False)])
def test_vit22b_options_match_numpy_reference(options):
  cfg = dict(models_config.MODEL_CONFIGS["testing"].to_dict(), **options)
  cfg["transformer"] = dict(cfg["transformer"], num_heads=2, dropout_rate=0.0)
  model = models.VisionTransformer(num_classes=5, head_zeroinit=False, **cfg)
  x = images((2, 32, 32, 3))
  params = randomize(init(model, x))  # non-trivial norms and biases
  block = params["Transformer"]["encoderblock_0"]
  assert ("LayerNorm_1" in block) != options.get("parallel_block", False)
  attn = block["MultiHeadDotProductAttention_0"]
  assert ("query_norm" in attn) == options.get("qk_norm", False)
  assert ("bias" in attn["query"]) == options.get("use_bias", True)
  assert ("bias" in block["LayerNorm_0"]) == options.get("use_bias", True)
  assert "bias" in attn["out"]  # the output projection keeps its bias
  want = ref.vit_forward(jax.device_get(params), np.asarray(x))
  got = _outputs(model, params, x, train=False)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The training path (on CPU: the hand-written LayerNorm) computes the same function.
  trained = _outputs(model, params, x, train=True, seed=2)
  np.testing.assert_allclose(trained, want, rtol=1e-5, atol=1e-5)
