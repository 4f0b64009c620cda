"""The AugReg checkpoint index ("How to train your ViT?", Steiner et al. 2021).

gs://vit_models/augreg/index.csv lists every published AugReg run, one row per fine-tuning
run, with the columns
  name (paper name: 'B/16', 'R26+S/32', ...), ds (pre-training data: 'i1k', 'i21k',
  'i21k_30'), lr, aug, wd, do, sd, best_val, final_val, final_test (pre-training accuracies),
  adapt_ds (fine-tuning data, a TFDS name such as 'imagenet2012' or 'cifar100'), adapt_lr,
  adapt_steps, adapt_resolution, adapt_final_val, adapt_final_test, params,
  infer_samples_per_sec, filename (pre-training checkpoint) and adapt_filename (fine-tuned
  checkpoint); both files are gs://vit_models/augreg/<filename>.npz.

`resolve('B/16')` picks the recommended pre-trained checkpoint (best final validation
accuracy among the model's i21k runs), `resolve('B/16', adapt_ds='imagenet2012',
resolution=384)` the best fine-tune of it, `resolve('<filename>')` just names a file. Results
carry the gs:// URI and, when timm published a copy, the hf:// URI of the same weights (the
gs bucket has refused anonymous reads since 2026-02). Model names may be given in any of the
spellings 'B/16', 'B_16', 'ViT-B_16', 'R26+S/32', 'R26_S_32', 'R26+ViT-S_32'.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import re
from typing import Optional

from vit_jax.checkpoint import sources

INDEX_URI = "gs://vit_models/augreg/index.csv"
BUCKET_DIR = "gs://vit_models/augreg"

# AugReg file (without .npz) -> its timm copy on the Hugging Face Hub (hf://timm/<repo>),
# as published in timm 1.0.31's pretrained configs (facts, not code).
_TIMM_COPIES = {
    "B_16-i1k-300ep-lr_0.001-aug_strong2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_{r}":
        "vit_base_patch16_{r}.augreg_in1k",
    "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0":
        "vit_base_patch16_224.augreg_in21k",
    "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_{r}":
        "vit_base_patch16_{r}.augreg_in21k_ft_in1k",
    "B_32-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_{r}":
        "vit_base_patch32_{r}.augreg_in1k",
    "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384":
        "vit_base_patch32_384.augreg_in21k_ft_in1k",
    "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0":
        "vit_base_patch32_224.augreg_in21k",
    "B_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_224":
        "vit_base_patch32_224.augreg_in21k_ft_in1k",
    "B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0": "vit_base_patch8_224.augreg_in21k",
    "B_8-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_224":
        "vit_base_patch8_224.augreg_in21k_ft_in1k",
    "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1":
        "vit_large_patch16_224.augreg_in21k",
    "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_{r}":
        "vit_large_patch16_{r}.augreg_in21k_ft_in1k",
    "R26_S_32-i21k-300ep-lr_0.001-aug_light0-wd_0.03-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.03-res_224":
        "vit_small_r26_s32_224.augreg_in21k_ft_in1k",
    "R26_S_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.03-do_0.0-sd_0.0":
        "vit_small_r26_s32_224.augreg_in21k",
    "R26_S_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_384":
        "vit_small_r26_s32_384.augreg_in21k_ft_in1k",
    "R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_224":
        "vit_large_r50_s32_224.augreg_in21k_ft_in1k",
    "R50_L_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0":
        "vit_large_r50_s32_224.augreg_in21k",
    "R50_L_32-i21k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_384":
        "vit_large_r50_s32_384.augreg_in21k_ft_in1k",
    "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0":
        "vit_tiny_r_s16_p8_224.augreg_in21k",
    "R_Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_{r}":
        "vit_tiny_r_s16_p8_{r}.augreg_in21k_ft_in1k",
    "S_16-i1k-300ep-lr_0.001-aug_medium2-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.01-res_{r}":
        "vit_small_patch16_{r}.augreg_in1k",
    "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0":
        "vit_small_patch16_224.augreg_in21k",
    "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_{r}":
        "vit_small_patch16_{r}.augreg_in21k_ft_in1k",
    "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0":
        "vit_small_patch32_224.augreg_in21k",
    "S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_{r}":
        "vit_small_patch32_{r}.augreg_in21k_ft_in1k",
    "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0": "vit_tiny_patch16_224.augreg_in21k",
    "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-lr_0.03-res_{r}":
        "vit_tiny_patch16_{r}.augreg_in21k_ft_in1k",
}
_FILENAME = re.compile(r"^(?P<model>.+?)-(?P<ds>i1k|i21k(?:_30)?)-(?P<epochs>\d+)ep-[^/]*$")
_ADAPT = re.compile(r"--(?P<adapt_ds>[^-]+)-steps_[^-]+-lr_[^-]+-res_(?P<res>\d+)$")


@dataclasses.dataclass(frozen=True)
class AugRegCheckpoint:
  """One AugReg checkpoint file and where to get it."""
  filename: str                      # without '.npz'
  model_name: Optional[str]          # registry name, e.g. 'ViT-B_16' (None if not registered)
  pretrain_ds: str                   # 'i1k', 'i21k' or 'i21k_30'
  adapt_ds: Optional[str] = None     # fine-tuning dataset (None: a pre-training checkpoint)
  resolution: Optional[int] = None   # fine-tuning resolution (pre-training ran at 224)
  accuracy: Optional[float] = None   # final_val (pre-training) or adapt_final_val (fine-tune)

  @property
  def gs_uri(self) -> str:
    """gs://vit_models/augreg/<filename>.npz (needs GCS credentials since 2026-02)."""
    return f"{BUCKET_DIR}/{self.filename}.npz"

  @property
  def hf_uri(self) -> Optional[str]:
    """hf://timm/<repo> holding the same weights (timm layout), or None when none is known."""
    return hf_copy(self.filename)

  @property
  def uris(self) -> tuple[str, ...]:
    """Every known location, the Hugging Face copy first (no credentials needed)."""
    return tuple(u for u in (self.hf_uri, self.gs_uri) if u)


