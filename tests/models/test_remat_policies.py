"""Tests for remat_policy (transformer.checkpoint_policy): same values, less saved, TPU offload."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from vit_jax import models
from vit_jax.configs import base
from vit_jax.models import platform, registry, transformer

TINY = dict(patches={"size": (4, 4)}, hidden_size=32,
            transformer=dict(num_layers=2, mlp_dim=64, num_heads=4, dropout_rate=0.0,
                             attention_dropout_rate=0.0))
TINY_MIXER = dict(patches={"size": (4, 4)}, hidden_dim=16, num_blocks=2, tokens_mlp_dim=8,
                  channels_mlp_dim=32)
OFFLOAD = "offload_dots_with_no_batch_dims"
# What the CPU runs: the offload policy is refused there (JAX drops host placement on CPU).
CPU_POLICIES = ("full", "dots_with_no_batch_dims_saveable", "dots_saveable")


def vit(policy, scan=False, **fields):
  """The tiny ViT with remat on under `policy` (None: no remat at all)."""
  return models.VisionTransformer(num_classes=5, scan_layers=scan, remat=policy is not None,
                                  remat_policy=policy, **dict(TINY, **fields))


def images(n=4, size=16):
  return jnp.asarray(np.random.RandomState(0).uniform(-1, 1, (n, size, size, 3)), jnp.float32)


def random_params(model, x):
  """Every leaf random (the zero-initialised head would zero most gradients)."""
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))["params"]
  leaves, tree = jax.tree.flatten(nn.meta.unbox(abstract))
  rng = np.random.RandomState(1)
  return tree.unflatten([jnp.asarray(0.3 * rng.normal(size=s.shape), s.dtype) for s in leaves])


def loss(model, x):
  """Training-mode loss of params (the path the trainer differentiates; dropout rates are 0)."""
  return lambda p: jnp.sum(model.apply({"params": p}, x, train=True,
                                       rngs={"dropout": jax.random.PRNGKey(2)}) ** 2)


def saved_bytes(model, params, x):
  """Bytes the forward pass keeps for the backward pass: the leaves of jax.vjp's closure."""
  vjp = jax.eval_shape(lambda p: jax.vjp(loss(model, x), p)[1], params)
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(vjp))


@pytest.mark.parametrize("scan", [False, True])
def test_every_policy_gives_the_loss_and_gradients_of_no_remat(scan):
  x = images()
  params = random_params(vit(None, scan), x)
  policies = (None,) + CPU_POLICIES
  # One program for all (one compile); remat never changes values, merged or not.
  results = jax.jit(lambda p: [jax.value_and_grad(loss(vit(policy, scan), x))(p)
                               for policy in policies])(params)
  want_loss, want = results[0]
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(want))
  for policy, (got_loss, got) in zip(policies[1:], results[1:]):
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6, err_msg=policy)
    jax.tree.map(lambda a, b, p=policy: np.testing.assert_allclose(
        a, b, rtol=1e-4, atol=1e-5 * scale, err_msg=p), got, want)


def test_full_is_the_program_of_a_config_without_the_key():
  x = images(2)
  params = random_params(vit(None), x)
  lowered = lambda model: jax.jit(jax.grad(loss(model, x))).lower(params).as_text()
  assert lowered(vit("full")) == lowered(models.VisionTransformer(num_classes=5, remat=True,
                                                                   **TINY))


@pytest.mark.parametrize("scan", [False, True])
def test_policies_save_more_in_the_expected_order(scan):
  x = images()
  params = random_params(vit(None, scan), x)
  saved = {p: saved_bytes(vit(p, scan), params, x) for p in (None,) + CPU_POLICIES}
  # full keeps block inputs only; no-batch-dims adds the projections' and MLP's matmul outputs;
  # dots adds the attention's batched matmuls; no remat keeps every activation.
  assert (saved["full"] < saved["dots_with_no_batch_dims_saveable"] < saved["dots_saveable"]
          < saved[None]), saved


def test_mixer_takes_the_policies():
  x = images()
  mixer = lambda p: models.MlpMixer(num_classes=5, remat=p is not None, remat_policy=p,
                                    **TINY_MIXER)
  params = random_params(mixer(None), x)
  (want_loss, want), (got_loss, got) = jax.jit(lambda p: [
      jax.value_and_grad(loss(mixer(policy), x))(p) for policy in (None, "dots_saveable")])(params)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), got, want)
  saved = {p: saved_bytes(mixer(p), params, x) for p in (None,) + CPU_POLICIES}
  # A Mixer has no batched matmuls: both dot policies save the same.
  assert (saved["full"] < saved["dots_with_no_batch_dims_saveable"] == saved["dots_saveable"]
          < saved[None]), saved


def test_config_key_reaches_the_model():
  config = base.defaults()
  config.model_name = "ViT-Ti_16"
  assert config.model.remat_policy is None  # unset: the model's default (None = 'full')
  config.model.remat, config.model.remat_policy = True, "dots_saveable"
  assert registry.model_from_run_config(config, 10).remat_policy == "dots_saveable"
  config.model_name = "Mixer-B_16"
  assert registry.model_from_run_config(config, 10).remat_policy == "dots_saveable"


