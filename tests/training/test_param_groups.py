"""Tests for vit_jax.training.param_groups (and its use in optim / train_state / train_step).

Per-leaf updates against -lr x mult x grad (SGD without momentum), frozen leaves bit-unchanged
and absent from the optimizer state, AdamW's per-leaf decay, the layer-decay multipliers of
ViT, scanned ViT, R+ViT hybrid, MAP-head ViT and Mixer trees against hand-written tables, the
opt-state shardings, the start-up table and the errors.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from helpers import setup_for, synthetic_batches, tiny_config  # pylint: disable=g-bad-import-order

from vit_jax import sharding
from vit_jax.configs import base
from vit_jax.models import registry
from vit_jax.training import optim, param_groups, train_state, train_step

LR = 0.1


def _config(**kw):
  c = base.defaults()
  c.update(dict(base_lr=LR, warmup_steps=0, decay_type="constant", optimizer="sgd", momentum=0.0,
                grad_norm_clip=0.0, weight_decay=0.0))
  with c.ignore_type():
    for k, v in kw.items():
      c[k] = v
  return c


def _abstract(name, **overrides):
  """The abstract (shape-only) param tree of a registered model at 224 px."""
  model = registry.create_model(name, 10, **overrides)
  boxed = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                            jnp.zeros((1, 224, 224, 3)), train=False)["params"])
  return nn.meta.unbox(boxed)


def _tiny_params(scan=False, seed=0):
  """A 2-layer width-8 ViT's params (concrete, host)."""
  model = registry.create_model(
      "ViT-Ti_16", 3, hidden_size=8, patches={"size": (4, 4)}, scan_layers=scan,
      transformer={"num_layers": 2, "mlp_dim": 16, "num_heads": 2})
  return jax.device_get(nn.meta.unbox(model.init({"params": jax.random.PRNGKey(seed)},
                                                 jnp.zeros((1, 8, 8, 3)), train=False)["params"]))


def _flat(tree):
  return dict(param_groups.named_leaves(tree))


def _random_like(tree, seed):
  rng = np.random.RandomState(seed)
  return jax.tree.map(lambda x: rng.normal(size=np.shape(x)).astype(np.float32), tree)


# --- the update of every leaf ------------------------------------------------------------


def test_sgd_update_is_minus_lr_times_mult_times_grad_per_leaf():
  rules = (("head/.*", {"lr_mult": 10.0}), ("embedding/.*", "freeze"),
           ("Transformer/encoderblock_0/MlpBlock_0/.*", {"lr_mult": 0.5}))
  tx, _ = _make_optimizer(_config(param_groups=rules, layer_decay=0.5))
  params = _tiny_params()
  grads = _random_like(params, 1)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  # Hand-written: depth 0 embeddings (x0.5^3), block i (x0.5^(2-i)), head / norm (x1); rules on top.
  def expected_mult(path):
    if path.startswith("embedding/"):
      return 0.0  # frozen
    if path.startswith(("cls", "Transformer/posembed_input")):
      return 0.5 ** 3
    m = re.match(r"Transformer/encoderblock_(\d)/", path)
    if m:
      mult = 0.5 ** (2 - int(m.group(1)))
      return mult * (0.5 if path.startswith("Transformer/encoderblock_0/MlpBlock_0/") else 1.0)
    if path.startswith("Transformer/encoder_norm"):
      return 1.0
    assert path.startswith("head/"), path
    return 10.0
  grads_flat, updates_flat = _flat(grads), _flat(updates)
  for path, u in updates_flat.items():
    want = -LR * expected_mult(path) * np.asarray(grads_flat[path], np.float64)
    np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, atol=0, err_msg=path)
  assert not np.any(updates_flat["embedding/kernel"])


