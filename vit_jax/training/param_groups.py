"""Parameter groups: per-parameter lr / weight-decay multipliers, freezing, layer-wise lr decay.

Config keys (defaults in configs/base.defaults()):
  param_groups  a tuple of (regex, setting) rules over the '/'-joined parameter paths of the
                model's own tree ('Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel'; a
                scanned model has one stacked 'Transformer/encoderblock/...' subtree). A regex
                must FULLY match a path; the first matching rule wins; a rule that matches no
                parameter is an error. setting: 'freeze' (no update, no optimizer state) or
                a dict with lr_mult and / or wd_mult (default 1.0 each), e.g.
                --config.param_groups="(('head/.*', {'lr_mult': 10.0}), ('embedding/.*', 'freeze'))"
  layer_decay   layer-wise lr decay (BEiT / MAE fine-tuning) factor in (0, 1]; 0 = off. Depth 0:
                patch embedding, class token, position embedding (and a hybrid's ResNet stem
                and stages, a Mixer's stem); depth i+1: encoder block i (Transformer/
                encoderblock_{i}, MixerBlock_{i}, layer i of a scanned stack); depth L+1:
                everything after the last block (encoder_norm, MAPHead_0, pre_logits,
                pre_head_layer_norm, head). A parameter's lr multiplier is
                layer_decay ** (L + 1 - depth) (so the head trains at the base lr).
What the multipliers mean: a parameter's update is scaled by lr_mult x (its layer-decay
multiplier); with AdamW (Adafactor, Lion alike) the decoupled weight decay is part of that
update (p -= lr_t * lr_mult * (adam + weight_decay * wd_mult * p)), so lr_mult scales the decay
too, as torch's per-group lr does in timm / BEiT, and wd_mult multiplies only the weight_decay
coefficient of that parameter (kernels only, as optim.decay_mask; wd_mult needs an optimizer
with weight decay, not 'sgd'). The order: layer decay first, then the matching rule's lr_mult
on top; 'freeze' wins over both.
Frozen parameters get optax.set_to_zero() under optax.multi_transform (their optimizer state
is empty), no gradient (stop_gradient in the step) and keep their exact bits.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import optax

FREEZE = "freeze"
_SETTING_KEYS = ("lr_mult", "wd_mult")
# Layer-decay depths by parameter path (the official naming, docs/architecture.md).
_STEM = re.compile(r"(embedding|cls|dist_token|Transformer/posembed_input|conv_root|gn_root|"
                   r"block\d+|stem)(/.*)?")
_BLOCK = re.compile(r"(Transformer/encoderblock|MixerBlock)_(\d+)/.*")
_SCANNED = re.compile(r"Transformer/encoderblock/.*")
_AFTER = re.compile(r"(Transformer/encoder_norm|MAPHead_0|pre_logits|pre_head_layer_norm|head|"
                    r"head_dist)(/.*)?")


@dataclasses.dataclass(frozen=True)
class Rule:
  """One param_groups rule: a full-match regex and what it sets."""
  pattern: str
  freeze: bool = False
  lr_mult: float = 1.0
  wd_mult: float = 1.0

  def describe(self) -> str:
    return FREEZE if self.freeze else f"lr x{self.lr_mult:g}, wd x{self.wd_mult:g}"


@dataclasses.dataclass(frozen=True)
class Groups:
  """The rules and the layer decay of a run (None from from_config when both are off)."""
  rules: tuple[Rule, ...] = ()
  layer_decay: float = 0.0


@dataclasses.dataclass
class Leaf:
  """What the groups decide for one parameter."""
  path: str
  size: int
  rule: Optional[int]               # index of the matching rule, None = no rule
  frozen: bool
  lr_mult: Any                      # float, or (L,) array for a scanned stack (axis 0)
  wd_mult: float
  depth: Any = None                 # int, (L,) array (scanned), or None (no layer decay)


def parse_rules(value: Any) -> tuple[Rule, ...]:
  """Rules from config.param_groups (tuples from a config file / flag, lists from config.json)."""
  rules = []
  for i, entry in enumerate(value or ()):
    if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not isinstance(entry[0], str):
      raise ValueError(f"config.param_groups[{i}]={entry!r}: each rule is (regex, 'freeze' or "
                       "{'lr_mult': x, 'wd_mult': y}).")
    pattern, setting = entry
    try:
      re.compile(pattern)
    except re.error as e:
      raise ValueError(f"config.param_groups[{i}]: {pattern!r} is not a regex ({e}).") from e
    if isinstance(setting, str):
      if setting != FREEZE:
        raise ValueError(f"config.param_groups[{i}] ({pattern!r}): setting {setting!r} is "
                         f"unknown; use {FREEZE!r} or a dict with {list(_SETTING_KEYS)}.")
      rules.append(Rule(pattern, freeze=True))
      continue
    setting = dict(setting.to_dict() if hasattr(setting, "to_dict") else setting)
    unknown = sorted(set(setting) - set(_SETTING_KEYS))
    if unknown:
      raise ValueError(f"config.param_groups[{i}] ({pattern!r}) has unknown keys {unknown}; "
                       f"valid: {list(_SETTING_KEYS)} (or the string {FREEZE!r}).")
    mults = {k: float(setting.get(k, 1.0)) for k in _SETTING_KEYS}
    bad = {k: v for k, v in mults.items() if not (v >= 0 and math.isfinite(v))}
    if bad:
      raise ValueError(f"config.param_groups[{i}] ({pattern!r}): multipliers {bad} must be "
                       "finite and >= 0.")
    rules.append(Rule(pattern, **mults))
  return tuple(rules)


def from_config(config) -> Optional[Groups]:
  """The run's Groups, or None when neither config.param_groups nor config.layer_decay is set."""
  rules = parse_rules(config.param_groups)
  decay = float(config.layer_decay or 0.0)
  if not 0.0 <= decay <= 1.0:
    raise ValueError(f"config.layer_decay={decay} must be in (0, 1] (0 = off; BEiT / MAE use "
                     "0.65-0.75).")
  if not rules and not decay:
    return None
  return Groups(rules=rules, layer_decay=decay)


