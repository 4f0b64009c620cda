"""Knowledge distillation from a fixed teacher (DeiT, Touvron et al. 2021): teacher and loss.

Config keys (defaults in configs/base.defaults()):
  distill.path         teacher weights: any location the checkpoint loader reads (a file, gs://,
                       https://, hf://, an AugReg name; checkpoint.candidate_locations); None = off.
  distill.model_name   the teacher's architecture (MODEL_CONFIGS name); None = the student's
                       (model_name with its config.model overrides, no distillation token).
  distill.model        overrides of the teacher's fields on top (as config.model for the student).
  distill.mode         'soft': KL(softmax(t / T) || softmax(s / T)) x T^2 per example (Hinton
                       et al. 2015; summed over classes, mean over the batch; DeiT's code divides
                       the batch sum by batch x classes instead) | 'hard': cross-entropy to the
                       teacher's argmax (DeiT's hard distillation).
  distill.weight       alpha in [0, 1]: loss = (1 - alpha) x task loss + alpha x distillation loss.
  distill.temperature  T > 0 (soft only).
  distill.require_teacher  a run without distill.path is refused (configs/deit.py's
                       *_distilled presets: a distillation token without a teacher is a mistake).
A student without a distillation token: both losses act on its one head (DeiT's "usual
distillation" rows). A student with one (config.model.distilled, models/vit.py): the task
loss acts on the class head and the distillation loss on the distillation head, (1 - alpha)
x CE(cls, labels) + alpha x KD(dist, teacher) (DeiT's ⚗ rows: hard, alpha 0.5; label
smoothing / mixing are in the labels, so they reach the class term only); without a teacher
such a student trains the mean of its two heads (timm's fine-tuning of a distilled model),
and it is evaluated on that mean. The teacher sees the student's (augmented, mixed) batch at
the student's resolution, which must be the one its checkpoint was made for (one clear error
otherwise). Its params are loaded once onto the run's mesh with the same logical sharding
rules, passed to the jitted step as an argument that is not donated, used forward only
(train=False, under stop_gradient), never updated and never checkpointed (a resumed run
reloads them). The student-derived teacher (model_name None) has no distillation token.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vit_jax import checkpoint, sharding
from vit_jax.models import registry, vit
from vit_jax.training import losses, train_state

MODES = ("soft", "hard")


@dataclasses.dataclass
class Teacher:
  """The teacher of a run: module, abstract params with their shardings, and the loss settings."""
  model: nn.Module
  model_name: str
  fields: dict           # the complete model fields (what the loader checks shapes against)
  location: str
  abstract_params: Any   # ShapeDtypeStructs carrying their NamedShardings
  mode: str
  weight: float
  temperature: float

  @property
  def shardings(self) -> Any:
    return jax.tree.map(lambda x: x.sharding, self.abstract_params)


def _fields(config) -> tuple[str, dict]:
  """(name, complete model fields) of the teacher: MODEL_CONFIGS[distill.model_name], or the
  student's architecture (model_name + config.model, without a distillation token: that is
  the student's) when it is None; distill.model on top."""
  name = config.distill.model_name
  if name is None:
    name, base = config.model_name, registry.run_model_config(config).to_dict()
    base.pop("distilled", None)
  elif name in registry.MODEL_CONFIGS:
    base = registry.MODEL_CONFIGS[name].to_dict()
  else:
    raise ValueError(f"config.distill.model_name={name!r} is unknown; valid names: "
                     f"{sorted(registry.MODEL_CONFIGS)}.")
  return name, registry.merge_fields(base, config.distill.model, skip_unset=True)


def from_config(config, mesh, num_classes: int, rules, input_shape: tuple[int, ...]
                ) -> Optional[Teacher]:
  """The run's Teacher (abstract: nothing loaded), or None when config.distill.path is unset."""
  d = config.distill
  if not d.path:
    if d.require_teacher:
      raise ValueError("this config distils through a distillation token "
                       "(config.distill.require_teacher) but names no teacher: pass "
                       "--config.distill.path=TEACHER_WEIGHTS and --config.distill.model_name="
                       "ITS_ARCHITECTURE, or --config.distill.require_teacher=False to train "
                       "without one.")
    return None
  if d.mode not in MODES:
    raise ValueError(f"config.distill.mode={d.mode!r} is unknown; use one of {MODES}.")
  if not 0.0 <= float(d.weight) <= 1.0:
    raise ValueError(f"config.distill.weight={d.weight} must be in [0, 1] (loss = (1 - weight) "
                     "x task + weight x distillation).")
  if not float(d.temperature) > 0.0:
    raise ValueError(f"config.distill.temperature={d.temperature} must be > 0.")
  name, fields = _fields(config)
  model = registry.model_from_fields(fields, num_classes)
  init = lambda: model.init({"params": jax.random.PRNGKey(0)}, jnp.zeros(input_shape, jnp.float32),
                            train=False)["params"]
  params, logical = sharding.param_layout(init)
  shardings = sharding.param_shardings(params, logical, mesh, rules)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          params, shardings)
  return Teacher(model=model, model_name=name, fields=fields, location=str(d.path),
                 abstract_params=abstract, mode=str(d.mode), weight=float(d.weight),
                 temperature=float(d.temperature))


