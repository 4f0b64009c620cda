"""Zero-shot classification maths (LiT / CLIP): class embeddings from class names x prompt
templates, and the image-text scores that rank the classes.

A class's embedding is the mean of the unit-normalised text embeddings of its prompts, itself
normalised (prompt ensembling); an image's score for a class is the temperature times the dot
product of the two unit vectors, so the scores are logits of the model's own softmax.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import numpy as np

# One neutral prompt; config.evals entries and --zeroshot_templates give others.
DEFAULT_TEMPLATES = ("a photo of a {}.",)
# Named prompt sets shipped in vit_jax/labels/ (big_vision's names): 'clip_paper' -- the 80
# ImageNet templates of CLIP (Radford et al. 2021) that LiT also reports with, plus the bare
# class name; 'clip_best' -- CLIP's best 7 of them plus the bare name.
PROMPT_SETS = {"clip_paper": "prompts_clip_paper.txt", "clip_best": "prompts_clip_best.txt"}


def templates(value: Any) -> tuple[str, ...]:
  """Prompt templates from a config value: a PROMPT_SETS name, a sequence of templates, or
  None / empty (DEFAULT_TEMPLATES)."""
  if not value:
    return DEFAULT_TEMPLATES
  if isinstance(value, str):
    if value not in PROMPT_SETS:
      raise ValueError(f"prompt templates {value!r}: name one of {sorted(PROMPT_SETS)} or give "
                       "the templates themselves (a list of strings with '{}').")
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "labels", PROMPT_SETS[value])
    with open(path, encoding="utf-8") as f:
      return tuple(line.rstrip("\n") for line in f if line.strip())
  return tuple(str(t) for t in value)


def prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
  """Every template filled with every class name, class-major: C x T texts."""
  if not classnames:
    raise ValueError("zero-shot classification needs class names; pass them (classnames=... "
                     "or --zeroshot_classnames) or use a dataset that names its classes.")
  if not templates:
    raise ValueError("zero-shot classification needs at least one prompt template, e.g. "
                     "'a photo of a {}.'")
  bad = [t for t in templates if "{}" not in t]
  if bad:
    raise ValueError(f"prompt templates {bad} have no '{{}}' where the class name goes; "
                     "write them like 'a photo of a {}.'")
  return [t.format(name) for name in classnames for t in templates]


def normalize(x: Any, axis: int = -1) -> np.ndarray:
  """Unit vectors along `axis` (the 1e-8 of LiT's towers keeps zero vectors finite)."""
  x = np.asarray(x, np.float64)
  return x / (np.linalg.norm(x, axis=axis, keepdims=True) + 1e-8)


def class_embeddings(embed_texts: Callable[[list[str]], Any], classnames: Sequence[str],
                     templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
  """(C, D) float32 unit vectors: per class, the renormalised mean of its prompts' unit text
  embeddings; `embed_texts(list of str) -> (N, D)` is the text tower."""
  texts = prompts(classnames, templates)
  z = normalize(np.asarray(embed_texts(texts)))
  if z.shape[0] != len(texts):
    raise ValueError(f"the text tower gave {z.shape[0]} embeddings for {len(texts)} prompts.")
  z = z.reshape(len(classnames), len(templates), -1).mean(axis=1)
  return normalize(z).astype(np.float32)


def logits(zimg: Any, zclasses: Any, temperature: Any = 1.0, xp: Any = np) -> Any:
  """(N, C) scores: temperature x <image unit vector, class unit vector> (`xp`: numpy or
  jax.numpy, so the compiled step uses the same formula)."""
  zimg = zimg / (xp.linalg.norm(zimg, axis=-1, keepdims=True) + 1e-8)
  return xp.asarray(temperature).reshape(()) * (zimg @ xp.asarray(zclasses).T)


def top_k(scores: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, softmax probabilities) of the k best classes per row, best first."""
  scores = np.asarray(scores, np.float64)
  k = min(int(k), scores.shape[-1])
  idx = np.argsort(-scores, axis=-1, kind="stable")[..., :k]
  e = np.exp(scores - scores.max(-1, keepdims=True))
  probs = e / e.sum(-1, keepdims=True)
  return idx, np.take_along_axis(probs, idx, -1)
