"""Batch geometry: how a GLOBAL batch splits over processes, batch shards and micro-batches.

The one place that checks that a batch divides evenly (the trainer's pre-flight check, the
input pipeline's per-process batch, the dry run and the bench scripts all call it), each
failure one ValueError that says which value to change. Pure Python: no JAX, no TensorFlow,
so the input pipeline's worker processes can import it.
"""
from __future__ import annotations

import dataclasses

# The named train recipes (datasets/preprocess.py): their crops are uint8 and their model
# inputs float32 [-1, 1] (float_values).
NAMED_TRAIN_RECIPES = ("vit_finetune", "inception_crop")

# The model-input keys of a packed-sequence batch (NaViT / NaFlex; models/packed.py says what
# each holds, datasets/packing.py builds them on the host).
PACKED_KEYS = ("patches", "segment_ids", "coords", "image_grid")


def packed_run(config) -> bool:
  """Whether the run trains on packed sequences (config.naflex.seq_len > 0)."""
  return int(config.naflex.seq_len or 0) > 0


def uint8_train_images(pp) -> bool:
  """Whether the trainer's train batches carry the uint8 crops, which the train step turns into
  float32 [-1, 1] (float_values) on the accelerator: a named recipe with no host work on floats
  (mixup / CutMix, random erasing). `pp` is config.pp or the pipeline's PreprocessOptions. The
  host then skips a float pass and sends a quarter of the bytes."""
  return (str(pp.train) in NAMED_TRAIN_RECIPES and not float(pp.mixup_alpha or 0)
          and not float(pp.cutmix_alpha or 0) and not float(pp.random_erase_prob or 0))


def scaled_values(images):
  """[0, 255] → float32 [-1, 1]: x / 127.5 - 1 in float32 (NumPy or JAX arrays alike), the
  named recipes' model inputs, on the host (image_ops.to_float) or in the train step."""
  # Python scalars are weakly typed in JAX and NumPy >= 2: the arithmetic stays float32.
  return images.astype("float32") * (1 / 127.5) - 1.0


def float_values(images):
  """The train step's model inputs: uint8 images (the trainer's batches, uint8_train_images)
  scaled by scaled_values; any other dtype is already the model's input and is returned."""
  return scaled_values(images) if str(images.dtype) == "uint8" else images


def images_per_step(config) -> int:
  """Images one train step reads: config.batch, times config.naflex.images_per_pack when the
  batch is of packed sequences."""
  if packed_run(config):
    return int(config.batch) * int(config.naflex.images_per_pack)
  return int(config.batch)


def packed_batch_shapes(config, batch: int, patch: int) -> dict[str, tuple[int, ...]]:
  """The shapes of a packed train batch of `batch` sequences (PACKED_KEYS) of config.naflex
  at patch size `patch`."""
  n = config.naflex
  length, k, p = int(n.seq_len), int(n.images_per_pack), int(patch)
  return {"patches": (batch, length, p * p * 3), "segment_ids": (batch, length),
          "coords": (batch, length, 2), "image_grid": (batch, k, 2)}


def local_batch_size(global_batch: int, process_count: int, name: str = "batch") -> int:
  """global_batch // process_count; raises when it does not divide evenly."""
  if global_batch <= 0 or global_batch % process_count:
    raise ValueError(f"config.{name}={global_batch} must be a positive multiple of the "
                     f"{process_count} processes; set --config.{name} to e.g. "
                     f"{max(global_batch // process_count, 1) * process_count}.")
  return global_batch // process_count


def check_accum_steps(global_batch: int, accum_steps: int, num_shards: int) -> None:
  """Raises unless the batch splits evenly into micro-batches and over the batch shards."""
  if accum_steps < 1 or global_batch % accum_steps:
    raise ValueError(f"batch={global_batch} is not divisible by accum_steps={accum_steps}.")
  micro = global_batch // accum_steps
  if micro % num_shards:
    raise ValueError(f"micro-batch {micro} (batch {global_batch} / accum_steps {accum_steps}) "
                     f"must be divisible by the {num_shards} batch shards (mesh data x fsdp).")


def check_batches(config, process_count: int, num_shards: int) -> None:
  """config.batch and config.batch_eval against the processes, the batch shards and accum_steps."""
  local_batch_size(config.batch, process_count, "batch")
  local_batch_size(config.batch_eval, process_count, "batch_eval")
  check_accum_steps(config.batch, int(config.accum_steps), num_shards)
  if config.batch_eval % num_shards:
    raise ValueError(f"batch_eval={config.batch_eval} must be divisible by the {num_shards} "
                     "batch shards (mesh data x fsdp); set --config.batch_eval to a multiple.")


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage of a progressive-resolution schedule: steps [start, next start) at
  `resolution` px with global batch `batch`; `offset` = train-stream elements consumed before
  it (the stages read one stream, each from where the previous one stopped)."""
  start: int
  resolution: int
  batch: int
  offset: int


def resolution_stages(config) -> tuple[Stage, ...]:
  """config.resolution_schedule ((start step, resolution, batch), ...) as Stages; () when off.
  One ValueError for a schedule that does not start at step 0, is not increasing, or has a
  resolution or batch <= 0."""
  schedule = tuple(tuple(int(v) for v in entry) for entry in (config.resolution_schedule or ()))
  if not schedule:
    return ()
  starts = [s[0] for s in schedule]
  if (any(len(s) != 3 for s in schedule) or starts[0] != 0 or starts != sorted(set(starts))
      or any(r <= 0 or b <= 0 for _, r, b in schedule)):
    raise ValueError(f"config.resolution_schedule={schedule}: give (start_step, resolution, "
                     "batch) stages with increasing start steps, the first at 0, e.g. "
                     "((0, 128, 1024), (30000, 192, 512), (60000, 224, 256)).")
  stages, offset = [], 0
  for i, (start, resolution, batch) in enumerate(schedule):
    stages.append(Stage(start, resolution, batch, offset))
    if i + 1 < len(schedule):
      offset += (schedule[i + 1][0] - start) * batch
  return tuple(stages)


def stage_at(stages: tuple[Stage, ...], step: int) -> Stage:
  """The stage that train step `step` (0-based) belongs to."""
  return [s for s in stages if s.start <= step][-1]


def stage_config(config, stage: Stage):
  """A copy of `config` at one stage: pp.crop = its resolution (pp.resize scaled alike when
  set), batch = its batch (the input pipeline and the compiled step of that stage read it;
  the model and the optimizer are built from the run's own config)."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    if c.pp.resize:
      c.pp.resize = int(round(int(c.pp.resize) * stage.resolution / int(c.pp.crop)))
    c.pp.crop = int(stage.resolution)
    c.batch = int(stage.batch)
  return c
