"""The 'retrieval' evaluator type: image <-> text retrieval over a caption dataset (COCO /
Flickr30k style, several captions per image), recall@k both ways (retrieval.py's maths).

Every image of the split is embedded by the image tower (one masked, sharded pass, as the
other evaluators), every caption by the text tower; image i's captions are the captions of
example i. Entry keys (beside common.COMMON_KEYS):
  vocab, tokenizer, max_len  the tokenizer (default: the run's config.pp, else the model's pp)
  ks          the k of recall@k (default (1, 5, 10))
Results: img2txt_r@k, txt2img_r@k, images, captions.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np

from vit_jax import sharding
from vit_jax.datasets import captions, sources
from vit_jax.evaluators import common, registry, retrieval, zeroshot_evaluator
from vit_jax.models import axes, lit


@registry.register("retrieval", keys=("vocab", "tokenizer", "max_len", "ks"))
def run(ctx: common.Context, spec: common.Spec, params: Any) -> dict[str, float]:
  """recall@k of one caption split (module docstring)."""
  s, model = spec.settings, ctx.setup.model
  if not lit.is_lit(model):
    raise ValueError(f"config.evals.{spec.name or 'retrieval'} is an image-text retrieval "
                     "evaluator, which needs an image-text model (LiT / SigLIP); this run's "
                     f"model is a {type(model).__name__}.")
  data = ctx.data_config(spec)
  source, info = sources.open_source(data, data.eval_split)
  if not info.captions_key:
    raise ValueError(f"config.evals.{spec.name or 'retrieval'}: {data.dataset} "
                     f"({data.eval_split}) has no captions; retrieval needs a caption dataset "
                     "(use a 'zeroshot' evaluator for a labelled one).")
  texts, owner = [], []
  for i in range(len(source)):
    for caption in captions.element_captions(source[i], info.captions_key):
      texts.append(caption)
      owner.append(i)
  tokenizer = zeroshot_evaluator.make_tokenizer(model, s, ctx.config.pp)
  ztxt = zeroshot_evaluator.text_embedder(ctx, params, tokenizer)(texts)
  step = ctx.cached(("retrieval_images",), lambda: make_image_step(ctx.setup))
  zimg = image_embeddings(step, params, data, len(source))
  ks = tuple(int(k) for k in (s.get("ks") or (1, 5, 10)))
  out = retrieval.recall_at_k(zimg, ztxt, owner, ks)
  out.update(images=float(len(zimg)), captions=float(len(texts)))
  return out


def make_image_step(setup) -> Callable:
  """jit(step)(params, images) -> the image tower's unit embeddings, on the run's sharding."""
  constrainer = sharding.activation_constrainer(setup.mesh, setup.rules)

  def step(params: Any, images: Any) -> Any:
    with axes.activation_sharding(constrainer):
      return setup.model.apply({"params": params}, images=images)[0]

  return jax.jit(step, in_shardings=(setup.param_shardings,
                                     sharding.batch_sharding(setup.mesh)))


def image_embeddings(step: Callable, params: Any, config, count: int) -> np.ndarray:
  """(count, D) image embeddings of config.eval_split in example order, on any number of
  processes (common.extract_features: padding removed, every process's rows gathered)."""
  rows, _ = common.extract_features(step, params, config)
  if len(rows) != count:
    raise AssertionError("the eval pass did not cover every image exactly once")
  return rows
