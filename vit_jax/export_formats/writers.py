"""Exporting a run: its params (run_state.read_params: nothing else) written in one format.

`export_files` checks the request (format, flag values, an existing output) before any
checkpoint is read, refuses an architecture a format cannot hold, then writes: --format=npz
the official .npz and its sidecar (npz.py; for an image-text run its image tower alone),
--format=big_vision both towers of an image-text run as big_vision's two-tower .npz
(big_vision.py), timm / transformers snapshots with a model card, a jax.export StableHLO
artifact or a TF SavedModel (serving.py); --push_to_hub uploads the written folder (hub.py).
`python -m vit_jax.export` is its command line.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Sequence

import jax

from vit_jax import exits
from vit_jax.export_formats import big_vision, common, hub, npz, serving, timm, transformers
from vit_jax.models import factory
from vit_jax.run import run_state

FORMATS = ("npz", "timm", "transformers", "stablehlo", "savedmodel", "big_vision")
# The formats of image-text (two-tower) runs: both towers, or the image tower alone.
IMAGE_TEXT_FORMATS = ("big_vision", "npz")


def check_request(fmt: str, output: str, overwrite: bool, push_to_hub: Optional[str],
                  savedmodel_input: str, platforms: Sequence[str],
                  savedmodel_version: int = 1) -> None:
  """Bad flags and an existing output (for a SavedModel: its version directory) — one error
  before any checkpoint is read."""
  if fmt not in FORMATS:
    raise exits.UserError(f"--format={fmt!r} is unknown; use one of {', '.join(FORMATS)}.")
  if fmt == "npz":
    for path in (output, npz.sidecar_path(output)):
      if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path!r} already exists; choose another --output or pass "
                              "--overwrite to replace it.")
  elif fmt == "savedmodel":
    serving.check_savedmodel_output(output, savedmodel_version, overwrite)
  elif fmt == "big_vision":
    big_vision.check_output(output, overwrite)
  elif os.path.lexists(output) and not overwrite:
    raise FileExistsError(f"{output!r} already exists; choose another --output or pass "
                          "--overwrite to replace it.")
  if push_to_hub:
    if fmt in ("npz", "big_vision"):
      raise exits.UserError("--push_to_hub uploads an export folder: use it with --format=timm "
                            "or --format=transformers (or stablehlo / savedmodel).")
    hub.check_repo_id(push_to_hub)
  serving.check_input(savedmodel_input)
  serving.check_version(savedmodel_version)
  serving.check_platforms(platforms)


def library(fmt: str):
  """The module that checks and writes a timm / transformers snapshot (StableHLO and
  SavedModel hold any architecture the model factory builds)."""
  return {"timm": timm, "transformers": transformers}[fmt]


def export_files(workdir: str, output: str, step: Optional[int] = None, overwrite: bool = False,
                 *, fmt: str = "npz", params: str = "raw", push_to_hub: Optional[str] = None,
                 savedmodel_input: str = "float", savedmodel_version: int = 1,
                 platforms: Optional[Sequence[str]] = None) -> common.Written:
  """Writes `workdir`'s checkpoint (latest, or `step`) in format `fmt` to `output`; returns
  an export_formats.common.Written (what was written, how to load it, notes, hub URL).

  npz: `output` is the .npz (and its sidecar; an image-text run: its image tower);
  big_vision (image-text runs): the two-tower .npz; the other formats: a directory.
  params: 'raw' or 'ema' (run_state.read_params). platforms: stablehlo / savedmodel lowering
  targets (default serving.DEFAULT_PLATFORMS). savedmodel_version: the TF Serving version
  directory, `output`/<version>/.
  """
  platforms = tuple(platforms or serving.DEFAULT_PLATFORMS)
  check_request(fmt, output, overwrite, push_to_hub, savedmodel_input, platforms,
                savedmodel_version)
  # Refuse what the format cannot hold before restoring.
  model = _image_text_model(workdir, fmt)
  if fmt in ("timm", "transformers"):
    config = run_state.read_config(workdir)
    library(fmt).check(common.Source({}, npz.architecture(config, None, workdir), config))
  weights, config, step = run_state.read_params(workdir, step, params)
  if fmt == "big_vision":
    if jax.process_index() != 0:
      return common.Written(os.fspath(output), fmt)
    big_vision.write_two_tower(weights, model, output, overwrite=overwrite)
    return common.Written(
        os.fspath(output), fmt, (os.path.basename(output),),
        f"big_vision: config.model_name = '{big_vision.TWO_TOWERS}', config.model_init = "
        f"'{output}', config.model = {big_vision.big_vision_config(model)} (or "
        f"vit_jax.checkpoint.load_image_text('{output}'))")
  arch = npz.architecture(config, step, workdir)
  if fmt == "npz":
    if model is not None:  # An image-text run: its image tower, as an image model.
      weights, arch = weights["img"], npz.image_tower_architecture(arch)
    if jax.process_index() == 0:
      npz.write(weights, arch, output)
    return common.Written(os.fspath(output), "npz",
                          (os.path.basename(output), os.path.basename(npz.sidecar_path(output))),
                          f"vit_jax.checkpoint.load('{output}') (or python -m vit_jax.inference "
                          f"--checkpoint {output} IMAGE)")
  source = common.Source(weights, arch, config, step, workdir, params)
  if jax.process_index() != 0:
    return common.Written(os.fspath(output), fmt)
  if fmt in ("timm", "transformers"):
    written = library(fmt).write(source, output, overwrite=overwrite, repo_id=push_to_hub)
  elif fmt == "stablehlo":
    written = serving.write_stablehlo(source, output, overwrite=overwrite, platforms=platforms)
  else:
    written = serving.write_savedmodel(source, output, overwrite=overwrite,
                                       input_kind=savedmodel_input, platforms=platforms,
                                       version=savedmodel_version)
  if push_to_hub:
    url = hub.push(written.path, push_to_hub)
    written = dataclasses.replace(written, notes=written.notes + (f"pushed to {url}",))
  return written


def _image_text_model(workdir: str, fmt: str):
  """The LitModel of an image-text run (None for an image run), when `fmt` can write it; one
  error for --format=big_vision on an image run, another for an image-only format on an
  image-text run."""
  config = run_state.read_config(workdir)
  if not factory.is_image_text_run(config):
    if fmt == "big_vision":
      raise exits.UserError(f"--format=big_vision writes image-text (two-tower) models; the run "
                            f"in {workdir} trains the image model {config.model_name!r}: use "
                            "--format=npz.")
    return None
  if fmt not in IMAGE_TEXT_FORMATS:
    raise exits.UserError(f"--format={fmt} writes image models; the run in {workdir} trains the "
                          f"image-text model {config.model_name!r}: use --format=big_vision (both "
                          "towers) or --format=npz (its image tower alone).")
  model = factory.model_from_run_config(config, int(config.num_classes or 0))
  if fmt == "big_vision":
    big_vision.check(model)
  return model


def export(workdir: str, output: str, step: Optional[int] = None, overwrite: bool = False,
           **options: Any) -> str:
  """Writes the params of `workdir`'s checkpoint to `output` and returns its path: by default
  the .npz with its architecture at npz.sidecar_path(output); `fmt=...` and the other options
  of export_files choose another format.

  An existing `output` is only replaced when `overwrite` is set (then atomically).
  """
  return export_files(workdir, output, step, overwrite, **options).path
