"""Adafactor (big_vision's variant) and Lion: NumPy references of the published update rules, the
factored / bfloat16 state, the dry run's state bytes and a bit-identical in-process resume."""
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from helpers import tiny_config  # pylint: disable=g-bad-import-order

from vit_jax.configs import base
from vit_jax.training import optim, param_groups

STEPS, BASE_LR, END_LR = 5, 0.05, 0.01


def _config(**kw):
  c = base.defaults()
  c.update(dict(base_lr=BASE_LR, end_lr=END_LR, warmup_steps=0, decay_type="linear",
                grad_norm_clip=0.0, weight_decay=0.3, momentum=0.9, optim_dtype="float32"))
  c.update(kw)
  return c


def _lr(k):
  """The 'linear' schedule without warmup at update k (0-based), as optim.make_schedule."""
  return BASE_LR + (END_LR - BASE_LR) * min(k / STEPS, 1.0)


def _tree(rng):
  """A factored 64x48 kernel, a factored 3-D kernel, its biases, a 2-D kernel below the
  factoring threshold (8 < 32) and a non-decayed 2-D leaf."""
  return {"Dense_0": {"kernel": rng.normal(size=(64, 48)), "bias": rng.normal(size=48)},
          "attn": {"kernel": rng.normal(size=(40, 3, 36)), "bias": rng.normal(size=(3, 36))},
          "small": {"kernel": rng.normal(size=(8, 40))},
          "pos_embedding": rng.normal(size=(4, 40))}


def _flat(tree):
  return {param_groups.path_str(p): np.asarray(x, np.float64)
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _run_ours(config, params, grads):
  """Applies STEPS updates of optim.make_optimizer(config); returns the flat params after each."""
  tx, _ = optim.make_optimizer(config, STEPS, param_groups.from_config(config))
  p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
  state = tx.init(p)
  update = jax.jit(tx.update)
  out = []
  for g in grads:
    u, state = update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, p)
    p = jax.tree.map(lambda a, b: a + b, p, u)
    out.append(_flat(p))
  return out, state


def _store(x, dtype):
  """A first moment as stored between steps (bfloat16 rounding when configured)."""
  return x.astype(ml_dtypes.bfloat16).astype(np.float64) if dtype == "bfloat16" else x


def _np_adafactor(params, grads, *, decay_rate=0.8, beta2_cap=0.999, min_dim=32, clip=None,
                  momentum=0.9, eps=1e-30, wd=0.3, mu_dtype="float32", wd_mult=None):
  """Zhai et al. 2022 Adafactor (big_vision): beta2_t = min(cap, 1 - t^-0.8); for a leaf whose
  two largest dims are >= min_dim, V = R C / mean(R) from EMAs of the row / column means of
  g^2 + eps; u = g / sqrt(V), clipped to RMS <= clip; m = b m + (1 - b) u; p -= lr (m + wd p)."""
  p, stats, mom, out = _flat(params), {}, {}, []
  wd_mult = wd_mult or {}
  for k, g_tree in enumerate(grads):
    t = k + 1
    beta2 = min(beta2_cap, 1.0 - t ** -decay_rate)
    for name, g in _flat(g_tree).items():
      g2 = g * g + eps
      dims = sorted(range(g.ndim), key=lambda d: g.shape[d])
      if g.ndim >= 2 and g.shape[dims[-2]] >= min_dim:
        big, second = dims[-1], dims[-2]
        r = g2.mean(axis=big, keepdims=True)       # means along the largest dim
        c = g2.mean(axis=second, keepdims=True)    # means along the second largest
        r_old, c_old = stats.get(name, (0.0, 0.0))
        r, c = beta2 * r_old + (1 - beta2) * r, beta2 * c_old + (1 - beta2) * c
        stats[name] = (r, c)
        v = r * c / r.mean(axis=second, keepdims=True)
      else:
        v = beta2 * stats.get(name, 0.0) + (1 - beta2) * g2
        stats[name] = v
      u = g / np.sqrt(v)
      if clip:
        u = u / max(1.0, np.sqrt(np.mean(u * u)) / clip)
      if momentum:
        u = momentum * mom.get(name, 0.0) + (1 - momentum) * u
        mom[name] = _store(u, mu_dtype)
      coeff = wd * wd_mult.get(name, 1.0) if name.endswith("kernel") else 0.0
      p[name] = p[name] - _lr(k) * (u + coeff * p[name])
    out.append(dict(p))
  return out


