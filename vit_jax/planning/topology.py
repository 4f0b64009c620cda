"""TPU slices by the names users type, as abstract devices the real TPU compiler targets.

Owns the slice geometry of each generation (`GENERATIONS`: TensorCores per chip in the name,
torus dimensions; the per-chip figures come from datasheets.py), the slice-name parser
(`parse`: 'v4-128', 'v5e-16', 'v5litepod-16', 'v5p-256', 'v6e-64' or the raw 'v5p:4x4x8') and
`abstract_devices`, which asks libtpu (`pip install -r requirements-tpu.txt`) for
compile-only devices of a slice, `num_slices` of them joined over the data-centre network.
Nothing here needs a TPU.

Naming: v4 and v5p slice names count TensorCores (2 per chip: v5p-256 is 128 chips); v5e
(v5litepod) and v6e names count chips. JAX runs v4 and v5p chips as one device each
(megacore), so a device below is a chip for every generation.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any

from vit_jax.planning import datasheets

GIB = datasheets.GIB


@dataclasses.dataclass(frozen=True)
class Generation:
  """One TPU generation: how its slices are named and shaped, and its datasheet."""
  name: str                 # 'v5p'
  cores_in_name: int        # TensorCores per chip counted by the slice name (1: chips)
  dims: int                 # torus dimensions of a slice (3: v4/v5p, 2: v5e/v6e)

  @property
  def sheet(self) -> datasheets.Datasheet:
    return datasheets.TPU[self.name]

  @property
  def peak_bf16_flops(self) -> float:
    return self.sheet.peak_bf16_flops

  @property
  def hbm_bytes(self) -> int:
    return self.sheet.hbm_bytes

  @property
  def hbm_bytes_per_s(self) -> float:
    return self.sheet.hbm_bytes_per_s

  @property
  def source(self) -> str:
    return self.sheet.source


GENERATIONS: dict[str, Generation] = {
    "v4": Generation("v4", 2, 3), "v5e": Generation("v5e", 1, 2),
    "v5p": Generation("v5p", 2, 3), "v6e": Generation("v6e", 1, 2),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6lite": "v6e"}
# Chips -> physical slice shape, as Cloud TPU provisions them.
_SHAPES_3D = {4: (2, 2, 1), 8: (2, 2, 2), 16: (2, 2, 4), 32: (2, 4, 4), 64: (4, 4, 4),
              128: (4, 4, 8), 256: (4, 8, 8), 512: (8, 8, 8), 1024: (8, 8, 16),
              2048: (8, 16, 16), 3072: (12, 16, 16), 4096: (16, 16, 16), 6144: (16, 16, 24),
              8192: (16, 16, 32)}
_SHAPES_2D = {1: (1, 1), 4: (2, 2), 8: (2, 4), 16: (4, 4), 32: (4, 8), 64: (8, 8),
              128: (8, 16), 256: (16, 16)}
_NAMED = re.compile(r"^(?P<gen>v\d+[a-z]*)-(?P<count>\d+)$")
_RAW = re.compile(r"^(?P<gen>v\d+[a-z]*):(?P<shape>\d+(?:x\d+){1,2})$")
FORMS = ("v4-128", "v5e-16", "v5litepod-16", "v5p-256", "v6e-64", "v5p:4x4x8", "v5e:4x4")


@dataclasses.dataclass(frozen=True)
class Slice:
  """One TPU slice: its generation, physical shape and chip count."""
  generation: Generation
  shape: tuple[int, ...]

  @property
  def chips(self) -> int:
    return math.prod(self.shape)

  @property
  def topology_name(self) -> str:
    """The name libtpu takes, e.g. 'v5p:4x4x8'."""
    return f"{self.generation.name}:{'x'.join(map(str, self.shape))}"

  @property
  def name(self) -> str:
    """The Cloud TPU accelerator type, e.g. 'v5p-256'."""
    return f"{self.generation.name}-{self.chips * self.generation.cores_in_name}"


def _bad_name(name: str, why: str) -> ValueError:
  return ValueError(f"--topology={name!r}: {why}. Valid forms: {', '.join(FORMS)} (generations "
                    f"{', '.join(GENERATIONS)}; v4 and v5p names count TensorCores, 2 per chip).")


def parse(name: str) -> Slice:
  """The slice named `name` ('v5p-256', 'v5litepod-16', 'v5p:4x4x8', ...); ValueError if none."""
  text = str(name).strip().lower()
  named, raw = _NAMED.match(text), _RAW.match(text)
  match = named or raw
  if not match:
    raise _bad_name(name, "not a TPU slice name")
  gen_name = _ALIASES.get(match.group("gen"), match.group("gen"))
  if gen_name not in GENERATIONS:
    raise _bad_name(name, f"unknown TPU generation {match.group('gen')!r}")
  gen = GENERATIONS[gen_name]
  shapes = _SHAPES_3D if gen.dims == 3 else _SHAPES_2D
  if raw:
    shape = tuple(int(x) for x in raw.group("shape").split("x"))
    if len(shape) != gen.dims:
      raise _bad_name(name, f"{gen_name} slices have {gen.dims} dimensions")
    return Slice(gen, shape)
  count = int(named.group("count"))
  if count % gen.cores_in_name:
    raise _bad_name(name, f"{gen_name} names count TensorCores ({gen.cores_in_name} per chip)")
  chips = count // gen.cores_in_name
  if chips not in shapes:
    sizes = ", ".join(f"{gen_name}-{c * gen.cores_in_name}" for c in sorted(shapes))
    raise _bad_name(name, f"no {gen_name} slice of {chips} chips; sizes: {sizes}")
  return Slice(gen, shapes[chips])


def generation_of(device: Any) -> Generation | None:
  """The Generation of a JAX TPU device (by its device_kind), or None."""
  sheet = datasheets.for_kind(getattr(device, "device_kind", ""))
  return next((gen for gen in GENERATIONS.values() if gen.sheet is sheet), None)


def abstract_devices(slice_: Slice, num_slices: int = 1) -> list[Any]:
  """Compile-only devices of `num_slices` copies of `slice_` (needs libtpu, no TPU).

  Raises RuntimeError saying how to install libtpu when it is missing.
  """
  if num_slices < 1:
    raise ValueError(f"--num_slices={num_slices} must be >= 1.")
  try:
    import libtpu  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise RuntimeError(
        "--topology needs the TPU compiler from PyPI: pip install -r requirements-tpu.txt "
        "(libtpu, ~210 MB download; no TPU needed). vit_jax trains and runs without it.") from None
  # Compile-only use touches no chip: several processes (a test and its subprocesses, two
  # dry runs) may load libtpu at once, which its lockfile would otherwise refuse.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  kwargs: dict[str, Any] = {}
  if num_slices > 1:
    kwargs["num_slices"] = num_slices
  if slice_.generation.name == "v4":
    kwargs["chip_config_name"] = "megacore"  # One device per chip, as JAX runs v4.
  desc = topologies.get_topology_desc(topology_name=slice_.topology_name, platform="tpu",
                                      **kwargs)
  return list(desc.devices)
