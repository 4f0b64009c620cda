"""Evaluator types by name, so a config can use one defined in any module (as big_vision's).

An evaluator type is a function `run(ctx, spec, params) -> {metric: value}` registered with
`@register(name, keys=(...))`: `ctx` is the run's common.Context (config, setup, compiled
steps, data), `spec` the config.evals entry (common.Spec; its settings are the entry's keys),
`keys` the entry keys it reads beyond common.COMMON_KEYS. The runner names the results
'<entry name>/<metric>'. Ours register themselves in classification_evaluator.py,
fewshot_evaluator.py and zeroshot_evaluator.py. A user's type lives in their own module:
either the config file imports it (registration runs at import), or the entry's type is the
module's dotted path ('my_pkg.my_eval'): `get` imports that module, which registers the type
under that name or registers exactly one type:

  # my_pkg/my_eval.py
  from vit_jax.evaluators import common, registry

  @registry.register("my_pkg.my_eval", keys=("temperature",))
  def run(ctx, spec, params):
    step = ctx.logits_step()                        # compiled once per run
    for batch in common.batches(params, ctx.data_config(spec)):
      ...                                           # batch['image'], ['label'], ['mask']
    return {"confidence": 0.5}                      # logged as '<entry name>/confidence'

  # the config: c.evals = {"conf": dict(type="my_pkg.my_eval", temperature=2.0, every=0)}
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

HOW_TO_REGISTER = ("register one with @vit_jax.evaluators.registry.register('NAME', keys=(...)) "
                   "on run(ctx, spec, params) -> {metric: value} in your own module, imported "
                   "by your config file, or set the type to that module's dotted path "
                   "('my_pkg.my_eval')")


@dataclasses.dataclass(frozen=True)
class EvaluatorType:
  """A registered evaluator type: its name, run function and the entry keys it reads."""
  name: str
  run: Callable
  keys: frozenset


_TYPES: dict[str, EvaluatorType] = {}


def register(name: str, keys: tuple = ()) -> Callable[[Callable], Callable]:
  """Decorator: registers `run(ctx, spec, params)` as evaluator type `name` reading `keys`;
  re-registering the same function (its module imported again) is allowed."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"an evaluator type name must be a non-empty string, not {name!r}.")

  def decorator(run: Callable) -> Callable:
    old = _TYPES.get(name)
    if old is not None and _where(old.run) != _where(run):
      raise ValueError(f"evaluator type {name!r} is already registered by {_where(old.run)}; "
                       f"register {_where(run)} under another name.")
    _TYPES[name] = EvaluatorType(name, run, frozenset(str(k) for k in keys))
    return run
  return decorator


def _where(fn: Callable) -> str:
  return f"{fn.__module__}.{fn.__qualname__}"


def names() -> tuple[str, ...]:
  """The registered evaluator type names, sorted."""
  return tuple(sorted(_TYPES))


class UnknownTypeError(ValueError):
  """No evaluator type of that name; `reason` is the message without its subject."""

  def __init__(self, name: object, reason: str):
    super().__init__(f"evaluator type {name!r} {reason}")
    self.reason = reason


def get(name: str) -> EvaluatorType:
  """The type registered as `name`, importing `name` as a module when it is a dotted path;
  UnknownTypeError ('... is unknown; use one of [...] or register one ...') otherwise."""
  if isinstance(name, str) and name in _TYPES:
    return _TYPES[name]
  if isinstance(name, str) and "." in name:
    try:
      module = importlib.import_module(name)
    except ModuleNotFoundError as e:
      if not e.name or not (name == e.name or name.startswith(f"{e.name}.")):
        raise  # The module exists; something it imports does not.
      raise UnknownTypeError(name, f"is unknown and not an importable module ({e}); use one of "
                                   f"{list(names())} or {HOW_TO_REGISTER}.") from None
    if name in _TYPES:
      return _TYPES[name]
    own = [t for t in _TYPES.values() if t.run.__module__ == module.__name__]
    if len({t.run for t in own}) == 1:
      _TYPES[name] = dataclasses.replace(own[0], name=name)
      return _TYPES[name]
    raise UnknownTypeError(name, f"names a module that registers {len(own)} evaluator types "
                                 f"({sorted(t.name for t in own)}); it must register exactly "
                                 "one, or one under its own dotted name.")
  raise UnknownTypeError(name, f"is unknown; use one of {list(names())} or {HOW_TO_REGISTER}.")
