"""FlexiViT training (Beyer et al. 2023): one model trained at many patch sizes.

config.flexi.patch_sizes (e.g. (48, 40, 30, 24, 20, 16, 15, 12, 10, 8) at 240 px) are drawn
per step with config.flexi.probs (default uniform); the model keeps one patch-embedding
kernel (config.model.patches.size) and one position-embedding grid (config.flexi.posemb_grid,
default crop // base patch), resized on the fly to the step's patch size and grid
(models/vit.py: the PI-resize and the loader's interpolation). The data batch does not change
(every patch size must divide config.pp.crop); each patch size is its own compiled step,
compiled on first use (at most len(patch_sizes) of them). The draw of step i is a function of
(config.seed, i) only, so a resumed run draws the same patch sizes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np


def patch_sizes(config) -> tuple[int, ...]:
  """config.flexi.patch_sizes, checked against the crop; () when FlexiViT training is off."""
  sizes = tuple(int(p) for p in (config.flexi.patch_sizes or ()))
  crop = int(config.pp.crop)
  bad = [p for p in sizes if p <= 0 or crop % p]
  if bad:
    raise ValueError(f"config.flexi.patch_sizes {bad} do not divide the crop {crop}: every "
                     "patch size must tile the image (FlexiViT trains at 240 px with 48, 40, 30, "
                     "24, 20, 16, 15, 12, 10, 8).")
  return sizes


def probabilities(config) -> np.ndarray:
  """config.flexi.probs normalised (uniform when unset); one error for a bad length or sign."""
  sizes = patch_sizes(config)
  probs = np.asarray(config.flexi.probs or [1.0] * len(sizes), np.float64)
  if probs.shape != (len(sizes),) or np.any(probs < 0) or not probs.sum() > 0:
    raise ValueError(f"config.flexi.probs={tuple(config.flexi.probs)} must give one weight >= 0 "
                     f"per patch size of config.flexi.patch_sizes={sizes} (not all 0).")
  return probs / probs.sum()


def patch_size_at(config, step: int) -> int:
  """The patch size of train step `step` (0-based): a draw keyed by (seed, step) only."""
  sizes = patch_sizes(config)
  rng = np.random.default_rng(np.random.SeedSequence([int(config.seed), 0xF1E, int(step)]))
  return int(sizes[rng.choice(len(sizes), p=probabilities(config))])


def at_patch_size(setup: Any, patch: Optional[int]) -> Any:
  """`setup` whose model runs at `patch` x `patch` (None: its base patch size); the state, its
  shardings and the optimizer are the same objects."""
  if patch is None:
    return setup
  model = setup.model
  if not hasattr(model, "flexi_patch") or (model.posemb == "learn" and model.posemb_grid is None):
    raise ValueError(f"patch size {patch}: only a FlexiViT model (a ViT trained with "
                     "config.flexi.patch_sizes, whose position embedding has a fixed grid) runs "
                     "at another patch size; load other weights at a new patch size with "
                     "--config.resize_patch_embedding instead.")
  return dataclasses.replace(setup, model=model.clone(flexi_patch=(int(patch),) * 2))