def _np_lion(params, grads, *, b1=0.9, b2=0.99, wd=0.3, mu_dtype="float32"):
  """Chen et al. 2023 Lion: p -= lr (sign(b1 m + (1 - b1) g) + wd p); m = b2 m + (1 - b2) g."""
  p, mom, out = _flat(params), {}, []
  for k, g_tree in enumerate(grads):
    for name, g in _flat(g_tree).items():
      m = mom.get(name, 0.0)
      u = np.sign(b1 * m + (1 - b1) * g)
      mom[name] = _store(b2 * m + (1 - b2) * g, mu_dtype)
      coeff = wd if name.endswith("kernel") else 0.0
      p[name] = p[name] - _lr(k) * (u + coeff * p[name])
    out.append(dict(p))
  return out


def _problem(seed=0):
  rng = np.random.RandomState(seed)
  params = _tree(rng)
  # Gradients of mixed scales per leaf and step, so the factored estimate is not trivial.
  grads = [jax.tree.map(lambda x: x * rng.uniform(0.1, 3.0, size=x.shape[-1:]), _tree(rng))
           for _ in range(STEPS)]
  return params, grads


def _assert_close(ours, want, rtol, atol, bf16=None):
  """Every leaf after every update within (rtol, atol). With a bfloat16 first moment (`bf16` =
  the largest difference one rounding flip may make) our float32 and the reference's float64
  arithmetic may round a stored moment to neighbouring bfloat16 values: at most 0.5% of all
  elements may then differ by up to `bf16`."""
  for k, (a, b) in enumerate(zip(ours, want)):
    assert a.keys() == b.keys()
    off = total = 0
    for name in a:
      msg = f"{name} after update {k + 1}"
      if bf16 is None:
        np.testing.assert_allclose(a[name], b[name], rtol=rtol, atol=atol, err_msg=msg)
        continue
      off += int((~np.isclose(a[name], b[name], rtol=rtol, atol=atol)).sum())
      total += a[name].size
      np.testing.assert_allclose(a[name], b[name], rtol=0, atol=bf16, err_msg=msg)
    assert off <= 0.005 * total, f"after update {k + 1}: {off} of {total} elements differ"


@pytest.mark.parametrize("case", [
    dict(),
    dict(optim_dtype="bfloat16"),
    dict(adafactor_clipping_threshold=1.0, momentum=0.0, adafactor_beta2_cap=0.6),
])
def test_adafactor_matches_numpy(case):
  params, grads = _problem()
  ours, _ = _run_ours(_config(optimizer="adafactor", **case), params, grads)
  want = _np_adafactor(params, grads, mu_dtype=case.get("optim_dtype", "float32"),
                       clip=case.get("adafactor_clipping_threshold"),
                       momentum=case.get("momentum", 0.9),
                       beta2_cap=case.get("adafactor_beta2_cap", 0.999))
  # One bfloat16 rounding flip of m moves an update by lr * 2^-8 |m| (|m| <~ 4 here).
  bf16 = 4 * BASE_LR * 2.0 ** -8 if case.get("optim_dtype") == "bfloat16" else None
  _assert_close(ours, want, rtol=1e-4, atol=1e-5, bf16=bf16)