def hf_copy(filename: str) -> Optional[str]:
  """hf:// URI of timm's copy of an AugReg file, or None."""
  filename = _strip(filename)
  if filename in _TIMM_COPIES:
    return f"hf://timm/{_TIMM_COPIES[filename]}"
  match = _ADAPT.search(filename)
  if match:
    template = filename[: match.start("res")] + "{r}"
    if template in _TIMM_COPIES:
      return f"hf://timm/{_TIMM_COPIES[template].format(r=match.group('res'))}"
  return None


def normalize_model_name(name: str) -> str:
  """AugReg file prefix for any spelling: 'B/16', 'ViT-B_16' -> 'B_16'; 'R26+S/32' -> 'R26_S_32'."""
  return name.strip().replace("ViT-", "").replace("+", "_").replace("/", "_")


def looks_like_model_name(value: str) -> bool:
  """True for an AugReg model name in any spelling ('B/16', 'ViT-B_16', 'R26+S/32')."""
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  return isinstance(value, str) and normalize_model_name(value) in registry.AUGREG_NAMES


def _registry_name(prefix: str) -> Optional[str]:
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  return registry.AUGREG_NAMES.get(prefix)


def _strip(filename: str) -> str:
  base = filename.rsplit("/", 1)[-1]
  return base[: -len(".npz")] if base.endswith(".npz") else base


def is_filename(value: str) -> bool:
  """True when `value` looks like an AugReg checkpoint file name rather than a model name."""
  return bool(_FILENAME.match(_strip(value)))


def parse_filename(filename: str) -> AugRegCheckpoint:
  """AugRegCheckpoint described by a file name alone (no index lookup, no accuracy)."""
  base = _strip(filename)
  match = _FILENAME.match(base)
  if not match:
    raise ValueError(f"{filename!r} is not an AugReg checkpoint file name; expected e.g. "
                     "'B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0[.npz]'.")
  adapt = _ADAPT.search(base)
  ds = match.group("ds")
  if ds == "i21k" and match.group("epochs") == "30":
    ds = "i21k_30"  # The index's name for the 30-epoch ImageNet-21k runs.
  return AugRegCheckpoint(
      filename=base, model_name=_registry_name(match.group("model")), pretrain_ds=ds,
      adapt_ds=adapt.group("adapt_ds") if adapt else None,
      resolution=int(adapt.group("res")) if adapt else None)