def load_params(teacher: Teacher, resolution: int, log: Optional[Callable[[str], None]] = None
                ) -> Any:
  """The teacher's weights read once (checkpoint.load_from: AugReg copies, fallback) and placed
  on its shardings; an error when they do not fit its architecture at `resolution`."""
  what = f"distillation teacher {teacher.location!r} ({teacher.model_name})"
  try:
    _, (params, report) = checkpoint.load_from(
        teacher.location, lambda uri: checkpoint.load_pretrained(
            pretrained_path=uri, init_params=teacher.abstract_params, model_config=teacher.fields,
            replace_head=False, report=True))
  except ValueError as e:
    raise ValueError(f"{what} does not fit its architecture at the student's {resolution}px "
                     f"input: {e} Set config.distill.model_name / distill.model to the teacher's "
                     "architecture (and classes).") from e
  if report.posemb_grid or report.patch_size or report.pre_logits_dropped:
    old = report.posemb_grid[0] if report.posemb_grid else None
    raise ValueError(f"{what} was made for another input (patch grid {old}, patch size "
                     f"{report.patch_size}, pre_logits dropped: {report.pre_logits_dropped}); the "
                     f"teacher must run at the student's {resolution}px input as it was trained. "
                     "Set --config.pp.crop to the teacher's resolution or use a teacher made for "
                     f"{resolution}px.")
  head = params.get("head", {}).get("kernel") if isinstance(params.get("head"), dict) else None
  if head is not None and not np.any(head):
    raise ValueError(f"{what} has an all-zero head (a pre-training checkpoint without a "
                     "classifier): distil from a teacher fine-tuned on the student's classes.")
  if log is not None:
    for line in report.lines():
      log(line)
  return train_state.place_params(params, teacher.abstract_params)


def logits(teacher: Teacher, params: Any, images: jax.Array) -> jax.Array:
  """The teacher's logits (float32, no gradient): a deterministic forward (train=False)."""
  out = teacher.model.apply({"params": jax.lax.stop_gradient(params)}, images, train=False)
  return jax.lax.stop_gradient(out.astype(jnp.float32))


def loss(student_logits: jax.Array, teacher_logits: jax.Array, mode: str,
         temperature: float = 1.0) -> jax.Array:
  """Per-example distillation loss (float32, (batch,)): 'soft' KL x T^2 or 'hard' CE to argmax."""
  s = student_logits.astype(jnp.float32)
  t = teacher_logits.astype(jnp.float32)
  if mode == "hard":
    return losses.softmax_xent(s, jax.nn.one_hot(jnp.argmax(t, -1), s.shape[-1]))
  log_ps = jax.nn.log_softmax(s / temperature, -1)
  log_pt = jax.nn.log_softmax(t / temperature, -1)
  return jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), -1) * temperature ** 2


def combine(task: jax.Array, distill: jax.Array, weight: float) -> jax.Array:
  """(1 - weight) x task + weight x distill."""
  return (1.0 - weight) * task + weight * distill


def heads(outputs: Any) -> tuple[jax.Array, Optional[jax.Array]]:
  """(class-head logits, distillation-head logits or None) of a student's train outputs: a
  distilled ViT returns the pair (models/vit.py), every other model one array."""
  if isinstance(outputs, (tuple, list)):
    cls_logits, dist_logits = outputs
    return cls_logits, dist_logits
  return outputs, None


def prediction(outputs: Any) -> jax.Array:
  """The logits a student predicts with: its one head, or the mean of the class and
  distillation heads (what the distilled ViT returns at eval)."""
  cls_logits, dist_logits = heads(outputs)
  return cls_logits if dist_logits is None else vit.distilled_prediction(cls_logits, dist_logits)


def objective(outputs: Any, labels: jax.Array, teacher_logits: jax.Array, *, mode: str,
              weight: float, temperature: float = 1.0,
              task_loss: Callable[[jax.Array, jax.Array], jax.Array] = losses.softmax_xent
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(loss, task loss, distillation loss), batch means: task_loss(class head, labels) mixed
  with `loss`(distillation head, teacher) by `weight`; a student with one head gets both."""
  cls_logits, dist_logits = heads(outputs)
  task = task_loss(cls_logits, labels).mean()
  kd = loss(cls_logits if dist_logits is None else dist_logits, teacher_logits, mode,
            temperature).mean()
  return combine(task, kd, weight), task, kd


def compile_forward(teacher: Teacher, batch_images: jax.ShapeDtypeStruct) -> Any:
  """The teacher's forward over one global batch as its own compiled program (its FLOPs are
  part of the train step's; the loop reads them with planning.compiled_stats)."""
  fn = jax.jit(lambda p, x: logits(teacher, p, x))
  return fn.lower(teacher.abstract_params, batch_images).compile()