def test_scanned_stack_gets_one_multiplier_per_layer_along_axis0():
  params = _tiny_params(scan=True)
  tx, _ = _make_optimizer(_config(layer_decay=0.5))
  grads = _random_like(params, 2)
  updates, _ = tx.update(grads, tx.init(params), params)
  g = np.asarray(grads["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"])
  u = np.asarray(updates["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"])
  assert g.shape[0] == 2
  np.testing.assert_allclose(u[0], -LR * 0.25 * g[0], rtol=1e-6)  # block 0: depth 1 of L = 2
  np.testing.assert_allclose(u[1], -LR * 0.5 * g[1], rtol=1e-6)   # block 1: depth 2
  np.testing.assert_allclose(updates["head"]["kernel"], -LR * grads["head"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(updates["cls"], -LR * 0.125 * grads["cls"], rtol=1e-6)


def test_adamw_wd_mult_scales_only_that_leafs_decay_and_lr_mult_scales_decay_too():
  # Zero gradients: Adam's direction is 0, so an update is -lr x lr_mult x wd x wd_mult x p.
  rules = (("head/kernel", {"lr_mult": 2.0, "wd_mult": 0.0}),
           ("Transformer/encoderblock_1/.*/kernel", {"wd_mult": 3.0}),
           ("embedding/kernel", {"lr_mult": 4.0}))
  cfg = _config(optimizer="adamw", weight_decay=0.5, param_groups=rules)
  tx, _ = _make_optimizer(cfg)
  params = _random_like(_tiny_params(), 3)
  updates, _ = tx.update(jax.tree.map(np.zeros_like, params), tx.init(params), params)
  flat_u, flat_p = _flat(updates), _flat(params)
  for path, u in flat_u.items():
    kernel = path.endswith("/kernel")
    wd = 0.0 if path == "head/kernel" else (3.0 if path.startswith("Transformer/encoderblock_1/")
                                            else 1.0)
    lr_mult = 4.0 if path == "embedding/kernel" else (2.0 if path == "head/kernel" else 1.0)
    want = -LR * lr_mult * 0.5 * wd * flat_p[path] if kernel else np.zeros_like(flat_p[path])
    np.testing.assert_allclose(np.asarray(u), want, rtol=1e-6, atol=1e-12, err_msg=path)


def test_frozen_leaves_bit_unchanged_and_absent_from_the_optimizer_state(tmp_path):
  config = tiny_config(tmp_path, optimizer="adamw", weight_decay=0.1,
                       param_groups=(("embedding/.*", "freeze"), ("cls", "freeze")))
  mesh = sharding.make_mesh((("data", -1),))
  setup = setup_for(config, mesh)
  params = jax.device_get(train_state.init_params(setup, 0))
  params["embedding"]["bias"] = -np.zeros_like(params["embedding"]["bias"])  # -0.0: sign kept?
  state = train_state.state_from_params(setup, params, 0)
  frozen = {"embedding/kernel", "embedding/bias", "cls"}
  opt_paths = [param_groups.path_str(p) for p, _ in
               jax.tree_util.tree_flatten_with_path(state.opt_state)[0]]
  assert opt_paths and not [p for p in opt_paths if any(p.endswith(f) for f in frozen)], opt_paths
  assert any(p.endswith("head/kernel") for p in opt_paths)
  step = train_step.make_train_step(setup)
  bsh = sharding.batch_sharding(mesh)
  for batch in synthetic_batches(3, 32, 8):
    state, _ = step(state, {k: jax.device_put(v, bsh) for k, v in batch.items()})
  after = jax.device_get(state.params)
  for path in frozen:
    a, b = _flat(params)[path], _flat(after)[path]
    assert a.tobytes() == b.tobytes(), path
  assert np.signbit(after["embedding"]["bias"]).all()
  assert not np.array_equal(after["head"]["kernel"], params["head"]["kernel"])


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_opt_state_shardings_by_path_equal_optax_tree_map_params(tmp_path, name):
  config = tiny_config(tmp_path, optimizer=name, momentum=0.9)
  mesh = sharding.make_mesh((("data", 2), ("fsdp", 2), ("model", 2)))
  setup = setup_for(config, mesh)
  opt_abstract = setup.abstract_state.opt_state
  want = optax.tree_utils.tree_map_params(
      setup.tx, lambda _, s: s, opt_abstract, setup.param_shardings,
      transform_non_params=lambda _: sharding.replicated(mesh),
      is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct))
  assert jax.tree.leaves(setup.state_shardings.opt_state) == jax.tree.leaves(want)
  # Under param groups the moments are sharded like their parameters too.
  with config.unlocked():
    config.param_groups = (("head/.*", "freeze"),)
    config.layer_decay = 0.75
  grouped = setup_for(config, mesh)
  by_path = {param_groups.path_str(p): s for p, s in
             jax.tree_util.tree_flatten_with_path(grouped.param_shardings)[0]}
  sharded = 0
  for p, s in jax.tree_util.tree_flatten_with_path(grouped.state_shardings.opt_state)[0]:
    path = param_groups.path_str(p)
    match = [k for k in by_path if path.endswith("/" + k)]
    if match:
      assert s == by_path[max(match, key=len)], path
      sharded += any(a is not None for a in s.spec)
  assert sharded > 0


# --- layer-wise lr decay tables ------------------------------------------------------------

# Hand-written: (path regex, depth as a function of L and the block index) per family.
VIT_TABLE = [(r"embedding/.*", lambda L, i: 0), (r"cls", lambda L, i: 0),
             (r"Transformer/posembed_input/.*", lambda L, i: 0),
             (r"Transformer/encoderblock_(\d+)/.*", lambda L, i: i + 1),
             (r"Transformer/encoder_norm/.*", lambda L, i: L + 1),
             (r"pre_logits/.*", lambda L, i: L + 1), (r"MAPHead_0/.*", lambda L, i: L + 1),
             (r"head/.*", lambda L, i: L + 1)]
HYBRID_TABLE = [(r"conv_root/.*", lambda L, i: 0), (r"gn_root/.*", lambda L, i: 0),
                (r"block\d+/unit\d+/.*", lambda L, i: 0)] + VIT_TABLE
MIXER_TABLE = [(r"stem/.*", lambda L, i: 0), (r"MixerBlock_(\d+)/.*", lambda L, i: i + 1),
               (r"pre_head_layer_norm/.*", lambda L, i: L + 1), (r"head/.*", lambda L, i: L + 1)]


@pytest.mark.parametrize("name,overrides,table,num_layers", [
    ("ViT-B_16", {}, VIT_TABLE, 12),
    ("ViT-So400m_14", {}, VIT_TABLE, 27),   # MAP head
    ("R26+ViT-S_32", {}, HYBRID_TABLE, 12),
    ("Mixer-B_16", {}, MIXER_TABLE, 12),
])
def test_layer_decay_multipliers_match_the_hand_written_table(name, overrides, table, num_layers):
  tree = _abstract(name, **overrides)
  leaves = param_groups.plan(param_groups.Groups(layer_decay=0.65), tree)
  families = set()
  for path, leaf in leaves.items():
    hits = [(rx, depth) for rx, depth in table if re.fullmatch(rx, path)]
    assert hits, f"{name}: {path} is in no row of the table"
    rx, depth = hits[0]
    m = re.fullmatch(rx, path)
    want = depth(num_layers, int(m.group(1)) if m.groups() else None)
    assert leaf.depth == want, (path, leaf.depth, want)
    np.testing.assert_allclose(leaf.lr_mult, 0.65 ** (num_layers + 1 - want), rtol=1e-12)
    families.add(rx)
  assert len(families) >= 4


def test_layer_decay_scanned_vit_is_a_per_layer_vector():
  tree = _abstract("ViT-B_16", scan_layers=True)
  leaves = param_groups.plan(param_groups.Groups(layer_decay=0.65), tree)
  leaf = leaves["Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"]
  np.testing.assert_array_equal(leaf.depth, np.arange(1, 13))
  np.testing.assert_allclose(leaf.lr_mult, 0.65 ** (13 - np.arange(1, 13)), rtol=1e-12)
  assert leaves["embedding/kernel"].lr_mult == pytest.approx(0.65 ** 13)
  assert leaves["head/kernel"].lr_mult == 1.0


def test_table_of_vit_b16_with_layer_decay_and_a_rule():
  groups = param_groups.Groups(rules=param_groups.parse_rules((("head/.*", {"lr_mult": 10.0}),)),
                               layer_decay=0.65)
  lines = param_groups.table(groups, _abstract("ViT-B_16"))
  text = "\n".join(lines)
  assert "head/.*" in text and "7,690" in text  # 768 x 10 + 10 elements
  assert "depth 0: embeddings / stem" in text and "depth 13: after the blocks" in text
  assert "lr x0.003697" in text  # 0.65 ** 13
  assert "trained: 85,806,346 elements; frozen: 0" in text


# --- config and errors ---------------------------------------------------------------------


def test_rules_from_a_flag_string_and_from_config_json():
  from ml_collections.config_flags import tuple_parser  # pylint: disable=g-import-not-at-top
  flag = "(('head/.*', {'lr_mult': 10.0}), ('embedding/.*', 'freeze'))"
  from_flag = param_groups.parse_rules(tuple_parser.TupleParser().parse(flag))
  from_json = param_groups.parse_rules([["head/.*", {"lr_mult": 10.0}], ["embedding/.*", "freeze"]])
  assert from_flag == from_json == (param_groups.Rule("head/.*", lr_mult=10.0),
                                    param_groups.Rule("embedding/.*", freeze=True))
  assert param_groups.from_config(base.defaults()) is None


@pytest.mark.parametrize("rules,layer_decay,match", [
    ((("heads/.*", {"lr_mult": 2.0}),), 0.0,
     r"rule 'heads/\.\*' matches no parameter.*head/kernel"),
    ((("head/.*", "frozen"),), 0.0, "setting 'frozen' is unknown"),
    ((("head/.*", {"lr": 2.0}),), 0.0, r"unknown keys \['lr'\]"),
    ((("head/.*", {"lr_mult": -1.0}),), 0.0, "finite and >= 0"),
    ((("(", "freeze"),), 0.0, "not a regex"),
    ((("head/.*",),), 0.0, "each rule is"),
    (((".*", "freeze"),), 0.0, "freezes every parameter"),
    ((), 1.5, "layer_decay=1.5"),
])
def test_bad_groups_are_one_clear_error(rules, layer_decay, match):
  with pytest.raises(ValueError, match=match):
    groups = param_groups.from_config(_config(param_groups=rules, layer_decay=layer_decay))
    param_groups.plan(groups, _tiny_params())


def test_wd_mult_with_sgd_and_unknown_layer_depth_are_errors():
  with pytest.raises(ValueError, match="wd_mult"):
    _make_optimizer(_config(param_groups=(("head/.*", {"wd_mult": 0.0}),)))
  with pytest.raises(ValueError, match=r"no layer depth is known for \['adapter/w'\]"):
    param_groups.plan(param_groups.Groups(layer_decay=0.5), {"adapter": {"w": np.zeros(2)},
                                                             "head": {"kernel": np.zeros(2)}})


def test_groups_off_keeps_the_old_optimizer_chain():
  """No groups: the plain optax chain (old checkpoints' optimizer states restore)."""
  params = _tiny_params()
  for name in ("sgd", "adamw"):
    tx, _ = _make_optimizer(_config(optimizer=name, momentum=0.9))
    lr = lambda step: LR
    want = (optax.sgd(lr, momentum=0.9) if name == "sgd" else
            optax.adamw(lr, weight_decay=0.0, mask=optim.decay_mask))
    assert jax.tree.structure(tx.init(params)) == jax.tree.structure(want.init(params))


def _make_optimizer(config):
  """optim.make_optimizer as the trainer calls it: param groups parsed once from the config."""
  return optim.make_optimizer(config, 10, param_groups.from_config(config))


def test_param_groups_are_parsed_once_and_carried(monkeypatch):
  """setup_from_config parses config.param_groups once; the optimizer and the frozen tree get
  that one parse, and the loop's start-up table reads it from the setup."""
  calls = []
  real = param_groups.from_config
  monkeypatch.setattr(param_groups, "from_config", lambda c: calls.append(1) or real(c))
  cfg = _config(param_groups=(("head/.*", {"lr_mult": 0.0}),), layer_decay=0.5)
  setup = train_state.setup_from_config(cfg, sharding.make_mesh((("data", -1),)), 10, 10)
  assert len(calls) == 1
  assert setup.groups is not None and setup.groups.rules[0].pattern == "head/.*"