@pytest.mark.parametrize("make", [
    lambda **kw: models.VisionTransformer(num_classes=5, **TINY, **kw),
    lambda **kw: models.MlpMixer(num_classes=5, **dict(TINY_MIXER, **kw))])
def test_bad_choices_are_one_clear_error(make):
  init = lambda **kw: jax.eval_shape(lambda: make(**kw).init(jax.random.PRNGKey(0), images(1),
                                                             train=False))
  with pytest.raises(ValueError, match=r"remat_policy='dots' is not known; use one of "
                     r"\('full', 'dots_saveable', 'dots_with_no_batch_dims_saveable', "
                     r"'offload_dots_with_no_batch_dims'\)"):
    init(remat=True, remat_policy="dots")
  with pytest.raises(ValueError, match=r"needs remat=True.*--config.model.remat=True"):
    init(remat=False, remat_policy="dots_saveable")
  with pytest.raises(ValueError, match=r"TPU and GPU only, not on 'cpu'.*Use "
                     "'dots_with_no_batch_dims_saveable'"):
    init(remat=True, remat_policy=OFFLOAD)


def test_offload_is_allowed_where_jax_places_arrays_in_host_memory():
  for name in ("tpu", "gpu"):
    assert transformer.checkpoint_policy(True, OFFLOAD, name) is not None
  assert transformer.checkpoint_policy(True, "full", "cpu") is None
  assert transformer.checkpoint_policy(False, None, "cpu") is None


# --- TPU through libtpu's abstract devices (no TPU needed) ----------------------------------
try:
  import libtpu  # noqa: F401  pylint: disable=unused-import,g-import-not-at-top
  HAS_LIBTPU = True
except ImportError:
  HAS_LIBTPU = False
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="pip install -r requirements-tpu.txt")
# v5p, not v5e: v5e's 128 MiB of VMEM holds all of a tiny model's temporaries, so its HBM
# temp bytes read 0 for every policy. Scan: 8 layers of residuals, one body to compile.
TPU_VIT = dict(hidden_size=64, transformer=dict(num_layers=8, mlp_dim=128, num_heads=2,
                                                dropout_rate=0.0, attention_dropout_rate=0.0))


@needs_libtpu
def test_tpu_temp_bytes_follow_the_policy_and_offload_moves_them_to_the_host():
  from vit_jax.planning import dry_run  # pylint: disable=g-import-not-at-top
  device = dry_run.target_devices("v5p:2x2x1")[0]
  replicated = jax.sharding.SingleDeviceSharding(device)
  x = jax.ShapeDtypeStruct((16, 32, 32, 3), jnp.float32)
  stats = {}
  with platform.compile_target("tpu"):
    params = jax.eval_shape(lambda: nn.meta.unbox(vit(None, True, **TPU_VIT).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))["params"])
    for policy in CPU_POLICIES + (OFFLOAD,):
      model = vit(policy, True, **TPU_VIT)
      step = jax.jit(lambda p, x, m=model: jax.grad(loss(m, x))(p), in_shardings=replicated,
                     out_shardings=replicated)
      stats[policy] = step.lower(params, x).compile().memory_analysis()
  temp = {p: s.temp_size_in_bytes for p, s in stats.items()}
  assert temp["full"] < temp["dots_with_no_batch_dims_saveable"] < temp["dots_saveable"], temp
  # The offloaded residuals live in pinned host memory: less device memory than keeping them.
  assert stats[OFFLOAD].host_temp_size_in_bytes > 0, stats[OFFLOAD]
  assert temp[OFFLOAD] < temp["dots_with_no_batch_dims_saveable"], temp
  assert all(s.host_temp_size_in_bytes == 0 for p, s in stats.items() if p != OFFLOAD)


@needs_libtpu
def test_tpu_dry_run_compiles_the_offload_policy_and_reports_it():
  """The planner's path: the real train step (optimizer, 4-chip mesh), unscanned layers."""
  from vit_jax.planning import dry_run  # pylint: disable=g-import-not-at-top
  config = base.defaults()
  config.model_name = "ViT-Ti_16"
  with config.unlocked():
    config.model.hidden_size, config.model.patches = 64, {"size": (8, 8)}
    config.model.transformer.update(dict(mlp_dim=128, num_heads=4, num_layers=2))
  config.model.remat, config.model.remat_policy = True, OFFLOAD
  config.dataset, config.num_classes = "cifar10", None
  config.optimizer, config.pp.crop, config.batch, config.batch_eval = "adamw", 32, 16, 16
  config.total_steps, config.warmup_steps = 0, 500
  r = dry_run.analyse(config, dry_run.target_devices("v5p:2x2x1"))
  assert r["fits"] is True and r["remat"] is True and r["remat_policy"] == OFFLOAD
