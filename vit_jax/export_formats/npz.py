"""The official vit_models .npz of a run and its architecture sidecar (`--format=npz`).

An exported `model.npz` (checkpoint.save: loadable by checkpoint.load and by any tool that
reads Google's ViT files) has beside it `model.json` (ARCHITECTURE_FORMAT): the complete
model fields, class count and names, input resolution and eval preprocessing, so a loader
(vit_jax.artifacts) rebuilds a modified architecture (e.g. the quickstart's) without --model.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from flax import linen as nn

from vit_jax import checkpoint, exits
from vit_jax.checkpoint import files
from vit_jax.models import factory

ARCHITECTURE_FORMAT = "vit_jax.export/architecture-1"


def sidecar_path(output: str) -> str:
  """The architecture file that goes with an exported .npz: 'model.npz' -> 'model.json'."""
  output = os.fspath(output)
  return (output[:-len(".npz")] if output.endswith(".npz") else output) + ".json"


def architecture(config, step: Optional[int] = None,
                 workdir: Optional[str] = None) -> dict[str, Any]:
  """What a loader needs to rebuild and feed the model of a run config (the sidecar's content)."""
  return json.loads(json.dumps({
      "format": ARCHITECTURE_FORMAT,
      "model_name": config.model_name,
      "model": factory.run_model_config(config).to_dict(),
      "num_classes": int(config.num_classes),
      "class_names": list(config.class_names or ()),
      "resolution": int(config.pp.crop),
      "pp": {"eval": config.pp.eval, "crop": config.pp.crop, "resize": config.pp.resize,
             "crop_pct": config.pp.crop_pct},
      "dataset": str(config.dataset),
      "step": step,
      "workdir": os.path.abspath(workdir) if workdir and "://" not in workdir else workdir,
  }, default=str))


def image_tower_architecture(arch: dict[str, Any]) -> dict[str, Any]:
  """The record of an image-text record's image tower alone, an image model (its head, if
  any, is the projection to out_dim[0]; none: num_classes 0): --format=npz of an image-text
  run, which the classification tools then load."""
  fields = arch["model"]
  out_dim = fields["out_dim"]
  image_dim = out_dim if isinstance(out_dim, int) else out_dim[0]
  image = {k: v for k, v in dict(fields["image"]).items() if k != "num_classes"}
  return {**arch, "model_name": f"{arch['model_name']}:img", "model": image,
          "num_classes": int(image_dim or 0), "class_names": []}


def read_architecture(path: str) -> Optional[dict[str, Any]]:
  """The sidecar of an exported file (`path` is the .npz or the .json), or None if it has none."""
  path = os.fspath(path)
  candidate = path if path.endswith(".json") else sidecar_path(path)
  if not os.path.isfile(candidate):
    return None
  with open(candidate, encoding="utf-8") as f:
    data = json.load(f)
  if data.get("format") != ARCHITECTURE_FORMAT:
    raise exits.UserError(f"{candidate} is not a vit_jax export architecture file (format "
                          f"{data.get('format')!r}, expected {ARCHITECTURE_FORMAT!r}).")
  return data


def model_from_architecture(arch: dict[str, Any]) -> nn.Module:
  """The Flax module an architecture record describes."""
  return factory.model_from_fields(arch["model"], int(arch["num_classes"]))


def write(params: Any, arch: dict[str, Any], output: str) -> tuple[str, str]:
  """Writes `params` as the .npz `output` and `arch` as its sidecar, each atomically; returns
  the two paths."""
  checkpoint.save(params, output)
  text = json.dumps(arch, indent=1)
  files.write_atomic(sidecar_path(output), lambda f: f.write(text.encode()))
  return os.fspath(output), sidecar_path(output)