def load_index(index_path: str = INDEX_URI, *, cache_dir: Optional[str] = None) -> list[dict]:
  """Rows of the AugReg index.csv (local path or any URI sources.fetch accepts)."""
  path = sources.fetch(index_path, cache_dir=cache_dir, progress=False)
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  required = {"name", "ds", "final_val", "filename", "adapt_ds", "adapt_resolution",
              "adapt_final_val", "adapt_filename"}
  missing = required - set(rows[0] if rows else ())
  if missing:
    raise ValueError(f"{index_path} is not an AugReg index: missing columns {sorted(missing)} "
                     f"(need {sorted(required)}).")
  return rows


def _float(value: str) -> float:
  try:
    result = float(value)
  except (TypeError, ValueError):
    return -math.inf
  return -math.inf if math.isnan(result) else result


def _best(rows: list[dict], column: str, key_column: str) -> dict:
  """Row with the highest `column`; ties broken by `key_column` for a deterministic pick."""
  return max(rows, key=lambda r: (_float(r[column]), r[key_column]))


def resolve(model_name_or_filename: str, *, index_path: str = INDEX_URI, dataset: str = "i21k",
            adapt_ds: Optional[str] = None, resolution: Optional[int] = None,
            from_best_pretrain: bool = True, cache_dir: Optional[str] = None) -> AugRegCheckpoint:
  """The AugReg checkpoint for a model name (best by validation accuracy) or a file name.

  A file name (with or without '.npz') resolves without reading the index. For a model name
  the index is read and the pre-training run on `dataset` with the best `final_val` is chosen;
  with `adapt_ds` (e.g. 'imagenet2012'), the fine-tune of that run on `adapt_ds` (at
  `resolution` if given) with the best `adapt_final_val` is returned, as Google's AugReg Colab
  does. from_best_pretrain=False instead picks the best fine-tune over all pre-training runs.
  """
  if is_filename(model_name_or_filename):
    return parse_filename(model_name_or_filename)
  prefix = normalize_model_name(model_name_or_filename)
  try:
    rows = load_index(index_path, cache_dir=cache_dir)
  except sources.FetchError as e:
    return _without_index(model_name_or_filename, prefix, dataset, adapt_ds, resolution,
                          index_path, e)
  mine = [r for r in rows if normalize_model_name(r["name"]) == prefix and r["ds"] == dataset]
  if not mine:
    names = sorted({r["name"] for r in rows if r["ds"] == dataset})
    datasets = sorted({r["ds"] for r in rows if normalize_model_name(r["name"]) == prefix})
    raise ValueError(f"no AugReg checkpoint for model {model_name_or_filename!r} pre-trained on "
                     f"{dataset!r} in {index_path}; models on {dataset!r}: {names}"
                     + (f"; this model exists for dataset= {datasets}" if datasets else ""))
  pretrain = _best(mine, "final_val", "filename")
  model_name = _registry_name(prefix)
  if adapt_ds is None:
    return AugRegCheckpoint(filename=pretrain["filename"], model_name=model_name,
                            pretrain_ds=dataset, accuracy=_float(pretrain["final_val"]))
  pool = [r for r in mine if r["filename"] == pretrain["filename"]] if from_best_pretrain else mine
  best = _best_fine_tune(pool, adapt_ds, resolution,
                         pretrain["filename"] if from_best_pretrain else None)
  return AugRegCheckpoint(
      filename=best["adapt_filename"], model_name=model_name, pretrain_ds=dataset,
      adapt_ds=adapt_ds, resolution=int(_float(best["adapt_resolution"])),
      accuracy=_float(best["adapt_final_val"]))


