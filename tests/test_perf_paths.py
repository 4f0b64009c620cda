"""The speed-motivated code paths give the maths of the plain formulation.

`headmajor_attention` (hand-written backward) is checked against numpy for the forward and
against JAX's autodiff of an independent einsum formulation for the gradients; the XLA /
host defaults are checked for precedence and the opt-out.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import xla_flags
from vit_jax.models import attention


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
  assert attention.resolve_attention_impl(None, "cpu") == "einsum_vjp"
  assert attention.resolve_attention_impl(None, "gpu") is None
  assert attention.resolve_attention_impl(None, "tpu") is None
  assert attention.resolve_attention_impl("xla", "cpu") == "xla"
  with pytest.raises(ValueError, match="not supported"):
    attention.resolve_attention_impl("flash", "cpu")


def test_apply_defaults_keeps_the_users_flags_and_can_be_turned_off(monkeypatch):
  monkeypatch.setitem(xla_flags.DEFAULT_XLA_FLAGS, "cpu", {"--xla_a": "1", "--xla_b": "2"})
  env = {"XLA_FLAGS": "--xla_a=7"}
  assert xla_flags.apply_defaults(env).split() == ["--xla_a=7", "--xla_b=2"]
  assert xla_flags.apply_defaults(env).split() == ["--xla_a=7", "--xla_b=2"]  # Idempotent.
  off = {"XLA_FLAGS": "", "VIT_JAX_NO_XLA_DEFAULTS": "1"}
  assert xla_flags.apply_defaults(off) == ""
  assert xla_flags.apply_host_defaults("cpu", off) is False
  assert xla_flags.apply_host_defaults("gpu", {}) is False