def _key(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def path_str(path: Sequence[Any]) -> str:
  """A jax key path as the '/'-joined parameter name ('Transformer/encoder_norm/scale')."""
  return "/".join(_key(p) for p in path)


def named_leaves(tree: Any) -> list[tuple[str, Any]]:
  """[(path, leaf)] of a param tree (arrays, ShapeDtypeStructs, tracers) in tree order."""
  return [(path_str(p), x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]]


def layer_depths(named: Sequence[tuple[str, Any]]) -> tuple[dict[str, Any], int]:
  """({path: depth}, L): the layer-decay depth of every parameter (an (L,) array of depths
  for the leaves of a scanned stack) and the number of blocks L."""
  indices = {int(m.group(2)) for path, _ in named if (m := _BLOCK.fullmatch(path))}
  scanned = [x for path, x in named if _SCANNED.fullmatch(path)]
  num_layers = (max(indices) + 1) if indices else (int(np.shape(scanned[0])[0]) if scanned else 0)
  depths, unknown = {}, []
  for path, _ in named:
    if (m := _BLOCK.fullmatch(path)):
      depths[path] = int(m.group(2)) + 1
    elif _SCANNED.fullmatch(path):
      depths[path] = np.arange(1, num_layers + 1)
    elif _STEM.fullmatch(path):
      depths[path] = 0
    elif _AFTER.fullmatch(path):
      depths[path] = num_layers + 1
    else:
      unknown.append(path)
  if unknown:
    raise ValueError(f"config.layer_decay: no layer depth is known for {unknown[:5]} (the rules "
                     "cover ViT, R+ViT hybrids and MLP-Mixer in the official naming); set "
                     "layer_decay=0 and use config.param_groups for this model.")
  return depths, num_layers


def plan(groups: Groups, tree: Any) -> dict[str, Leaf]:
  """{path: Leaf} for a param tree (concrete or abstract); an error for a rule matching nothing."""
  named = named_leaves(tree)
  depths, num_layers = layer_depths(named) if groups.layer_decay else ({}, 0)
  compiled = [re.compile(r.pattern) for r in groups.rules]
  out, hits = {}, [0] * len(groups.rules)
  for path, x in named:
    index = next((i for i, rx in enumerate(compiled) if rx.fullmatch(path)), None)
    rule = groups.rules[index] if index is not None else Rule("")
    if index is not None:
      hits[index] += 1
    depth = depths.get(path)
    mult = 1.0
    if depth is not None:
      mult = groups.layer_decay ** (num_layers + 1 - depth)
      mult = mult.astype(np.float64) if isinstance(mult, np.ndarray) else float(mult)
    out[path] = Leaf(path=path, size=int(math.prod(np.shape(x))), rule=index, frozen=rule.freeze,
                     lr_mult=mult * rule.lr_mult, wd_mult=rule.wd_mult, depth=depth)
  unmatched = [groups.rules[i].pattern for i, n in enumerate(hits) if n == 0]
  if unmatched:
    examples = [p for p, _ in named[:3]] + [p for p, _ in named[-2:]]
    raise ValueError(f"config.param_groups rule {unmatched[0]!r} matches no parameter (a rule "
                     f"must fully match a '/'-joined path, e.g. {examples}).")
  if named and all(leaf.frozen for leaf in out.values()):
    raise ValueError("config.param_groups freezes every parameter; nothing would train.")
  return out


def frozen_tree(groups: Optional[Groups], tree: Any) -> Any:
  """A tree of Python bools, True for frozen leaves (None when no groups or nothing frozen)."""
  if groups is None or not any(r.freeze for r in groups.rules):
    return None
  leaves = plan(groups, tree)
  return jax.tree_util.tree_map_with_path(lambda p, _: leaves[path_str(p)].frozen, tree)


def stop_frozen(params: Any, frozen: Any) -> Any:
  """`params` with stop_gradient on frozen leaves (no backward work for them)."""
  if frozen is None:
    return params
  return jax.tree.map(lambda f, p: jax.lax.stop_gradient(p) if f else p, frozen, params)


def keep_frozen(frozen: Any, old: Any, new: Any) -> Any:
  """`new` with the frozen leaves taken from `old` (bit for bit, even -0.0)."""
  if frozen is None:
    return new
  return jax.tree.map(lambda f, o, n: o if f else n, frozen, old, new)


def _scale(x, mult):
  if isinstance(mult, np.ndarray):  # A scanned stack: one multiplier per layer, along axis 0.
    mult = mult.reshape((-1,) + (1,) * (np.ndim(x) - 1))
  return x * np.asarray(mult, dtype=x.dtype)


def transform(groups: Groups,
              train_tx: Callable[[Callable[[str], float]], optax.GradientTransformation]
              ) -> optax.GradientTransformation:
  """The optimizer under `groups`: multi_transform of train_tx(wd_mult_of_path) for trained
  leaves and set_to_zero() for frozen ones, then each trained leaf's update x its lr_mult."""

  def inner(leaves: dict[str, Leaf]) -> optax.GradientTransformation:
    labels = lambda tree: jax.tree_util.tree_map_with_path(
        lambda p, _: "frozen" if leaves[path_str(p)].frozen else "train", tree)
    return optax.multi_transform(
        {"train": train_tx(lambda path: leaves[path].wd_mult), "frozen": optax.set_to_zero()},
        labels)

  def init(params):
    return inner(plan(groups, params)).init(params)

  def update(updates, state, params=None):
    leaves = plan(groups, updates)
    updates, state = inner(leaves).update(updates, state, params)
    def scale(p, u):
      leaf = leaves[path_str(p)]
      if leaf.frozen or (not isinstance(leaf.lr_mult, np.ndarray) and leaf.lr_mult == 1.0):
        return u
      return _scale(u, leaf.lr_mult)
    return jax.tree_util.tree_map_with_path(scale, updates), state

  return optax.GradientTransformation(init, update)


def table(groups: Groups, tree: Any) -> list[str]:
  """The start-up table: per rule (and per layer-decay depth) the matched leaves, elements and
  multipliers."""
  leaves = list(plan(groups, tree).values())
  lines = ["Parameter groups (first matching rule wins; lr multiplier = layer decay x rule):",
           f"  {'rule / depth':<44} {'leaves':>6} {'elements':>12}  setting"]
  for i, rule in enumerate(groups.rules):
    hit = [leaf for leaf in leaves if leaf.rule == i]
    lines.append(f"  {rule.pattern:<44} {len(hit):>6} {sum(leaf.size for leaf in hit):>12,}  "
                 f"{rule.describe()}")
  rest = [leaf for leaf in leaves if leaf.rule is None]
  if groups.rules:
    lines.append(f"  {'(no rule)':<44} {len(rest):>6} {sum(leaf.size for leaf in rest):>12,}  "
                 "lr x1, wd x1")
  if groups.layer_decay:
    by_depth: dict[int, list] = {}
    for leaf in leaves:
      depths = leaf.depth if isinstance(leaf.depth, np.ndarray) else [leaf.depth]
      for d in depths:
        by_depth.setdefault(int(d), []).append((leaf, len(depths)))
    top = layer_depths(named_leaves(tree))[1] + 1
    lines.append(f"  layer decay {groups.layer_decay:g} (L = {top - 1} blocks; multiplier before "
                 "the rule's lr_mult):")
    for d in sorted(by_depth):
      entries = by_depth[d]
      elements = sum(leaf.size // n for leaf, n in entries)
      what = ("embeddings / stem" if d == 0
              else "after the blocks" if d == top else f"block {d - 1}")
      lines.append(f"  {f'depth {d}: {what}':<44} {len(entries):>6} {elements:>12,}  "
                   f"lr x{groups.layer_decay ** (top - d):.4g}")
  frozen = [leaf for leaf in leaves if leaf.frozen]
  trained = sum(leaf.size for leaf in leaves if not leaf.frozen)
  lines.append(f"  trained: {trained:,} elements; frozen: "
               f"{sum(leaf.size for leaf in frozen):,} in {len(frozen)} leaves.")
  return lines
