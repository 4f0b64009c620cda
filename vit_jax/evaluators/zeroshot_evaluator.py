"""The 'zeroshot' evaluator type: an image-text model (LiT) classifies a dataset it was never
trained on from its class names and prompt templates (zeroshot.py's maths).

Entry keys (beside common.COMMON_KEYS):
  classnames  the class names, in label order (default: the dataset's own -- TFDS label names
              or the folder's class folders -- with '_' read as a space)
  templates   prompt templates with '{}' for the name, or a shipped set by name ('clip_paper':
              CLIP's 80 ImageNet prompts, 'clip_best'; zeroshot.PROMPT_SETS); default
              zeroshot.DEFAULT_TEMPLATES
  vocab       the tokenizer's vocabulary file (a LiT checkpoint's .txt / .model beside it;
              `python -m vit_jax.evaluate` sets it from the weights' location)
  tokenizer, max_len  default: the model's pp.tokenizer_name and pp.max_len
  topk        k of the top-k accuracy (default 5)
Results: top1, top<k>, loss (cross-entropy of the temperature-scaled scores), examples,
classes.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import sharding
from vit_jax.datasets import sources, text
from vit_jax.evaluators import classification, common, registry, zeroshot
from vit_jax.models import axes, lit
from vit_jax.training import losses

TEXT_BATCH = 256  # prompts per compiled text-tower call (the last call is padded)


@registry.register("zeroshot", keys=("classnames", "templates", "vocab", "tokenizer",
                                     "max_len", "topk"))
def run(ctx: common.Context, spec: common.Spec, params: Any) -> dict[str, float]:
  """Zero-shot top-1 / top-k of one dataset (module docstring)."""
  s, model = spec.settings, ctx.setup.model
  if not lit.is_lit(model):
    raise ValueError(f"config.evals.{spec.name or 'zeroshot'} is a zero-shot evaluator, which "
                     "needs an image-text model (a LiT model such as LiT-B16B); this run's "
                     f"model is a {type(model).__name__}. Use a 'classification' or 'fewshot' "
                     "evaluator instead.")
  data = ctx.data_config(spec)
  info = sources.open_source(data, data.eval_split)[1]
  names = list(s.get("classnames") or dataset_classnames(data, info))
  num_classes = info.num_classes
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {data.dataset}, which has {num_classes} "
                     "classes; give one name per class, in label order.")
  topk = int(s.get("topk") or 5)
  tokenizer = make_tokenizer(model, s, ctx.config.pp)
  templates = zeroshot.templates(s.get("templates"))
  zclasses = zeroshot.class_embeddings(text_embedder(ctx, params, tokenizer), names, templates)
  step = ctx.cached(("zeroshot", topk), lambda: make_eval_step(ctx.setup, topk))
  totals = common.classification_pass(lambda p, b: step(p, b, zclasses), params, data,
                                      len(names))
  values = classification.values(totals, topk)
  return {"top1": values["accuracy"], f"top{topk}": values[f"top{topk}_accuracy"],
          "loss": values["loss"], "examples": values["examples"], "classes": float(len(names))}


def dataset_classnames(config, info) -> list[str]:
  """The class names of config.dataset (`info`: its source's info) in label order, '_' as a
  space (e.g. 'sea_lion')."""
  if not info.class_names:
    raise ValueError(f"{config.dataset} does not name its classes; give them in label order "
                     "(the entry's classnames, or --zeroshot_classnames FILE).")
  names = [str(n) for n in info.class_names]
  if all(re.fullmatch(r"n\d{8}", n) for n in names):  # WordNet ids (TFDS imagenet2012)
    names = wordnet_names(names)
  return [n.replace("_", " ") for n in names]


def wordnet_names(ids: Sequence[str]) -> list[str]:
  """The first English name of each WordNet synset id ('n01440764' -> 'tench'), from the
  ImageNet label files shipped in vit_jax/labels/; an unknown id stays as it is."""
  table = {}
  folder = os.path.join(os.path.dirname(os.path.dirname(__file__)), "labels")
  for name in ("imagenet21k.txt", "imagenet1k.txt"):
    with open(os.path.join(folder, name), encoding="utf-8") as f:
      for line in f:
        wnid, _, words = line.rstrip("\n").partition("\t")
        if words:
          table[wnid] = words.split(",")[0].strip()
  return [table.get(i, i) for i in ids]


def make_tokenizer(model: Any, settings: dict, run_pp: Any = None) -> Any:
  """The tokenizer of the entry (vocab, tokenizer, max_len), else of the run's config.pp
  (a training run's pp.vocab), else of the model's pp config."""
  model_pp = dict(getattr(model, "pp", None) or {})  # A LiT model's tokenizer settings.
  run_pp = run_pp if run_pp is not None else {}
  vocab = settings.get("vocab") or _pp_value(run_pp, "vocab")
  if not vocab:
    raise ValueError("a zero-shot evaluator needs the text tower's vocabulary: set the "
                     "entry's vocab (the .txt / .model file published beside a LiT checkpoint), "
                     "or --config.pp.vocab in a training run.")
  return text.model_tokenizer(
      {"tokenizer_name": (settings.get("tokenizer") or _pp_value(run_pp, "tokenizer")
                          or model_pp.get("tokenizer_name")),
       "max_len": (settings.get("max_len") or model_pp.get("max_len") or 16)}, vocab)


def _pp_value(pp: Any, key: str) -> Any:
  """pp[key] of a run's config.pp (a ConfigDict; absent or unset: None)."""
  return pp[key] if key in pp else None


def text_embedder(ctx: common.Context, params: Any, tokenizer: Callable
                  ) -> Callable[[Sequence[str]], np.ndarray]:
  """texts -> (N, D) text-tower embeddings, TEXT_BATCH prompts per compiled call."""
  setup = ctx.setup
  step = ctx.cached(("zeroshot_text",), lambda: jax.jit(
      lambda p, tokens: setup.model.apply({"params": p}, tokens=tokens)[1],
      in_shardings=(setup.param_shardings, sharding.replicated(setup.mesh)),
      out_shardings=sharding.replicated(setup.mesh)))

  def embed(texts: Sequence[str]) -> np.ndarray:
    out = []
    for start in range(0, len(texts), TEXT_BATCH):
      chunk = list(texts[start:start + TEXT_BATCH])
      tokens = np.asarray(tokenizer(chunk), np.int32)
      padded = np.zeros((TEXT_BATCH,) + tokens.shape[1:], np.int32)
      padded[:len(chunk)] = tokens
      out.append(np.asarray(jax.device_get(step(params, padded)))[:len(chunk)])
    return np.concatenate(out)
  return embed


def make_eval_step(setup, topk: int = 5) -> Callable:
  """jit(step)(params, batch, zclasses) -> classification.batch_sums of the zero-shot logits
  plus 'loss_sum', summed over unmasked examples."""
  constrainer = sharding.activation_constrainer(setup.mesh, setup.rules)

  def step(params: Any, batch: dict[str, Any], zclasses: Any) -> dict[str, Any]:
    with axes.activation_sharding(constrainer):
      zimg, _, out = setup.model.apply({"params": params}, images=batch["image"])
    scores = zeroshot.logits(zimg, zclasses, out["t"], xp=jnp)
    mask = batch["mask"].astype(jnp.float32)
    sums = classification.batch_sums(scores, jnp.argmax(batch["label"], -1), mask, topk=topk,
                                     xp=jnp)
    sums["loss_sum"] = jnp.sum(losses.softmax_xent(scores, batch["label"]) * mask)
    return sums

  repl = sharding.replicated(setup.mesh)
  return jax.jit(step, in_shardings=(setup.param_shardings, sharding.batch_sharding(setup.mesh),
                                     repl), out_shardings=repl)
