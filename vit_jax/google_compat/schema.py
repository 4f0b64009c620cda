"""Google's vit_jax config layout (`configs.common.get_config()`, `with_dataset`) and its one
translation into our run config (`to_run_config`).

Google's layout: `config.model` is the architecture ConfigDict (`models.get_b16_config()`),
weights come from `{pretrained_dir}/{model_name}.npz` (or the AugReg file `model_or_filename`
names, best i21k pre-training by `final_val` in `{pretrained_dir}/index.csv` for a bare model
name), `pp.train` / `pp.test` are split names and `pp.crop` the resolution; training is
SGD-momentum 0.9 with warmup + cosine/linear decay (linear to 1e-5), inception crop + flip,
and evaluation resizes to the crop. Keys without an equivalent are translated as stated in
`to_run_config`; a value we cannot honour is one error naming the key.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, Tuple, Union

import ml_collections
from ml_collections import config_dict

from vit_jax.checkpoint import augreg
from vit_jax.configs import base
from vit_jax.models import registry

AUGREG_BUCKET = "gs://vit_models/augreg"
LINEAR_END = 1e-5  # Google's linear decay ends here (utils.create_learning_rate_schedule).


def get_config() -> ml_collections.ConfigDict:
  """Google's defaults (locked): every key its train loop reads; `model` and `pp` unset."""
  c = ml_collections.ConfigDict()
  c.pretrained_dir = "."          # Holds {model_name}.npz (or AugReg's files and index.csv).
  c.dataset = None                # TFDS name or a {train,test}/<class>/*.jpg folder.
  c.tfds_manual_dir = config_dict.placeholder(str)
  c.tfds_data_dir = config_dict.placeholder(str)
  c.total_steps = None            # Set by with_dataset() or the command line.
  c.grad_norm_clip = 1.0
  c.optim_dtype = "bfloat16"      # Momentum dtype.
  c.accum_steps = 8
  c.batch = 512
  c.batch_eval = 512
  c.shuffle_buffer = 50_000       # Accepted; our pipeline shuffles the whole split exactly.
  c.eval_every = 100
  c.progress_every = 10
  c.checkpoint_every = 1_000
  c.prefetch = 2
  c.base_lr = 0.03
  c.decay_type = "cosine"         # 'cosine' | 'linear'.
  c.warmup_steps = 500
  c.trainer = "train"             # 'inference_time' takes its own config (inference_time.py).
  c.model_type = "ViT"            # 'ViT' | 'Mixer' (Google's Mixer config sets it).
  c.model = None                  # The architecture: configs.models.get_<name>_config().
  c.model_or_filename = None      # AugReg model name or file name (augreg configs).
  c.pp = None                     # {train: split, test: split, crop: px}: with_dataset() sets it.
  return c.lock()


def _preset(total_steps: int, train: str, test: str, crop: int = 384) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(total_steps=total_steps, pp=ml_collections.ConfigDict(
      dict(train=train, test=test, crop=crop))))


# Google's per-dataset fine-tune settings (a held-out slice of train is left for validation).
DATASET_PRESETS = {
    "cifar10": _preset(10_000, "train[:98%]", "test"),
    "cifar100": _preset(10_000, "train[:98%]", "test"),
    "imagenet2012": _preset(20_000, "train[:99%]", "validation"),
}


