"""Tests for vit_jax.training.optim: schedules against closed-form numpy, decay mask, optimizers."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.configs import base
from vit_jax.training import optim, param_groups


def _config(**kw):
  c = base.defaults()
  c.update(dict(base_lr=0.1, warmup_steps=10, decay_type="cosine", end_lr=0.0, optimizer="sgd",
                momentum=0.9, grad_norm_clip=0.0, b1=0.9, b2=0.999, weight_decay=0.0))
  with c.ignore_type():
    c.optim_dtype = None
  c.update(kw)
  return c


def _reference_lr(step, base, warmup, total, kind, end=0.0):
  if step < warmup:
    return base * step / warmup
  t = (step - warmup) / (total - warmup)
  if kind == "cosine":
    return end + (base - end) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
  if kind == "linear":
    return base + (end - base) * min(t, 1.0)
  if kind == "rsqrt":
    return base / math.sqrt(1 + (step - warmup) / warmup)
  return base


@pytest.mark.parametrize("kind", ["cosine", "linear", "rsqrt", "constant"])
def test_schedule_matches_closed_form(kind):
  end_lr = 0.01 if kind != "rsqrt" else 0.0
  sched = optim.make_schedule(_config(decay_type=kind, end_lr=end_lr), 100)
  for step in [0, 1, 5, 10, 11, 50, 99, 100]:
    want = _reference_lr(step, 0.1, 10, 100, kind, 0.01 if kind in ("cosine", "linear") else 0.0)
    np.testing.assert_allclose(float(sched(step)), want, rtol=1e-5, atol=1e-7,
                               err_msg=f"step {step}")


def test_schedule_rejects_bad_input():
  with pytest.raises(ValueError, match="decay_type"):
    optim.make_schedule(_config(decay_type="exp"), 100)
  with pytest.raises(ValueError, match="warmup_steps"):
    optim.make_schedule(_config(warmup_steps=200), 100)


def _params():
  return {"embedding": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
          "cls": jnp.ones((1, 1, 3)),
          "Transformer": {"posembed_input": {"pos_embedding": jnp.ones((1, 2, 3))},
                          "encoder_norm": {"scale": jnp.ones(3), "bias": jnp.ones(3)}},
          "head": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}


def test_decay_mask_only_kernels():
  mask = optim.decay_mask(_params())
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert {k for k, v in flat.items() if v} == {"['embedding']['kernel']", "['head']['kernel']"}


def test_adamw_decoupled_weight_decay_masked():
  # With zero gradients Adam's update is 0, so only the decoupled decay moves params:
  # p <- p - lr * wd * p for kernels, unchanged elsewhere.
  cfg = _config(optimizer="adamw", weight_decay=0.5, warmup_steps=0, decay_type="constant")
  tx, _ = _make_optimizer(cfg)
  params = _params()
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["head"]["kernel"], -0.1 * 0.5 * np.ones((3, 2)), rtol=1e-6)
  np.testing.assert_allclose(updates["embedding"]["bias"], 0.0)
  np.testing.assert_allclose(updates["cls"], 0.0)
  np.testing.assert_allclose(updates["Transformer"]["posembed_input"]["pos_embedding"], 0.0)


def test_sgd_momentum_matches_numpy_and_dtype():
  cfg = _config(warmup_steps=0, decay_type="constant", optim_dtype="bfloat16")
  tx, _ = _make_optimizer(cfg)
  p = {"w": jnp.array([1.0, 2.0])}
  state = tx.init(p)
  assert jax.tree.leaves(state)[0].dtype == jnp.bfloat16
  g = {"w": jnp.array([0.5, -1.0])}
  u1, state = tx.update(g, state, p)
  u2, state = tx.update(g, state, p)
  # trace: m1 = g, m2 = 0.9 g + g ; update = -lr * m
  np.testing.assert_allclose(u1["w"], -0.1 * np.array([0.5, -1.0]), rtol=1e-2)
  np.testing.assert_allclose(u2["w"], -0.1 * 1.9 * np.array([0.5, -1.0]), rtol=1e-2)


def test_global_norm_clipping():
  cfg = _config(warmup_steps=0, decay_type="constant", momentum=0.0, grad_norm_clip=1.0)
  tx, _ = _make_optimizer(cfg)
  p = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
  g = {"a": jnp.array([3.0, 0.0]), "b": jnp.array([4.0])}   # global norm 5
  u, _ = tx.update(g, tx.init(p), p)
  np.testing.assert_allclose(u["a"], -0.1 * np.array([0.6, 0.0]), rtol=1e-6)
  np.testing.assert_allclose(u["b"], -0.1 * np.array([0.8]), rtol=1e-6)


def test_unknown_optimizer():
  with pytest.raises(ValueError, match="optimizer"):
    _make_optimizer(_config(optimizer="lamb"))


def _make_optimizer(config):
  """optim.make_optimizer as the trainer calls it: param groups parsed once from the config."""
  return optim.make_optimizer(config, 10, param_groups.from_config(config))
