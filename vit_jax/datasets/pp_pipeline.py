"""big_vision pp strings built into pipelines: registered ops run per image, then value_range.

`config.pp.train` / `config.pp.eval` may be a pp string such as
`'decode_jpeg_and_inception_crop(224)|flip_lr|randaug(2, 15)|value_range(-1, 1)'` or
`'decode|resize_small(256)|central_crop(224)|value_range(-1, 1)'`: pp_spec.py parses it,
each op is looked up in the registry (pp_registry.py; big_vision's ops are pp_ops.py) and
runs on the image with the element's RNG. A trailing value_range runs on the batch, so
workers pass uint8 images, as for the named recipes. A pipeline is built once per string and
set of modules, and again after any op is registered.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, Optional

import numpy as np

from vit_jax.datasets import image_ops, pp_ops, pp_registry, pp_spec

# (registry generation, spec, modules) -> pipeline; entries of older generations are dropped.
_PIPELINES: dict[Any, "PpPipeline"] = {}


@dataclasses.dataclass(frozen=True)
class PpPipeline:
  """A parsed pp string: image ops (run per element with its RNG), a trailing value_range
  (run on the batch, so elements stay uint8), onehot's depth, the modules of its user ops."""
  spec: str
  ops: tuple[tuple[str, Callable], ...]
  value_range: Optional[pp_ops.ValueRange] = None
  num_classes: Optional[int] = None
  modules: tuple[tuple[str, str], ...] = ()

  def image(self, data: Any, rng: np.random.Generator) -> np.ndarray:
    """The ops on one encoded image (opened lazily, so a resize may decode at a DCT scale)."""
    image = image_ops.open_image(data)
    for text, op in self.ops:
      try:
        image = op(image, rng)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f"pp op {text!r} of {self.spec!r}: {e}") from e
    return pp_ops.as_array(image)

  def values(self, images: np.ndarray) -> np.ndarray:
    """A batch of `image` outputs -> float32 (the trailing value_range, if any)."""
    if self.value_range is not None:
      return self.value_range(images)
    return np.asarray(images, np.float32)


def get(spec: str, modules: Any = ()) -> PpPipeline:
  """The pipeline of a pp string, built once per string (after importing `modules`)."""
  key = (spec, tuple(modules))
  pipe = _PIPELINES.get((pp_registry.generation(),) + key)
  if pipe is None:
    pp_registry.import_modules(modules)  # May register ops (a new generation).
    pipe = _build(spec)
    now = pp_registry.generation()
    for stale in [k for k in _PIPELINES if k[0] != now]:
      del _PIPELINES[stale]
    _PIPELINES[(now,) + key] = pipe
  return pipe


def _build(spec: str) -> PpPipeline:
  """Parses `spec` and calls each op's factory with its arguments (checked first)."""
  ops, depth, modules = [], None, []
  for call in pp_spec.parse(spec):
    factory = pp_registry.get_op(call.name)
    kwargs = call.kwargs_dict
    if call.name in pp_ops.KEY_OPS:
      for k in ("key", "inkey", "outkey"):
        if kwargs.pop(k, "image") not in ("image", None):
          raise ValueError(f"pp op {call.text!r}: {k} must be 'image' (the ops transform the "
                           "image; labels come from the dataset).")
    try:
      inspect.signature(factory).bind(*call.args, **kwargs)
    except TypeError as e:
      raise ValueError(f"pp op {call.text!r}: {e}; it takes {call.name}"
                       f"{inspect.signature(factory)}.") from None
    except ValueError:  # No signature (a builtin or C function): let the call check.
      pass
    try:
      op = factory(*call.args, **kwargs)
    except (TypeError, ValueError) as e:
      raise ValueError(f"pp op {call.text!r}: {e}") from None
    if not pp_registry.is_builtin(factory) and factory.__module__ != "__main__":
      modules.append(pp_registry.module_entry(factory.__module__))
    if isinstance(op, pp_ops.LabelOp):
      depth = op.depth if op.depth is not None else depth
      continue
    if not callable(op):
      raise ValueError(f"pp op {call.text!r}: its factory {pp_registry.where(factory)} "
                       f"returned {type(op).__name__}, not op(image, rng) -> image.")
    ops.append((call.text, op))
  value_range = None
  if ops and isinstance(ops[-1][1], pp_ops.ValueRange):
    value_range = ops.pop()[1]
  return PpPipeline(spec, tuple(ops), value_range, depth, tuple(dict.fromkeys(modules)))
