"""The packed-sequence input pipeline (NaViT / NaFlex, config.naflex): its settings and the
grain transforms that turn stream elements into packs and packs into batches.

Train (pipeline._train_iterator wires them): each stream element draws, with its own RNG, its
box (the whole image, or an inception crop whose own aspect ratio is kept), the flip, its
share of the sequence (uniform in [min_share, 1]) and a token-drop seed (`PackElement`);
K = images_per_pack consecutive elements form one pack (`PackImages`: pack_layout, one
resize of each box to its grid, patches, token dropping, datasets/packing.pack); batches of
packs get float patches and one-hot labels (B, K, C) (`PackedTrainBatch`). Every step reads
config.batch packs = K x config.batch images, and a pack depends only on its place in the
global stream, so the process count, worker count and resumes keep the contract of
pipeline.py. Eval: one image per sequence of eval_seq_len tokens (`PackEvalElement`; NaFlex's
evaluation), aspect ratio kept.

Batches: {'image': {'patches' float32 (b, L, p*p*3) in [-1, 1], 'segment_ids', 'coords',
'image_grid' (b, K, 2)}, 'label': float32 (b, K, C)}; eval {'image': the same with K = 1,
'label' (b, C), 'mask', 'index'}.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np
from PIL import Image

from vit_jax.datasets import bad_examples, image_ops, mixing, packing, preprocess


@dataclasses.dataclass(frozen=True)
class PackSettings:
  """config.naflex, checked (`settings_from_config`)."""
  seq_len: int
  images_per_pack: int
  patch: int
  min_share: float = 1.0
  max_tokens: int = 0
  token_drop: float = 0.0
  eval_seq_len: int = 0

  @property
  def eval_len(self) -> int:
    return self.eval_seq_len or self.seq_len


def settings_from_config(config, train: bool = True) -> PackSettings:
  """config.naflex as PackSettings; one ValueError naming the key for each bad value or (for
  training) an augmentation packed sequences do not take."""
  n = config.naflex
  if not n.patch_size:
    raise ValueError("config.naflex.patch_size is unset: it is the model's patch size "
                     "(models/factory.with_pipeline_settings fills it in for a run).")
  s = PackSettings(seq_len=int(n.seq_len), images_per_pack=int(n.images_per_pack),
                   patch=int(n.patch_size), min_share=float(n.min_share),
                   max_tokens=int(n.max_tokens or 0), token_drop=float(n.token_drop),
                   eval_seq_len=int(n.eval_seq_len or 0))
  if not 1 <= s.images_per_pack <= s.seq_len:
    raise ValueError(f"config.naflex.images_per_pack={s.images_per_pack} must be in [1, "
                     f"config.naflex.seq_len={s.seq_len}]: each image takes at least one token.")
  if not 0 < s.min_share <= 1:
    raise ValueError(f"config.naflex.min_share={s.min_share} must be in (0, 1] (each image's "
                     "share of its sequence is drawn uniformly in [min_share, 1]).")
  if not 0 <= s.token_drop < 1:
    raise ValueError(f"config.naflex.token_drop={s.token_drop} must be in [0, 1).")
  if s.max_tokens < 0 or s.eval_seq_len < 0:
    raise ValueError("config.naflex.max_tokens and eval_seq_len must be >= 0 (0 = unset).")
  if not train:
    return s
  opts = preprocess.options_from_config(config.pp)
  unsupported = {
      "pp.train (a pp string)": opts.train not in preprocess.TRAIN_MODES,
      "pp.mixup_alpha / cutmix_alpha": opts.pairs_rows,
      "pp.randaugment_layers": opts.randaugment_layers > 0,
      "pp.random_erase_prob": opts.random_erase_prob > 0,
      "input.repeated_aug": int(config.input.repeated_aug or 1) > 1,
      "resolution_schedule": bool(tuple(config.resolution_schedule or ())),
      "flexi.patch_sizes": bool(tuple(config.flexi.patch_sizes or ())),
  }
  bad = [k for k, v in unsupported.items() if v]
  if bad:
    raise ValueError(f"packed sequences (config.naflex.seq_len={s.seq_len}) keep each image's "
                     f"aspect ratio and take the whole image or an inception crop with a flip; "
                     f"unset {', '.join('config.' + b for b in bad)}.")
  return s


@dataclasses.dataclass(frozen=True)
class PackElement:
  """Element transform: the element with what its image draws now and uses when its pack is
  laid out (its box, flip, share of the sequence, token-drop seed)."""
  opts: preprocess.PreprocessOptions
  settings: PackSettings
  image_key: str = "image"
  label_key: str = "label"
  skip_bad: bool = False  # decode the whole image now, skipping undecodable ones

  def _open(self, element: dict) -> Any:
    image = image_ops.open_image(element[self.image_key])  # lazily: the header only
    if self.skip_bad:  # decoded here, where an undecodable image can still be replaced
      image.load()
      return image
    return element[self.image_key]

  def __call__(self, element: dict, rng: np.random.Generator) -> dict:
    data, element, skipped = bad_examples.decode_or_skip(element, self._open, self.skip_bad)
    width, height = image_ops.open_image(data).size
    box = (image_ops.sample_inception_box(width, height, rng)
           if self.opts.train == "inception_crop" else image_ops.whole_image(width, height))
    flip = bool(self.opts.flip and rng.random() < 0.5)
    share = (float(rng.uniform(self.settings.min_share, 1.0))
             if self.settings.min_share < 1 else 1.0)
    out = {"image": data, "label": np.int32(element[self.label_key]),
           "box": np.asarray(box, np.int64), "flip": flip, "share": share,
           "seed": int(rng.integers(0, 2**63 - 1)), "path": element.get("path", "")}
    return bad_examples.record(out, skipped) if self.skip_bad else out


def _grid_image(data: Any, box: tuple[int, int, int, int], rows: int, cols: int,
                patch: int) -> np.ndarray:
  """The box of an image resized to (rows*patch, cols*patch) pixels, uint8 RGB."""
  img = image_ops.resize_box(data, lambda *_: tuple(int(b) for b in box),
                             lambda *_: (cols * patch, rows * patch))
  return np.asarray(img, np.uint8)


def pack_images(images: list[tuple[Any, tuple[int, int, int, int], bool, Optional[int]]],
                seq_len: int, settings: PackSettings, shares: Optional[list[float]] = None,
                drop_rate: float = 0.0) -> dict:
  """One pack (packing.pack's keys) of (data, box, flip, token-drop seed) images."""
  sizes = [(int(box[3]), int(box[2])) for _, box, _, _ in images]
  grids = packing.pack_layout(sizes, seq_len, settings.patch, weights=shares,
                              max_tokens=settings.max_tokens or None, drop_rate=drop_rate)
  patches, coords = [], []
  for (data, box, flip, seed), (rows, cols) in zip(images, grids):
    pixels = _grid_image(data, box, rows, cols, settings.patch)
    if flip:
      pixels = pixels[:, ::-1]
    keep = packing.keep_indices(rows * cols, drop_rate,
                                np.random.default_rng(seed) if seed is not None else None)
    patches.append(packing.patchify(pixels, settings.patch)[keep])
    coords.append(packing.grid_coords(rows, cols)[keep])
  return packing.pack(patches, coords, grids, seq_len, len(images))


@dataclasses.dataclass(frozen=True)
class PackImages:
  """Pack transform: the K elements of one pack → its uint8 patches, segment ids, coords,
  image grids and the (K,) labels."""
  settings: PackSettings

  def __call__(self, elements: tuple) -> dict:
    s = self.settings
    try:
      out = pack_images([(e["image"], tuple(e["box"]), e["flip"], e["seed"]) for e in elements],
                        s.seq_len, s, [e["share"] for e in elements], s.token_drop)
    except Exception as e:  # pylint: disable=broad-except
      paths = [str(x.get("path", "")) for x in elements]
      raise ValueError(f"cannot pack images {paths}: {e}") from e
    out["label"] = np.asarray([e["label"] for e in elements], np.int32)
    if bad_examples.SKIPPED in elements[0]:
      out[bad_examples.SKIPPED] = np.int32(sum(e[bad_examples.SKIPPED] for e in elements))
      out[bad_examples.SKIPPED_IDS] = "\n".join(e[bad_examples.SKIPPED_IDS] for e in elements
                                                 if e[bad_examples.SKIPPED_IDS])
    return out


def _model_inputs(batch: dict) -> dict:
  patches = image_ops.to_float(batch["patches"])
  return {"patches": patches, "segment_ids": batch["segment_ids"], "coords": batch["coords"],
          "image_grid": batch["image_grid"]}


@dataclasses.dataclass(frozen=True)
class PackedTrainBatch:
  """Batch transform: float patches in [-1, 1] and smoothed one-hot labels (b, K, C)."""
  num_classes: int
  label_smoothing: float = 0.0

  def __call__(self, batch: dict) -> dict:
    return bad_examples.carry(batch, {
        "image": _model_inputs(batch),
        "label": mixing.one_hot(batch["label"], self.num_classes, self.label_smoothing)})


@dataclasses.dataclass(frozen=True)
class PackEvalElement:
  """Index i of the padded shard → one image packed alone at eval_seq_len tokens (aspect
  kept), or an all-padding sequence with mask 0."""
  source: Any
  lo: int
  hi: int
  settings: PackSettings
  image_key: str = "image"
  label_key: str = "label"

  def __call__(self, i: int) -> dict:
    length, dim = self.settings.eval_len, self.settings.patch ** 2 * 3
    if self.lo + i >= self.hi:
      empty = {"patches": np.zeros((length, dim), np.uint8),
               "segment_ids": np.zeros((length,), np.int32),
               "coords": np.zeros((length, 2), np.int32), "image_grid": np.zeros((1, 2), np.int32)}
      return {**empty, "label": np.int32(0), "mask": np.float32(0.0), "index": np.int32(-1)}
    element = self.source[self.lo + i]
    try:
      image = image_ops.open_image(element[self.image_key])
      out = pack_images([(image, (0, 0) + image.size, False, None)], length, self.settings)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"cannot decode image {element.get('path', '')!r}: {e}") from e
    return {**out, "label": np.int32(element[self.label_key]), "mask": np.float32(1.0),
            "index": np.int32(self.lo + i)}


@dataclasses.dataclass(frozen=True)
class PackedEvalBatch:
  """Batch transform of packed eval data: model inputs, one-hot labels, mask, index."""
  num_classes: int

  def __call__(self, batch: dict) -> dict:
    return {"image": _model_inputs(batch), "label": mixing.one_hot(batch["label"],
                                                                   self.num_classes),
            "mask": batch["mask"].astype(np.float32), "index": batch["index"]}


def pack_arrays(images: list[np.ndarray], seq_len: int, patch: int) -> dict:
  """Model inputs (float patches; batching.PACKED_KEYS with a batch axis of 1) of uint8 images
  of any shapes packed into one sequence, each at the largest grid of its aspect ratio within
  an equal share: for inference on arbitrary images."""
  settings = PackSettings(seq_len=seq_len, images_per_pack=len(images), patch=patch)
  pil = [Image.fromarray(np.asarray(im, np.uint8)) for im in images]
  one = pack_images([(im, (0, 0) + im.size, False, None) for im in pil], seq_len, settings)
  return {k: v[None] for k, v in _model_inputs(one).items()}
