"""What every export format shares: the run being exported, what a format wrote, the run's
eval preprocessing in the terms other libraries use, and the refusal of an architecture.

A `Source` is built by writers.export_files from `run_state.read_params` (the one place
exported params come from) and `npz.architecture` (the sidecar record: model fields, classes,
resolution, `pp`), so a format reads the same facts the .npz sidecar records.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from vit_jax import exits

# Our models take RGB images in [-1, 1]: pixels / 255 normalised with mean 0.5, std 0.5.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Source:
  """A run's params (host numpy, the run's own tree layout) and its architecture record."""
  params: Mapping[str, Any]
  arch: Mapping[str, Any]  # npz.architecture(config, step, workdir)
  config: Any = None       # the run config, when there is one (evaluators for the model card)
  step: Optional[int] = None
  workdir: Optional[str] = None
  params_kind: str = "raw"  # 'raw' or 'ema' (run_state.read_params)

  @property
  def fields(self) -> dict[str, Any]:
    """The complete model fields (VisionTransformer / MlpMixer keyword arguments)."""
    return dict(self.arch["model"])

  @property
  def is_mixer(self) -> bool:
    return "num_blocks" in self.arch["model"]

  @property
  def num_classes(self) -> int:
    return int(self.arch["num_classes"] or 0)

  @property
  def resolution(self) -> int:
    return int(self.arch["resolution"])

  @property
  def class_names(self) -> list[str]:
    return [str(n) for n in self.arch.get("class_names") or ()]

  @property
  def model_name(self) -> str:
    return str(self.arch.get("model_name") or self.arch["model"].get("model_name") or "model")

  def flat_params(self) -> dict[str, np.ndarray]:
    """Canonical per-layer flat tree ('Transformer/encoderblock_{i}/...'), float32."""
    from vit_jax import checkpoint, param_tree  # pylint: disable=g-import-not-at-top
    flat = param_tree.flat_view(checkpoint.unstack_layers(dict(self.params)))
    return {k: np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
            else np.asarray(v) for k, v in flat.items()}


@dataclasses.dataclass(frozen=True)
class Written:
  """What an export wrote: its path, the files in it, one line on loading it, notes."""
  path: str
  format: str
  files: tuple[str, ...] = ()
  load: str = ""
  notes: tuple[str, ...] = ()


def patch_size(fields: Mapping[str, Any]) -> tuple[int, int]:
  size = fields["patches"]["size"]
  return (int(size[0]), int(size[1]))


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """The run's eval preprocessing (datasets.preprocess.eval_image), in other libraries' terms.

  mode 'resize': squash to crop x crop; 'resize_crop': squash to resize x resize, central
  crop; 'resize_small': shorter side to resize, central crop. crop_pct = crop / resize,
  chosen so that timm's floor(crop / crop_pct) is `resize` again (1.0 for 'resize').
  """
  mode: str
  crop: int
  resize: int
  crop_pct: float
  interpolation: str = "bilinear"  # Pillow, antialiased when downscaling
  mean: tuple[float, ...] = MEAN
  std: tuple[float, ...] = STD

  @property
  def timm_crop_mode(self) -> str:
    """timm's crop_mode: 'squash' resizes both sides, 'center' the shorter one."""
    return "center" if self.mode == "resize_small" else "squash"

  def describe(self) -> str:
    """One sentence for people."""
    scale = ("pixel values scaled to [-1, 1] (x / 127.5 - 1, i.e. mean 0.5 and std 0.5 of "
             "[0, 1] values)")
    if self.mode == "resize":
      how = f"resized to {self.crop}x{self.crop} (aspect ratio not kept)"
    elif self.mode == "resize_crop":
      how = (f"resized to {self.resize}x{self.resize} (aspect ratio not kept), then the central "
             f"{self.crop}x{self.crop} crop")
    else:
      how = (f"shorter side resized to {self.resize} (aspect ratio kept), then the central "
             f"{self.crop}x{self.crop} crop")
    return f"RGB images {how}, {self.interpolation} with antialiasing, {scale}."


def preprocessing(arch: Mapping[str, Any]) -> Preprocessing:
  """The eval preprocessing an architecture record names (its `pp`: eval, crop, resize,
  crop_pct), with the resize the input pipeline resolves (preprocess.options_from_config)."""
  record = arch["pp"]  # npz.architecture writes all four keys.
  mode, crop, given_pct = str(record["eval"]), int(record["crop"]), float(record["crop_pct"] or 0)
  if mode == "resize":
    return Preprocessing(mode, crop, crop, 1.0)
  from vit_jax.datasets import preprocess  # pylint: disable=g-import-not-at-top  (PIL, no TF)
  resize = preprocess.resolve_resize(crop, record["resize"], given_pct)
  if given_pct:
    return Preprocessing(mode, crop, resize, given_pct)
  pct = round(crop / resize, 6)
  if math.floor(crop / pct) != resize:  # Rounding put it one pixel off: aim at the middle.
    pct = crop / (resize + 0.5)
  return Preprocessing(mode, crop, resize, pct)


def refusal(fmt: str, reasons: Sequence[str], alternative: str) -> exits.UserError:
  """The one error for an architecture `fmt` cannot represent: what, why, what instead."""
  return exits.UserError(f"--format={fmt} cannot represent this model: {'; '.join(reasons)}. "
                         f"Use {alternative} instead; nothing was written.")


def write_snapshot(output: str, state: Mapping[str, np.ndarray], jsons: Mapping[str, Any],
                   card: str, overwrite: bool) -> tuple[str, ...]:
  """Writes a PyTorch-library snapshot folder atomically: model.safetensors (`state`), each
  `jsons` entry as <name> and the model card README.md; returns the file names written."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top

  from vit_jax.checkpoint import files  # pylint: disable=g-import-not-at-top

  def fill(directory: str) -> None:
    from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
    safetensors_numpy.save_file(dict(state), os.path.join(directory, "model.safetensors"),
                                metadata={"format": "pt"})
    for name, content in jsons.items():
      with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
        json.dump(content, f, indent=2)
    with open(os.path.join(directory, "README.md"), "w", encoding="utf-8") as f:
      f.write(card)
  files.write_dir_atomic(output, fill, overwrite=overwrite)
  return ("model.safetensors", *jsons, "README.md")
