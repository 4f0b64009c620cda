"""The pp-op registry: the names pp strings may use, and the modules that registered them.

It starts with big_vision's ops (pp_ops.py). Register an op in your own module (imported by
your config file, or named in config.pp.modules) without editing ours:

  from vit_jax.datasets import pp_registry

  @pp_registry.register_op("grey")
  def grey(weight=1.0):           # the pp string's arguments: 'decode|grey(0.5)|...'
    def op(image, rng):           # PIL image or ndarray (H, W, C) -> either
      ...
    return op

Data worker processes are spawned, so they start with an empty registry of user ops: the
modules of the ops a pp string uses (and those of config.pp.modules) are recorded as
(module, file) pairs in PreprocessOptions.pp_modules, and `import_modules` imports them
there before the string is built (pp_pipeline.py).
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any, Callable

from vit_jax.datasets import pp_ops, pp_spec

_OPS: dict[str, Callable[..., Callable]] = dict(pp_ops.OPS)
_GENERATION = [0]  # Bumped by every registration, so cached pipelines are rebuilt.
HOW_TO_REGISTER = ("register one in your own module with @vit_jax.datasets.pp_registry."
                   "register_op('NAME') on a function of the op's arguments that returns "
                   "op(image, rng) -> image, imported by your config file or named in "
                   "config.pp.modules")


def register_op(name: str) -> Callable[[Callable], Callable]:
  """Decorator: registers a pp op factory (its pp-string arguments -> op(image, rng) -> image)
  under `name`; re-registering the same function (a module imported again) is allowed."""
  if not pp_spec.is_op_name(name):
    raise ValueError(f"pp op name {name!r} must be a Python identifier (pp strings name it).")

  def decorator(factory: Callable) -> Callable:
    old = _OPS.get(name)
    if old is not None and where(old) != where(factory):
      raise ValueError(f"pp op {name!r} is already registered by {where(old)}; register "
                       f"{where(factory)} under another name.")
    _OPS[name] = factory
    _GENERATION[0] += 1
    return factory
  return decorator


def where(fn: Callable) -> str:
  """A factory's dotted module.qualname, as error messages name it."""
  return f"{fn.__module__}.{fn.__qualname__}"


def generation() -> int:
  """How many registrations there have been (a pipeline built before one may be stale)."""
  return _GENERATION[0]


def op_names() -> tuple[str, ...]:
  """The registered pp op names, sorted."""
  return tuple(sorted(_OPS))


def get_op(name: str) -> Callable[..., Callable]:
  """The factory registered as `name`; one clear error listing the registered ops otherwise."""
  try:
    return _OPS[name]
  except KeyError:
    raise ValueError(f"pp op {name!r} is unknown; registered ops: {', '.join(op_names())}; "
                     f"{HOW_TO_REGISTER}.") from None


def is_builtin(factory: Callable) -> bool:
  """Whether `factory` is one of ours (pp_ops.py), which every worker has without imports."""
  return factory.__module__ == pp_ops.__name__


def config_modules(values: Any) -> tuple[tuple[str, str], ...]:
  """config.pp.modules (dotted module names or .py files) as (module, file) pairs, imported."""
  out = []
  for value in values or ():
    value = str(value)
    if value.endswith(".py"):
      stem = "".join(ch if ch.isalnum() else "_" for ch in value.rpartition("/")[2][:-3])
      out.append((f"vit_jax_pp_{stem}", value))
    else:
      out.append((value, ""))
  import_modules(out)
  return tuple(out)


def import_modules(modules: Any) -> None:
  """Imports (module, file) pairs not imported yet: by name, else from the file when given."""
  for name, path in modules:
    if name in sys.modules:
      continue
    try:
      importlib.import_module(name)
      continue
    except ModuleNotFoundError as e:
      if not path or not (e.name == name or name.startswith(f"{e.name}.")):
        raise ValueError(f"cannot import the pp module {name!r} ({e}); check config.pp.modules "
                         "and that the module is on the Python path.") from e
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
      raise ValueError(f"cannot import the pp module {name!r} from {path!r}.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
      spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[name]
      raise


def module_entry(name: str) -> tuple[str, str]:
  """The (module, file) pair that lets a spawned worker import module `name`."""
  return name, str(getattr(sys.modules.get(name), "__file__", None) or "")
