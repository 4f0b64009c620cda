"""Image-text retrieval metrics (COCO / Flickr30k style): recall@k in both directions.

N images, M captions, caption j describing image `caption_image[j]` (several captions per
image, as COCO's five). Similarity: the dot product of the (unit) embeddings.
  image -> text recall@k: the fraction of images with at least one of their own captions
      among their k most similar captions;
  text -> image recall@k: the fraction of captions whose image is among their k most
      similar images.
Ties rank in index order (a stable sort), so a constant score never counts as a hit by luck
beyond that order. NumPy only: checked against brute force in tests/evaluators.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def _ranks_of_best_match(scores: np.ndarray, matches: np.ndarray) -> np.ndarray:
  """Per row, the 0-based rank (stable, best first) of its best-ranked matching column."""
  order = np.argsort(-scores, axis=1, kind="stable")
  hit = np.take_along_axis(matches, order, axis=1)
  if not hit.any(axis=1).all():
    raise ValueError("every image needs at least one caption and every caption an image.")
  return hit.argmax(axis=1)


def recall_at_k(zimg: Any, ztxt: Any, caption_image: Sequence[int],
                ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """{'img2txt_r@k', 'txt2img_r@k'} for each k in `ks` (module doc)."""
  zimg, ztxt = np.asarray(zimg, np.float64), np.asarray(ztxt, np.float64)
  owner = np.asarray(caption_image, np.int64)
  if owner.shape != (len(ztxt),):
    raise ValueError(f"caption_image names the image of each of the {len(ztxt)} captions; "
                     f"got {owner.shape[0] if owner.ndim else 0} entries.")
  if owner.size and (owner.min() < 0 or owner.max() >= len(zimg)):
    raise ValueError(f"caption_image entries must index the {len(zimg)} images.")
  scores = zimg @ ztxt.T                                   # (N images, M captions)
  matches = owner[None, :] == np.arange(len(zimg))[:, None]
  img_rank = _ranks_of_best_match(scores, matches)
  txt_rank = _ranks_of_best_match(scores.T, matches.T)
  out = {}
  for k in ks:
    out[f"img2txt_r@{k}"] = float(np.mean(img_rank < k))
    out[f"txt2img_r@{k}"] = float(np.mean(txt_rank < k))
  return out
