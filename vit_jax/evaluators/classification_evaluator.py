"""The 'classification' evaluator type: top-1, top-k, loss (ReaL on label sets, per class).

Entry keys (beside common.COMMON_KEYS): topk (k of the top-k accuracy, default 5),
per_class (also per-class top-1 accuracy, default False). Named results: top1, top<k>, loss,
examples (real, real_examples for label sets; class_<i> with per_class). The default
evaluator (no config.evals; name '') keeps the historical names: accuracy, loss,
top5_accuracy, examples (real_accuracy, real_examples). The sums of each batch are
classification.batch_sums, in the compiled step of make_eval_step.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from vit_jax import sharding
from vit_jax.evaluators import classification, common, registry
from vit_jax.training import losses


@registry.register("classification", keys=("topk", "per_class"))
def run(ctx: common.Context, spec: common.Spec, params: Any) -> dict[str, float]:
  """Results of one classification evaluator (module docstring)."""
  topk, per_class = int(spec.settings.get("topk") or 5), bool(spec.settings.get("per_class"))
  step = ctx.cached(("classification", topk, per_class),
                    lambda: make_eval_step(ctx.setup, topk, per_class))
  totals = common.classification_pass(step, params, ctx.data_config(spec), ctx.num_classes)
  values = classification.values(totals, topk)
  if not spec.name:
    return values
  named = {"top1": values["accuracy"], f"top{topk}": values[f"top{topk}_accuracy"],
           "loss": values["loss"], "examples": values["examples"]}
  if "real_accuracy" in values:
    named.update(real=values["real_accuracy"], real_examples=values["real_examples"])
  if per_class:
    named.update({f"class_{i}": a for i, a in classification.per_class_values(totals).items()})
  return named


def make_eval_step(setup, topk: int = 5, per_class: bool = False) -> Callable:
  """jit(eval_step)(params, batch) -> classification.batch_sums of the batch's logits plus
  'loss_sum' (softmax cross-entropy, training.losses), summed over unmasked examples."""

  logits_of = common.logits_fn(setup)

  def eval_step(params: Any, batch: dict[str, Any]) -> dict[str, Any]:
    logits = logits_of(params, batch["image"])
    mask = batch["mask"].astype(jnp.float32)
    out = classification.batch_sums(logits, jnp.argmax(batch["label"], -1), mask, topk=topk,
                                    per_class=per_class, real=batch.get("real"), xp=jnp)
    out["loss_sum"] = jnp.sum(losses.softmax_xent(logits, batch["label"]) * mask)
    return out

  return jax.jit(eval_step, in_shardings=(setup.param_shardings,
                                          sharding.batch_sharding(setup.mesh)),
                 out_shardings=sharding.replicated(setup.mesh))
