"""LiT with precomputed image embeddings: a locked image tower embeds every train image once,
and the text tower then trains against those rows (no image decode or image forward per step).

`ensure(config, workdir, setup, params, log)` runs the image tower over config.train_split with
the eval preprocessing (one masked, sharded pass on every process, evaluators' retrieval pass),
writes the (N, D) float32 rows in source order to
`<workdir>/image_embeddings/<split>-<fingerprint>.npy` (each process its own copy when the
workdir is not a local folder: a temporary folder then) and returns that path; a file of the
same image-tower fingerprint (a hash of the tower's parameters, the split and the eval
preprocessing) is reused, so a resumed run does not embed again. Only for an image tower frozen
whole (config.param_groups freezing `img/.*`): then the rows are what the tower would give
at every step, minus the train-time augmentation.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from typing import Any, Callable

import jax
import numpy as np

from vit_jax.datasets import sources
from vit_jax.evaluators import common, retrieval_evaluator
from vit_jax.training.train_state import StateSetup


def check_frozen(setup: StateSetup) -> None:
  """One error unless every image-tower parameter is frozen."""
  frozen = setup.frozen
  img = frozen.get("img") if isinstance(frozen, dict) else None
  if img is None or not all(jax.tree.leaves(img)):
    raise ValueError("config.input.image_embeddings=True embeds the train images once, which "
                     "is exact only for a locked image tower: freeze it with "
                     "--config.param_groups=\"(('img/.*', 'freeze'),)\" (configs/lit.py does).")


def _fingerprint(config, params: Any) -> str:
  digest = hashlib.sha256()
  for leaf in jax.tree.leaves(jax.device_get(params["img"])):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  for value in (config.dataset, config.train_split, config.pp.crop, config.pp.eval,
                config.pp.resize, config.pp.crop_pct):
    digest.update(repr(value).encode())
  return digest.hexdigest()[:16]


def _folder(workdir: str) -> str:
  local = "://" not in str(workdir)
  folder = (os.path.join(str(workdir), "image_embeddings") if local
            else os.path.join(tempfile.gettempdir(), "vit_jax_image_embeddings"))
  os.makedirs(folder, exist_ok=True)
  return folder


def ensure(config, workdir: str, setup: StateSetup, params: Any,
           log: Callable[[str], None]) -> str:
  """The path of the train split's image embeddings (module doc), computed when missing."""
  check_frozen(setup)
  name = str(config.train_split).replace("/", "_").replace("[", "_").replace("]", "")
  path = os.path.join(_folder(workdir), f"{name}-{_fingerprint(config, params)}.npy")
  count = len(sources.open_source(config, config.train_split)[0])
  if os.path.exists(path):
    rows = np.load(path, mmap_mode="r")
    if rows.shape[0] == count:
      log(f"Image embeddings: {rows.shape[0]} x {rows.shape[1]} reused from {path}.")
      return path
  spec = common.Spec("image_embeddings", "retrieval", 0, {})
  data = common.data_config(config, spec, split=config.train_split)
  step = retrieval_evaluator.make_image_step(setup)
  rows = retrieval_evaluator.image_embeddings(step, params, data, count).astype(np.float32)
  partial = f"{path}.{jax.process_index()}.tmp.npy"
  np.save(partial, rows)
  os.replace(partial, path)
  log(f"Image embeddings: embedded the {count} images of {config.train_split!r} once "
      f"({rows.shape[1]} dims, the eval preprocessing) into {path}.")
  return path