def _without_index(name: str, prefix: str, dataset: str, adapt_ds: Optional[str],
                   resolution: Optional[int], index_path: str,
                   error: Exception) -> AugRegCheckpoint:
  """The index cannot be read (offline, bucket closed): the checkpoint timm publishes for this
  model (the paper's recommended run), with a printed note; else an error naming the hf://
  copies that are known."""
  import sys  # pylint: disable=g-import-not-at-top
  matches = []
  for template in _TIMM_COPIES:
    filename = template.replace("{r}", str(resolution or 224))
    try:
      ckpt = parse_filename(filename)
    except ValueError:
      continue
    if (normalize_model_name(ckpt.filename.split("-", 1)[0]) == prefix
        and ckpt.pretrain_ds == dataset and ckpt.adapt_ds == adapt_ds
        and (adapt_ds is None or resolution is None or ckpt.resolution == resolution)):
      matches.append(ckpt)
  if len(matches) == 1:
    ckpt = matches[0]
    print(f"note: the AugReg index {index_path} cannot be read ({str(error)[:160]}); {name!r} "
          f"-> {ckpt.hf_uri}, the copy of the recommended checkpoint {ckpt.filename} that timm "
          "publishes.", file=sys.stderr)
    return ckpt
  known = sorted({f"hf://timm/{repo.replace('{r}', '224')}" for key, repo in _TIMM_COPIES.items()
                  if normalize_model_name(key.split("-", 1)[0]) == prefix})
  what = f"{name!r} pre-trained on {dataset!r}"
  what += f", fine-tuned on {adapt_ds!r}" if adapt_ds else ""
  alternatives = (f"Hugging Face copies of this model: {', '.join(known)}" if known else
                  "no Hugging Face copy of this model is known; pass a local .npz or another URI")
  raise sources.FetchError(f"the AugReg index {index_path} cannot be read ({str(error)[:160]}), "
                           f"and without it {what} has no known copy. {alternatives}.")


def _best_fine_tune(pool: list[dict], adapt_ds: str, resolution: Optional[int],
                    pretrain: Optional[str]) -> dict:
  """Row of `pool` fine-tuned on `adapt_ds` (at `resolution`) with the best adapt_final_val."""
  tunes = [r for r in pool if r["adapt_ds"] == adapt_ds and r.get("adapt_filename")
           and (resolution is None or _float(r["adapt_resolution"]) == resolution)]
  if tunes:
    return _best(tunes, "adapt_final_val", "adapt_filename")
  offered = sorted({(r["adapt_ds"], int(_float(r["adapt_resolution"]))) for r in pool})
  at = f" at resolution {resolution}" if resolution else ""
  hint = "; or pass from_best_pretrain=False to search all runs" if pretrain else ""
  raise ValueError(f"no fine-tune of {pretrain or 'this model'} on adapt_ds={adapt_ds!r}{at}; "
                   f"available (adapt_ds, resolution): {offered}{hint}")


# The split AugReg's adapt_final_test was measured on, per fine-tuning dataset.
PUBLISHED_TEST_SPLITS = {"imagenet2012": "validation", "cifar100": "test", "cifar10": "test",
                         "oxford_iiit_pet": "test", "oxford_flowers102": "test",
                         "resisc45": "train[90%:]", "kitti": "test", "sun397": "test"}


def published_result(filename: str, *, index_path: str = INDEX_URI,
                     cache_dir: Optional[str] = None) -> Optional[dict]:
  """The index row of a fine-tuned AugReg file as {'adapt_ds', 'resolution', 'test', 'val'}
  (accuracies as fractions), or None when `filename` is not a fine-tuned AugReg file.
  Raises sources.FetchError when the index cannot be read."""
  if not is_filename(filename):
    return None
  ckpt = parse_filename(filename)
  if ckpt.adapt_ds is None:
    return None
  for row in load_index(index_path, cache_dir=cache_dir):
    if _strip(row.get("adapt_filename") or "") == ckpt.filename:
      return {"adapt_ds": row["adapt_ds"], "resolution": int(_float(row["adapt_resolution"])),
              "test": _float(row.get("adapt_final_test")), "val": _float(row["adapt_final_val"])}
  return None