def test_adafactor_wd_mult_per_parameter_matches_numpy():
  # Scaling ViT's head/body split: weight decay x100 on one kernel (3.0 vs 0.03 in the paper).
  params, grads = _problem(1)
  config = _config(optimizer="adafactor", weight_decay=0.03, grad_norm_clip=0.0,
                   param_groups=(("Dense_0/kernel", {"wd_mult": 100.0}),))
  ours, _ = _run_ours(config, params, grads)
  want = _np_adafactor(params, grads, wd=0.03, wd_mult={"Dense_0/kernel": 100.0})
  _assert_close(ours, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lion_matches_numpy(dtype):
  params, grads = _problem(2)
  ours, _ = _run_ours(_config(optimizer="lion", optim_dtype=dtype), params, grads)
  # A flip of sign(c) where c is within a bfloat16 rounding of 0 moves an update by 2 lr.
  bf16 = 2.01 * BASE_LR if dtype == "bfloat16" else None
  _assert_close(ours, _np_lion(params, grads, mu_dtype=dtype), rtol=1e-5, atol=1e-6, bf16=bf16)


def _leaves_named(state, field):
  """{param path: leaf} of the `field` trees (v_row, v_col, v, ema, mu) anywhere in `state`."""
  found = {}
  def visit(node):
    if isinstance(node, tuple) and hasattr(node, "_fields"):
      for f in node._fields:
        sub = getattr(node, f)
        if f == field:
          found.update({k: v for k, v in param_groups.named_leaves(sub)})
        else:
          visit(sub)
    elif isinstance(node, (tuple, list)):
      for sub in node:
        visit(sub)
    elif isinstance(node, dict):
      for sub in node.values():
        visit(sub)
  visit(state)
  return found


def test_adafactor_state_is_factored_with_a_bfloat16_momentum():
  params, grads = _problem()
  _, state = _run_ours(_config(optimizer="adafactor", optim_dtype="bfloat16"), params, grads[:1])
  row, col, full = (_leaves_named(state, f) for f in ("v_row", "v_col", "v"))
  assert row["Dense_0/kernel"].shape == (48,) and col["Dense_0/kernel"].shape == (64,)
  assert full["Dense_0/kernel"].shape == (1,)        # no full second moment
  assert row["attn/kernel"].shape == (3, 36) and col["attn/kernel"].shape == (40, 3)
  assert full["small/kernel"].shape == (8, 40)       # below min_dim_size_to_factor: full
  assert full["Dense_0/bias"].shape == (48,)
  ema = _leaves_named(state, "ema")
  assert {x.dtype for x in ema.values()} == {jnp.dtype(jnp.bfloat16)}
  assert ema["Dense_0/kernel"].shape == (64, 48)
  lion = _run_ours(_config(optimizer="lion", optim_dtype="bfloat16"), params, grads[:1])[1]
  assert {x.dtype for x in _leaves_named(lion, "mu").values()} == {jnp.dtype(jnp.bfloat16)}


def test_adafactor_on_a_scanned_stack_runs_per_layer():
  """A 'Transformer/encoderblock' stack (axis 0 = layer) gets the unscanned model's maths: with
  min_dim 2 a (2, 48) stacked bias would otherwise be factored across the layer axis."""
  rng = np.random.RandomState(3)
  layers = [{"kernel": rng.normal(size=(6, 5)), "bias": rng.normal(size=5)} for _ in range(2)]
  grads = [[jax.tree.map(lambda x: rng.normal(size=x.shape), t) for t in layers]
           for _ in range(3)]
  config = _config(optimizer="adafactor", adafactor_min_dim_size_to_factor=2,
                   adafactor_clipping_threshold=0.5)
  stack = lambda ts: {"Transformer": {"encoderblock": jax.tree.map(lambda *x: np.stack(x), *ts)},
                      "head": {"kernel": ts[0]["kernel"]}}
  scanned, _ = _run_ours(config, stack(layers), [stack(g) for g in grads])
  for i in range(2):
    alone, _ = _run_ours(config, {"Transformer": {"encoderblock_0": layers[i]},
                                  "head": {"kernel": layers[0]["kernel"]}},
                         [{"Transformer": {"encoderblock_0": g[i]},
                           "head": {"kernel": g[0]["kernel"]}} for g in grads])
    for a, b in zip(scanned, alone):
      for leaf in ("kernel", "bias"):
        np.testing.assert_allclose(a[f"Transformer/encoderblock/{leaf}"][i],
                                   b[f"Transformer/encoderblock_0/{leaf}"], rtol=1e-6)
      np.testing.assert_allclose(a["head/kernel"], b["head/kernel"], rtol=1e-6)


def test_unknown_optimizer_lists_every_name():
  with pytest.raises(ValueError, match="'lamb' is unknown; use one of sgd, adamw, adafactor, lion"):
    optim.make_optimizer(_config(optimizer="lamb"), STEPS, None)


def test_dry_run_state_bytes_adafactor_and_lion_below_adamw(tmp_path):
  from helpers import setup_for  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.planning import dry_run  # pylint: disable=g-import-not-at-top
  # min_dim 8: the tiny model's 16 x 32 kernels are factored (ViT-B's would be at 32).
  config = lambda name: tiny_config(tmp_path, num_classes=10, optimizer=name,
                                    optim_dtype="bfloat16", adafactor_min_dim_size_to_factor=8)
  got = {}
  for name in ("adamw", "adafactor"):  # Each analyse compiles the step: two, not three.
    report = dry_run.analyse(config(name), jax.devices()[:1])
    assert "optimizer state per device" in dry_run.format_report(report)
    got[name] = report["opt_state_bytes"]
  size = report["total_params"]
  # Lion's figure from the same sum the dry run reports (bytes of the abstract state).
  setup = setup_for(config("lion"), sharding.make_mesh((("data", 1),), jax.devices()[:1]))
  lion = sharding.bytes_per_device(setup.abstract_state.opt_state, setup.state_shardings.opt_state)
  adamw, adafactor = got["adamw"], got["adafactor"]
  # bfloat16 first moments (2 bytes / parameter) everywhere; AdamW adds a float32 second moment
  # (4), Lion none, Adafactor row / column vectors for the factored leaves and full ones for the
  # rest (the tiny model's patch embedding, biases, norms, position embedding).
  assert adamw >= 6 * size and 2 * size <= lion < 2 * size + 64, (adamw, lion, size)
  assert lion < adafactor < 4 * size, (adamw, adafactor, lion, size)


@pytest.mark.parametrize("name", ["adafactor", "lion"])
def test_resume_is_bit_identical(tmp_path, name):
  """The trainer's state (the tiny ViT's params, setup.tx's state, fsdp-sharded on 2 devices)
  after 3 optimizer updates, saved by run_state.Checkpointer as the loop saves it and restored
  onto setup.abstract_state, takes 3 more updates to the unbroken run's params and optimizer
  state bit for bit (bfloat16 moments, factored rows / columns). The model's forward is left
  out (random gradients): it is the same for every optimizer and test_resume.py covers it."""
  from helpers import setup_for  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.run import run_state  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train_state  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path, total_steps=6, optimizer=name, optim_dtype="bfloat16",
                       weight_decay=0.1, base_lr=3e-3, adafactor_min_dim_size_to_factor=8)
  setup = setup_for(config, sharding.make_mesh((("fsdp", 2),), jax.devices()[:2]))
  rng = np.random.RandomState(0)
  host = lambda: jax.tree.map(lambda a: rng.normal(size=a.shape), setup.abstract_state.params)
  state = train_state.state_from_params(setup, host(), config.seed)
  grads = [train_state.put_params(host(), setup) for _ in range(6)]

  @jax.jit
  def update(state, g):
    u, opt_state = setup.tx.update(g, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=jax.tree.map(jnp.add, state.params, u),
                         opt_state=opt_state)

  for g in grads[:3]:
    state = update(state, g)
  ckpt = run_state.Checkpointer(str(tmp_path / "run"))
  assert ckpt.save(3, state, {"batch_index": 3})
  ckpt.close()
  for g in grads[3:]:
    state = update(state, g)
  ckpt = run_state.Checkpointer(str(tmp_path / "run"))
  resumed, _ = ckpt.restore(3, setup.abstract_state)
  ckpt.close()
  for g in grads[3:]:
    resumed = update(resumed, g)
  assert int(resumed.step) == int(state.step) == 6
  if name == "adafactor":
    assert (16,) in {x.shape for x in _leaves_named(resumed.opt_state, "v_col").values()}
  assert jnp.dtype(jnp.bfloat16) in {x.dtype for x in jax.tree.leaves(resumed.opt_state)}
  jax.tree.map(np.testing.assert_array_equal, jax.device_get((resumed.params, resumed.opt_state)),
               jax.device_get((state.params, state.opt_state)))
