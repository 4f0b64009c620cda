"""The jitted train and eval steps (explicit in/out shardings, buffer donation).

Train step: softmax cross-entropy on the (already smoothed / mixed) one-hot labels (or
config.loss; mixed with a teacher's distillation loss, distill.py; an image-text model's
contrastive loss over the global batch of images and tokens, contrastive.py), gradients accumulated
over `accum_steps` equal micro-batches with lax.scan (the mean equals the full-batch
gradient), then the optax chain (global-norm clipping, SGD-momentum or AdamW, under the
param groups of param_groups.py) and the EMA of the params (ema.py). Dropout keys are derived
from the state's RNG and the step number only, so a resumed run draws exactly the same random
numbers.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from vit_jax import batching, sharding
from vit_jax.batching import check_accum_steps  # noqa: F401  (re-export: the notebook calls it here)
from vit_jax.models import axes, lit, packed
from vit_jax.models.fields import patch_size
from vit_jax.training import contrastive, distill, ema, losses, param_groups
from vit_jax.training.train_state import StateSetup, TrainState

# Per-example softmax cross-entropy on one-hot / soft labels: the eval loss (losses.py's home).
cross_entropy = losses.softmax_xent


def _split_micro(x: jax.Array, accum_steps: int, mesh) -> jax.Array:
  """(B, ...) → (accum, B/accum, ...); micro-batch i takes every accum-th example, so each
  device keeps its own rows (no resharding) and every micro-batch is spread over all devices."""
  micro = x.shape[0] // accum_steps
  x = x.reshape((micro, accum_steps) + x.shape[1:]).swapaxes(0, 1)
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))


def make_contrastive_loss_and_grad(setup: StateSetup, accum_steps: int, loss: str) -> Callable:
  """f(params, batch, rng) -> (loss, aux, grads) of an image-text model on {'image', 'tokens'}:
  the contrastive loss `loss` over the whole global batch (contrastive.get), aux = the
  temperature 't', the bias 'b' (SigLIP) and the in-batch image->text top-1 'accuracy'."""
  if accum_steps != 1:
    raise ValueError(f"config.accum_steps={accum_steps}: a contrastive loss scores every image "
                     "against every text of the batch, so micro-batches would change the loss "
                     "(not only its memory); set --config.accum_steps=1 and lower "
                     "--config.batch or raise the device count, or use remat "
                     "(--config.model.remat=True).")
  model = setup.model
  constrainer = sharding.activation_constrainer(setup.mesh, setup.rules)
  objective = contrastive.get(loss, setup.mesh)

  def loss_fn(params, batch, rng):
    params = param_groups.stop_frozen(params, setup.frozen)
    with axes.activation_sharding(constrainer):
      # Precomputed image embeddings (LiT, run/image_embeddings.py): the text tower only.
      zimg, ztxt, out = model.apply({"params": params}, images=batch.get("image"),
                                    tokens=batch["tokens"], train=True, rngs={"dropout": rng})
    if zimg is None:
      zimg = batch["zimg"]
    b = out.get("b", jnp.zeros((1,), jnp.float32))
    value = objective(zimg, ztxt, out["t"], b)
    aux = {"accuracy": contrastive.in_batch_accuracy(zimg, ztxt, setup.mesh),
           "t": jnp.reshape(out["t"], ()), "b": jnp.reshape(b, ())}
    return value, aux

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def loss_and_grad(params, batch, rng, teacher_params=None):
    del teacher_params
    (value, aux), grads = grad_fn(params, batch, rng)
    return value, aux, grads

  return loss_and_grad


def make_loss_and_grad(setup: StateSetup, accum_steps: int, loss: str = "softmax_xent",
                       teacher: Optional[distill.Teacher] = None) -> Callable:
  """Returns f(params, batch, rng[, teacher_params]) -> (loss, aux, grads) averaged over
  micro-batches, aux = {'accuracy'} (+ 'task_loss', 'distill_loss' with a teacher); `loss`
  names the per-example task loss (vit_jax/training/losses.py, config.loss). Frozen parameters
  (param_groups) get no gradient."""
  model = setup.model
  constrainer = sharding.activation_constrainer(setup.mesh, setup.rules)
  per_example_loss = losses.get(loss)

  def loss_fn(params, images, labels, rng, teacher_params=None):
    params = param_groups.stop_frozen(params, setup.frozen)
    images = jax.tree.map(batching.float_values, images)  # the trainer's uint8 batches
    with axes.activation_sharding(constrainer):
      outputs = model.apply({"params": params}, images, train=True, rngs={"dropout": rng})
    logits = distill.prediction(outputs)  # A distilled ViT's two heads: their mean.
    aux = {"accuracy": jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(labels, -1))}
    if teacher is None:
      return per_example_loss(logits, labels).mean(), aux
    with axes.activation_sharding(constrainer):
      teacher_logits = distill.logits(teacher, teacher_params, images)
    loss, task, kd = distill.objective(outputs, labels, teacher_logits, mode=teacher.mode,
                                       weight=teacher.weight, temperature=teacher.temperature,
                                       task_loss=per_example_loss)
    aux.update(task_loss=task, distill_loss=kd)
    return loss, aux

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def loss_and_grad(params, batch, rng, teacher_params=None):
    if accum_steps == 1:
      (loss, aux), grads = grad_fn(params, batch["image"], batch["label"], rng, teacher_params)
      return loss, aux, grads
    images = jax.tree.map(lambda x: _split_micro(x, accum_steps, setup.mesh), batch["image"])
    labels = _split_micro(batch["label"], accum_steps, setup.mesh)

    def body(carry, xs):
      i, img, lab = xs
      (loss, aux), grads = grad_fn(params, img, lab, jax.random.fold_in(rng, i), teacher_params)
      return jax.tree.map(jnp.add, carry, (loss, aux, grads)), None

    aux_keys = ("accuracy",) + (("task_loss", "distill_loss") if teacher is not None else ())
    zeros = (jnp.zeros(()), {k: jnp.zeros(()) for k in aux_keys},
             jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum_steps), images, labels))
    return jax.tree.map(lambda t: t / accum_steps, total)

  return loss_and_grad


def make_train_step(setup: StateSetup, accum_steps: int = 1,
                    loss: str = "softmax_xent", teacher: Optional[distill.Teacher] = None
                    ) -> Callable:
  """jit(train_step)(state, batch) -> (state, metrics); donates the state's buffers. With a
  teacher: jit(train_step)(state, batch, teacher_params), the teacher's params not donated.
  After the optimizer update frozen leaves keep their bits and the EMA (setup.ema) moves."""
  if lit.is_lit(setup.model):
    if teacher is not None:
      raise ValueError("config.distill trains an image classifier from a teacher's logits; an "
                       "image-text model has no logits to distil. Unset config.distill.path.")
    loss_and_grad = make_contrastive_loss_and_grad(setup, accum_steps, loss)
  else:
    loss_and_grad = make_loss_and_grad(setup, accum_steps, loss, teacher)

  def train_step(state: TrainState, batch: dict[str, jax.Array], teacher_params=None):
    step_rng = jax.random.fold_in(state.rng, state.step)
    loss, aux, grads = loss_and_grad(state.params, batch, step_rng, teacher_params)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    params = param_groups.keep_frozen(setup.frozen, state.params, params)
    metrics = {"loss": loss, **aux, "grad_norm": optax.global_norm(grads),
               "lr": jnp.asarray(setup.schedule(state.step), jnp.float32)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    if setup.ema is not None:
      new_state = new_state.replace(
          ema_params=ema.update(setup.ema, state.ema_params, params, state.step))
    return new_state, metrics

  batch_shard = sharding.batch_sharding(setup.mesh)
  repl = sharding.replicated(setup.mesh)
  in_shardings = (setup.state_shardings, batch_shard)
  if teacher is not None:
    in_shardings += (teacher.shardings,)
  return jax.jit(train_step, in_shardings=in_shardings,
                 out_shardings=(setup.state_shardings, repl), donate_argnums=(0,))


def make_feature_step(setup: StateSetup) -> Callable:
  """jit(feature_step)(params, images) -> the model's pre-logits (the pooled representation,
  after pre_logits when there is one): the model without its head, on the run's sharding.
  `params` may include the head; it is not used."""
  model = setup.model.clone(num_classes=None)
  constrainer = sharding.activation_constrainer(setup.mesh, setup.rules)

  def feature_step(params: Any, images: jax.Array):
    with axes.activation_sharding(constrainer):
      heads = ("head", "head_dist")  # head_dist: DeiT's distillation head.
      out = model.apply({"params": {k: v for k, v in params.items() if k not in heads}},
                        images, train=False)
    return one_image_per_sequence(images, out)

  return jax.jit(feature_step)


def one_image_per_sequence(images: Any, out: jax.Array) -> jax.Array:
  """A model's (B, 1, ...) output of packed sequences of one image each (packed evaluation,
  datasets/naflex.py) as (B, ...), the rows of an unpacked batch; other outputs as they are."""
  if not packed.is_packed(images):
    return out
  if out.shape[1] != 1:
    raise ValueError(f"evaluation reads one image per packed sequence; these hold "
                     f"{out.shape[1]} image slots.")
  return out[:, 0]


def batch_keys(model: Any, config: Any = None) -> tuple[str, ...]:
  """The keys of a train batch for `model`: images with labels, or with tokens (image-text;
  precomputed image embeddings 'zimg' instead of images with config.input.image_embeddings)."""
  if not lit.is_lit(model):
    return ("image", "label")
  if config is not None and config.input.image_embeddings:
    return ("zimg", "tokens")
  return ("image", "tokens")


def image_embedding_dim(model: Any, crop: int) -> int:
  """The width of an image-text model's image embedding (its image projection, or its pooled
  image features), from an abstract forward."""
  zimg = jax.eval_shape(lambda: model.init_with_output(
      jax.random.PRNGKey(0), images=jnp.zeros((1, crop, crop, 3)))[0][0])
  return int(zimg.shape[-1])


def abstract_batch(config, num_classes: int, mesh, model: Any = None
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """The global train batch the trainer feeds, as ShapeDtypeStructs on the batch sharding
  (nothing allocated): uint8 images where batching.uint8_train_images(config.pp) holds; for an
  image-text `model` {'image' (or 'zimg'), 'tokens' (batch, its pp max_len) int32}."""
  crop = int(config.pp.crop)
  bsh = sharding.batch_sharding(mesh)
  if batching.packed_run(config):  # packed sequences (datasets/naflex.py)
    patch = config.naflex.patch_size or (patch_size(model.patches)[0] if model else 0)
    shapes = batching.packed_batch_shapes(config, int(config.batch), int(patch))
    image = {k: jax.ShapeDtypeStruct(v, jnp.float32 if k == "patches" else jnp.int32,
                                     sharding=bsh) for k, v in shapes.items()}
    k = int(config.naflex.images_per_pack)
    return {"image": image, "label": jax.ShapeDtypeStruct((config.batch, k, num_classes),
                                                          jnp.float32, sharding=bsh)}
  image = jax.ShapeDtypeStruct((config.batch, crop, crop, 3), jnp.float32, sharding=bsh)
  if model is None or not lit.is_lit(model):  # uint8 where the trainer's pipeline sends it
    if batching.uint8_train_images(config.pp):
      image = image.update(dtype=jnp.uint8)
    return {"image": image, "label": jax.ShapeDtypeStruct((config.batch, num_classes),
                                                          jnp.float32, sharding=bsh)}
  length = int(model.pp["max_len"])
  tokens = jax.ShapeDtypeStruct((config.batch, length), jnp.int32, sharding=bsh)
  if config.input.image_embeddings:
    dim = image_embedding_dim(model, crop)
    return {"zimg": jax.ShapeDtypeStruct((config.batch, dim), jnp.float32, sharding=bsh),
            "tokens": tokens}
  return {"image": image, "tokens": tokens}


def lower_train_step(setup: StateSetup, config, num_classes: int,
                     teacher: Optional[distill.Teacher] = None) -> Any:
  """The train step the trainer runs, lowered (not compiled) for the abstract state and batch
  (and, with config.distill.path, the teacher's abstract params: call it with them).

  The trainer, the dry run and the benchmarks all compile through here, so what the dry run
  reports (memory, FLOPs) is what the run executes. `teacher` defaults to the config's
  (distill.from_config, nothing loaded).
  """
  if teacher is None:
    teacher = distill.from_config(config, setup.mesh, num_classes, setup.rules, setup.input_shape)
  step_fn = make_train_step(setup, int(config.accum_steps), str(config.loss), teacher)
  args = (setup.abstract_state, abstract_batch(config, num_classes, setup.mesh, setup.model))
  if teacher is not None:
    args += (teacher.abstract_params,)
  return step_fn.lower(*args)


def compile_train_step(setup: StateSetup, config, num_classes: int,
                       teacher: Optional[distill.Teacher] = None) -> Any:
  """`lower_train_step(...)` compiled: the executable the trainer calls."""
  return lower_train_step(setup, config, num_classes, teacher).compile()