def with_dataset(config: ml_collections.ConfigDict, dataset: str) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` pointed at `dataset` with its DATASET_PRESETS entry."""
  if dataset not in DATASET_PRESETS:
    raise ValueError(f"with_dataset: no preset for {dataset!r} (presets: "
                     f"{sorted(DATASET_PRESETS)}); set config.dataset, config.total_steps and "
                     "config.pp yourself.")
  out = ml_collections.ConfigDict(config.to_dict())
  out.dataset = dataset
  out.update(DATASET_PRESETS[dataset].to_dict())
  out.pp = ml_collections.ConfigDict(DATASET_PRESETS[dataset].pp.to_dict())
  return out


def flatten(config: Union[ml_collections.ConfigDict, Dict[str, Any]],
            prefix: Tuple[str, ...] = ("config",)) -> Iterable[Tuple[str, Any]]:
  """(dotted key, value) for every leaf, e.g. ('config.pp.crop', 384) — for sweeps."""
  for key, value in config.items():
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      yield from flatten(value, prefix + (key,))
    else:
      yield ".".join(prefix + (key,)), value


def is_google_config(config: Any) -> bool:
  """True for a config in Google's layout (it has `pretrained_dir`; ours never does)."""
  return hasattr(config, "keys") and "pretrained_dir" in config


def _get(config, key: str, default=None):
  return config[key] if key in config and config[key] is not None else default


def _data_fields(c: ml_collections.ConfigDict, g) -> None:
  """Dataset, splits, resolution and batch sizes of Google config `g` into our config `c`."""
  if not _get(g, "dataset"):
    raise ValueError("config.dataset is empty; set it (a TFDS name such as 'cifar10' or an image "
                     "folder with train/ and test/ sub-folders), e.g. --config.dataset=cifar10.")
  pp = _get(g, "pp") or {}
  base.set_dataset(c, str(g.dataset))  # The class count too when known (dry runs need no data).
  c.tfds_data_dir = _get(g, "tfds_data_dir")
  c.tfds_manual_dir = _get(g, "tfds_manual_dir")
  c.train_split = str(_get(pp, "train", "train"))
  c.eval_split = str(_get(pp, "test", "test"))
  if _get(pp, "crop") is None:
    raise ValueError("config.pp.crop (the image resolution) is not set; e.g. --config.pp.crop=384.")
  c.pp.crop = int(pp["crop"])
  c.pp.train, c.pp.eval, c.pp.flip = "inception_crop", "resize", True  # Google's get_data()
  c.batch = int(g.batch)
  c.batch_eval = int(g.batch_eval)


def data_config(g) -> ml_collections.ConfigDict:
  """Our input-pipeline config for Google config `g` (model fields may be unset)."""
  c = base.defaults()
  _data_fields(c, g)
  c.input.num_workers = 0  # Threads in this process, as Google's tf.data pipeline.
  return c.lock()


def _model_fields(c: ml_collections.ConfigDict, model) -> None:
  """config.model_name and the overrides that turn the registered config into `model`."""
  if model is None:
    raise ValueError("config.model is not set; set it to an architecture, e.g. "
                     "config.model = vit_jax.configs.models.get_b16_config().")
  name = str(model["model_name"])
  if name.startswith("LiT-"):
    raise ValueError(
        f"config.model is the image-text model {name}; Google's train loop (and this "
        "translation of its config) fine-tunes image classifiers. Use a ViT/Mixer config "
        "here; a LiT model classifies without training: python -m vit_jax.evaluate --model "
        f"{name} --checkpoint FILE.npz --zeroshot DATASET.")
  registered = registry.get_model_config(name).to_dict()
  given = model.to_dict() if hasattr(model, "to_dict") else dict(model)
  c.model_name = registry.canonical_name(name)
  _apply_overrides(c.model, registered, given, "config.model")


def _apply_overrides(target, registered: dict, given: dict, where: str) -> None:
  for key, value in given.items():
    base = registered.get(key)
    if isinstance(value, dict):
      if key not in target:
        if value != base:
          raise ValueError(f"{where}.{key}={value} differs from the registered architecture "
                           f"({base}) and cannot be changed here; use a registered model name.")
        continue
      _apply_overrides(target[key], base or {}, value, f"{where}.{key}")
    elif value != base:
      if key not in target:
        raise ValueError(f"{where}.{key}={value!r} differs from the registered architecture "
                         f"({base!r}) and cannot be changed here; overridable fields: "
                         f"{sorted(target.keys())}.")
      target[key] = tuple(value) if isinstance(value, list) else value


def _pretrained(c: ml_collections.ConfigDict, g) -> None:
  """Where Google's loop reads the initial weights, as our pretrained_path/model_or_filename."""
  directory = str(_get(g, "pretrained_dir", "."))
  name = _get(g, "model_or_filename")
  if not name:
    c.pretrained_path = os.path.join(directory, f"{c.model_name}.npz")
    return
  if directory.rstrip("/") == AUGREG_BUCKET:  # Ours resolves it (Hugging Face copy first).
    c.model_or_filename = str(name)
    return
  filename = augreg.resolve(str(name), index_path=os.path.join(directory, "index.csv")).filename
  c.pretrained_path = os.path.join(directory, filename[:-4] if filename.endswith(".npz")
                                   else filename) + ".npz"


def to_run_config(g) -> ml_collections.ConfigDict:
  """Our locked run config for Google config `g` — the one place the two layouts meet.

  Translated: model (name + overridable fields), pretrained_dir/model_or_filename →
  pretrained_path/model_or_filename, dataset/tfds dirs, pp.train/pp.test → train/eval split,
  pp.crop, Google's augmentation (inception crop + flip) and eval (resize), batch, batch_eval,
  total_steps, warmup_steps (at most total_steps), base_lr, decay_type (linear ends at 1e-5
  as Google's),
  SGD-momentum 0.9 with optim_dtype, grad_norm_clip, accum_steps, eval_every,
  progress_every → log_every, checkpoint_every, prefetch → input.device_prefetch, seed 0.
  Accepted and not needed: shuffle_buffer (the split is shuffled exactly), pp.resize (unused
  by Google's pipeline too). Refused: trainer other than 'train', a non-Mixer model with
  model_type='Mixer' (and the reverse), LiT models.
  """
  if _get(g, "trainer", "train") != "train":
    raise ValueError(f"config.trainer={g.trainer!r}: this config trains (trainer 'train'); "
                     "the inference-time benchmark takes its own config, "
                     "--config=vit_jax/configs/inference_time.py.")
  c = base.defaults()
  _model_fields(c, _get(g, "model"))
  model_type = _get(g, "model_type", "ViT")
  if (model_type not in ("ViT", "Mixer")
      or (model_type == "Mixer") != registry.is_mixer(c.model_name)):
    raise ValueError(f"config.model_type={model_type!r} does not match config.model "
                     f"({c.model_name}); use 'Mixer' for Mixer-* models and 'ViT' otherwise.")
  _data_fields(c, g)
  _pretrained(c, g)
  if _get(g, "total_steps") is None:
    raise ValueError("config.total_steps is not set; use common.with_dataset(config, dataset) "
                     "or pass --config.total_steps=N.")
  decay = str(_get(g, "decay_type", "cosine"))
  if decay not in ("cosine", "linear"):
    raise ValueError(f"config.decay_type={decay!r}: Google's schedule knows 'cosine' and 'linear'.")
  # Google's schedule has no meaning for warmup > total (its default 500 with a short run):
  # the warmup is then the whole run.
  c.total_steps = int(g.total_steps)
  c.warmup_steps = min(int(_get(g, "warmup_steps", 0)), c.total_steps)
  c.base_lr, c.decay_type = float(g.base_lr), decay
  c.end_lr = LINEAR_END if decay == "linear" else 0.0
  c.optimizer, c.momentum = "sgd", 0.9
  c.optim_dtype = str(_get(g, "optim_dtype", "float32"))
  c.weight_decay = 0.0
  c.grad_norm_clip = float(_get(g, "grad_norm_clip", 0.0))
  c.accum_steps = int(_get(g, "accum_steps", 1))
  c.eval_every = int(_get(g, "eval_every", 0))
  c.log_every = int(_get(g, "progress_every", 50))
  c.checkpoint_every = int(_get(g, "checkpoint_every", 0))
  c.input.device_prefetch = max(int(_get(g, "prefetch", 2)), 1)
  c.seed = 0
  return c.lock()
