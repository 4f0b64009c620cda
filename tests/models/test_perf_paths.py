"""The speed-motivated code paths give the maths of the plain formulation.

`headmajor_attention` (hand-written backward) is checked against numpy for the forward and
against JAX's autodiff of an independent einsum formulation for the gradients; the CPU
LayerNorm and matmul (vit_jax.models.cpu_ops) against numpy and autodiff likewise; the XLA /
host defaults are checked for precedence and the opt-out.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import attention, cpu_ops, platform


def _qkv(seed=0, shape=(2, 3, 7, 5)):  # (batch, heads, tokens, head_dim)
  rng = np.random.default_rng(seed)
  return [rng.normal(size=shape).astype(np.float32) for _ in range(3)]


def _numpy_attention(q, k, v):
  logits = np.einsum("bhqd,bhkd->bhqk", q.astype(np.float64), k) / np.sqrt(q.shape[-1])
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return np.einsum("bhqk,bhkd->bhqd", e / e.sum(-1, keepdims=True), v)


def _autodiff_reference(q, k, v):
  """softmax(q k^T / sqrt(d)) v written without the library, differentiated by JAX."""
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
  return jnp.einsum("bhqk,bhkd->bhqd", jax.nn.softmax(logits, axis=-1), v)


def test_headmajor_attention_forward_matches_numpy():
  q, k, v = _qkv()
  np.testing.assert_allclose(attention.headmajor_attention(q, k, v), _numpy_attention(q, k, v),
                             atol=1e-5)


def test_headmajor_attention_gradients_match_autodiff():
  q, k, v = _qkv(1)
  cotangent = np.random.default_rng(2).normal(size=q.shape).astype(np.float32)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * cotangent)
  got = jax.grad(loss(attention.headmajor_attention), argnums=(0, 1, 2))(q, k, v)
  want = jax.grad(loss(_autodiff_reference), argnums=(0, 1, 2))(q, k, v)
  for name, g, w in zip("qkv", got, want):
    np.testing.assert_allclose(g, w, atol=1e-5, err_msg=f"d{name}")


@pytest.mark.parametrize("impl", ["einsum", "einsum_vjp", "xla"])
def test_every_implementation_gives_the_same_token_major_attention(impl):
  q, k, v = (np.swapaxes(t, 1, 2) for t in _qkv(3))  # (batch, tokens, heads, head_dim)
  want = np.swapaxes(_numpy_attention(*(np.swapaxes(t, 1, 2) for t in (q, k, v))), 1, 2)
  got = attention.dot_product_attention(q, k, v, implementation=impl)
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_default_attention_per_platform():
  assert platform.resolve_attention_impl(None, "cpu") == "einsum_vjp"
  assert platform.resolve_attention_impl(None, "gpu") is None
  assert platform.resolve_attention_impl(None, "tpu") is None
  assert platform.resolve_attention_impl("xla", "cpu") == "xla"
  with pytest.raises(ValueError, match="not supported"):
    platform.resolve_attention_impl("flash", "cpu")


def _numpy_layer_norm(x, scale, bias, eps=1e-6):
  x = x.astype(np.float64)
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def _plain_layer_norm(x, scale, bias, eps=1e-6):
  """LayerNorm written without the library, differentiated by JAX."""
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def test_cpu_layer_norm_matches_numpy_and_autodiff():
  rng = np.random.default_rng(3)
  x = (rng.normal(size=(2, 9, 16)) * 3 + 5).astype(np.float32)
  scale, bias = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
  np.testing.assert_allclose(cpu_ops.layer_norm(x, scale, bias), _numpy_layer_norm(x, scale, bias),
                             rtol=1e-5, atol=1e-5)
  dy = rng.normal(size=x.shape).astype(np.float32)

  def loss(fn):
    return lambda *a: jnp.sum(fn(*a) * dy)

  got = jax.grad(loss(cpu_ops.layer_norm), argnums=(0, 1, 2))(x, scale, bias)
  want = jax.grad(loss(_plain_layer_norm), argnums=(0, 1, 2))(x, scale, bias)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_cpu_layer_norm_module_has_nn_layer_norm_params_and_dtype():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8)).astype(np.float32))
  ours = cpu_ops.LayerNorm(epsilon=1e-6, dtype=jnp.bfloat16)
  flax_ln = nn.LayerNorm(epsilon=1e-6)
  p_ours = nn.meta.unbox(ours.init(jax.random.PRNGKey(0), x))
  p_flax = flax_ln.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(np.asarray, p_ours).keys() == p_flax.keys()
  jax.tree.map(np.testing.assert_array_equal, p_ours, p_flax)
  y = ours.apply(p_ours, x)
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), flax_ln.apply(p_flax, x), atol=2e-2)


@pytest.mark.parametrize("shape", [(7, 12, 5), (7, 5, 12)])  # Din > Dout (transposed path), <
def test_cpu_matmul_gradients_match_autodiff(shape):
  n, din, dout = shape
  rng = np.random.default_rng(1)
  x = rng.normal(size=(n, din)).astype(np.float32)
  w = rng.normal(size=(din, dout)).astype(np.float32)
  dy = rng.normal(size=(n, dout)).astype(np.float32)
  np.testing.assert_allclose(cpu_ops.matmul(x, w), x.astype(np.float64) @ w, rtol=1e-5, atol=1e-5)
  got = jax.grad(lambda a, b: jnp.sum(cpu_ops.matmul(a, b) * dy), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(got[0], dy.astype(np.float64) @ w.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got[1], x.T.astype(np.float64) @ dy, rtol=1e-5, atol=1e-5)


def test_dense_dot_general_is_a_drop_in_for_nn_dense():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 3, 10)).astype(np.float32))
  plain, ours = nn.Dense(4), nn.Dense(4, dot_general=cpu_ops.dense_dot_general)
  params = plain.init(jax.random.PRNGKey(0), x)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.PRNGKey(0), x)) == \
      jax.tree.map(jnp.shape, params)
  np.testing.assert_allclose(ours.apply(params, x), plain.apply(params, x), rtol=1e-6, atol=1e-6)
  grad = lambda m: jax.grad(lambda p: jnp.sum(jnp.sin(m.apply(p, x))))(params)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               grad(ours), grad(plain))
  # Anything but the dense contraction goes straight to lax.dot_general.
  a, b = jnp.ones((2, 3, 4)), jnp.ones((2, 4, 5))
  np.testing.assert_array_equal(
      cpu_ops.dense_dot_general(a, b, (((2,), (1,)), ((0,), (0,)))),
      jax.lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,)))))
