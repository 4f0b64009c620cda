"""Inference CLI: top-k ImageNet classes of images under a published or own checkpoint.

  python -m vit_jax.inference --model ViT-B_16 --checkpoint PATH_OR_URI IMAGE [IMAGE ...]
      [--num_classes N] [--resolution R] [--top_k 5] [--labels FILE] [--batch_size 16]
  python -m vit_jax.inference --checkpoint workdirs/quickstart/model.npz IMAGE ...  # an export
  python -m vit_jax.inference --workdir workdirs/quickstart [--step N] IMAGE ...    # a run

Own models: a file written by vit_jax.export carries its architecture in a sidecar
(model.npz -> model.json: fields, classes, class names, resolution), and --workdir reads the
run's config and checkpoint, so a modified architecture needs no --model. --model names a
published architecture (MODEL_CONFIGS) for published checkpoints.

PATH_OR_URI is anything vit_jax.checkpoint.load reads (local .npz/.safetensors, gs://,
http(s)://, hf://org/name) or an AugReg file name (its Hugging Face copy is used when one is
known, else gs://vit_models/augreg/...). Images are read with PIL, converted to RGB, resized
to R x R (bilinear) and scaled to [-1, 1]. R defaults to the resolution the checkpoint was
trained at (from its position-embedding grid). Class names: the ImageNet-1k list for
1000-class heads and Google's ImageNet-21k list (21843 classes) shipped in vit_jax/labels/,
or --labels FILE (one name per line, optionally 'wnid<TAB>name'); otherwise class indices.
Output, per image: its path, then top_k lines '  <probability>  <label>  [<index>]'.
A folder argument stands for every image under it (recursively, sorted); images are read and
classified --batch_size at a time with a progress bar on stderr, and --output FILE.csv or
FILE.json writes the top-k of every image there instead of printing it (CSV: one row per
image, columns path, then label_i, index_i, probability_i for i = 1..k).
"""
from __future__ import annotations

import argparse
import importlib.resources
import math
import os
import sys
from typing import Optional, Sequence

import numpy as np

LABEL_FILES = {1000: "imagenet1k.txt", 21843: "imagenet21k.txt"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


def expand_images(paths: Sequence[str]) -> list[str]:
  """Image files of `paths`: files as given, folders walked recursively (sorted)."""
  out = []
  for path in paths:
    if os.path.isdir(path):
      found = sorted(os.path.join(root, name) for root, _, names in os.walk(path)
                     for name in names if name.lower().endswith(IMAGE_SUFFIXES))
      if not found:
        raise ValueError(f"folder {path!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}).")
      out.extend(found)
    else:
      out.append(path)
  return out


def top_k_rows(paths: Sequence[str], probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict]:
  """[{'path', 'top_k': [{'label', 'index', 'probability'}, ...]}] most probable first."""
  rows = []
  for path, p in zip(paths, probs):
    order = np.argsort(-p, kind="stable")[:k]
    rows.append({"path": path, "top_k": [{"label": labels[i], "index": int(i),
                                          "probability": float(p[i])} for i in order]})
  return rows


def write_predictions(path: str, rows: list[dict]) -> None:
  """rows as .json (a list) or .csv (one row per image); other suffixes are an error."""
  import csv  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  if path.endswith(".json"):
    with open(path, "w", encoding="utf-8") as f:
      json.dump(rows, f, indent=1)
    return
  if not path.endswith(".csv"):
    raise ValueError(f"--output {path!r}: use a .csv or .json file name.")
  k = max((len(r["top_k"]) for r in rows), default=0)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f)
    writer.writerow(["path"] + [f"{c}_{i + 1}" for i in range(k)
                                for c in ("label", "index", "probability")])
    for r in rows:
      writer.writerow([r["path"]] + [v for t in r["top_k"]
                                     for v in (t["label"], t["index"], f"{t['probability']:.6f}")])


def load_labels(num_classes: int, path: Optional[str] = None) -> list[str]:
  """Class names for a head of `num_classes` outputs (from `path` or the shipped lists)."""
  if path:
    with open(path, encoding="utf-8") as f:
      lines = [line.rstrip("\n") for line in f if line.strip()]
  elif num_classes in LABEL_FILES:
    text = importlib.resources.files("vit_jax").joinpath("labels", LABEL_FILES[num_classes])
    lines = text.read_text(encoding="utf-8").splitlines()
  else:
    return [f"class {i}" for i in range(num_classes)]
  names = [line.split("\t", 1)[-1] for line in lines]
  if len(names) != num_classes:
    raise ValueError(f"label file {path or LABEL_FILES[num_classes]} has {len(names)} names but "
                     f"the model has {num_classes} classes; pass a matching --labels file.")
  return names


def load_image(path: str, resolution: int) -> np.ndarray:
  """(resolution, resolution, 3) float32 in [-1, 1] from an image file (PIL, bilinear)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as img:
      img = img.convert("RGB").resize((resolution, resolution), Image.Resampling.BILINEAR)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read image {path!r}: {e}") from None
  return np.asarray(img, dtype=np.float32) / 127.5 - 1.0


def _head_classes(raw: dict) -> int:
  """Output count of the checkpoint's classification head; clear errors when it is unusable."""
  head = raw.get("head") or {}
  kernel = head.get("kernel")
  if kernel is None:
    raise ValueError("the checkpoint has no classification head ('head/kernel'); it is a "
                     "feature extractor. Use a checkpoint fine-tuned for classification.")
  if not np.any(kernel):
    raise ValueError("the checkpoint's classification head is all zeros (the original "
                     "ImageNet-21k releases ship zeroed heads), so its predictions are "
                     "meaningless. Use a fine-tuned checkpoint (e.g. an imagenet2012 one) or an "
                     "AugReg i21k checkpoint, whose heads are trained.")
  return int(np.shape(kernel)[-1])


def _init_shapes(model, resolution: int) -> dict:
  """Parameter shapes (no compute) of `model` at `resolution`, unboxed."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax.linen import meta  # pylint: disable=g-import-not-at-top
  x = jax.ShapeDtypeStruct((1, resolution, resolution, 3), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  return meta.unbox(variables["params"])


def checkpoint_resolution(model, raw: dict, reference: int = 224) -> int:
  """Input size the checkpoint's token grid corresponds to (reference if it cannot tell)."""
  from vit_jax import param_tree  # pylint: disable=g-import-not-at-top
  tokens = param_tree.patch_tokens(raw)
  ref_tokens = param_tree.patch_tokens(_init_shapes(model, reference))
  if not tokens or not ref_tokens:
    return reference
  side = reference * math.sqrt(tokens / ref_tokens)
  return int(round(side)) if abs(side - round(side)) < 1e-6 else reference


def load_params(model_name: str, location: str, *, num_classes: Optional[int],
                resolution: Optional[int], require_head: bool = True):
  """(model, params, resolution) for a checkpoint, its head kept; posemb resized if needed.

  require_head=False (inspection) also takes feature extractors and zero (i21k) heads.

  `location` is anything checkpoint.candidate_locations takes (an AugReg name or file name
  tries its Hugging Face copy first, then gs://, as the trainer does).
  """
  import jax  # pylint: disable=g-import-not-at-top

  from vit_jax import checkpoint, param_tree  # pylint: disable=g-import-not-at-top
  from vit_jax.models import registry
  config = registry.get_model_config(model_name)
  heads = param_tree.num_heads(config=config)
  given = os.fspath(location)
  location, raw = checkpoint.load_first(checkpoint.candidate_locations(given),
                                        lambda uri: checkpoint.load(uri, num_heads=heads))
  if location != given:
    print(f"AugReg checkpoint {given} -> {location}", file=sys.stderr)
  if require_head:
    found = _head_classes(raw)
  else:
    found = int(np.shape(raw["head"]["kernel"])[-1]) if "head" in raw else None
  if num_classes is not None and num_classes != found:
    raise ValueError(f"--num_classes {num_classes} but the checkpoint's head has {found} "
                     "classes; drop --num_classes or pass the matching checkpoint.")
  model = registry.create_model(model_name, found)
  resolution = resolution or checkpoint_resolution(model, raw)
  expected = _init_shapes(model, resolution)
  same = jax.tree.map(np.shape, expected) == jax.tree.map(np.shape, raw)
  if not same:  # Another resolution (or layout): let load_pretrained align and validate.
    from flax.linen import meta  # pylint: disable=g-import-not-at-top
    init = meta.unbox(model.init(jax.random.PRNGKey(0),
                                 np.zeros((1, resolution, resolution, 3), np.float32),
                                 train=False)["params"])
    raw = checkpoint.load_pretrained(pretrained_path=location, init_params=init,
                                     model_config=config)
  return model, raw, resolution


def load_own(*, checkpoint_path: Optional[str] = None, workdir: Optional[str] = None,
             step: Optional[int] = None, which: str = "raw") -> tuple[object, dict, int, list[str]]:
  """(model, params, resolution, class names) of a vit_jax export (with its sidecar) or of a
  run's workdir checkpoint (which='ema': its EMA params)."""
  from vit_jax import checkpoint, export  # pylint: disable=g-import-not-at-top
  if workdir is not None:
    params, config, _ = export.restore_params(workdir, step, which)
    arch = export.architecture(config)
  else:
    arch = export.read_architecture(checkpoint_path)
    if arch is None:
      raise ValueError(f"{checkpoint_path} has no architecture file "
                       f"{export.sidecar_path(checkpoint_path)} (vit_jax.export writes one); pass "
                       "--model NAME for a published architecture, or --workdir for a run.")
    from vit_jax import param_tree  # pylint: disable=g-import-not-at-top
    params = checkpoint.load(checkpoint_path,
                             num_heads=param_tree.num_heads(config=arch["model"]))
  model = export.model_from_architecture(arch)
  if checkpoint_path is not None and getattr(model, "scan_layers", False):
    params = checkpoint.stack_layers(params)  # Exports are per-layer; a scanned run stacks.
  expected = _init_shapes(model, int(arch["resolution"]))
  import jax  # pylint: disable=g-import-not-at-top
  if jax.tree.map(np.shape, expected) != jax.tree.map(np.shape, params):
    raise ValueError(f"the weights of {checkpoint_path or workdir} do not match the architecture "
                     "recorded beside them; export the run again.")
  return model, params, int(arch["resolution"]), list(arch.get("class_names") or [])


_APPLY_CACHE: dict[int, tuple[object, object]] = {}  # id(model) -> (model, jitted softmax apply)


def _softmax_apply(model):
  """One jitted softmax(apply) per model object, so repeated `predict` calls (a notebook
  classifying image after image) reuse its compilation. Flax modules are not hashable."""
  import jax  # pylint: disable=g-import-not-at-top
  hit = _APPLY_CACHE.get(id(model))
  if hit is None or hit[0] is not model:
    if len(_APPLY_CACHE) >= 4:
      _APPLY_CACHE.pop(next(iter(_APPLY_CACHE)))
    hit = (model, jax.jit(lambda p, x: jax.nn.softmax(model.apply({"params": p}, x,
                                                                  train=False))))
    _APPLY_CACHE[id(model)] = hit
  return hit[1]


def predict(model, params, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
  """Softmax probabilities (N, classes) of `images` (N, H, W, 3) in [-1, 1].

  Runs batches of min(batch_size, N) images; the last one is padded (and the padding's
  outputs dropped), so one compiled shape serves every batch."""
  apply = _softmax_apply(model)
  n = len(images)
  size = max(1, min(batch_size, n))
  out = []
  for i in range(0, n, size):
    batch = np.asarray(images[i:i + size])
    pad = size - len(batch)
    if pad:
      batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
    out.append(np.asarray(apply(params, batch))[:size - pad])
  return np.concatenate(out).astype(np.float64)


def format_row(row: dict) -> str:
  """'path' then one line '  0.81234  label  [index]' per top_k entry (see top_k_rows)."""
  return row["path"] + "".join(f"\n  {t['probability']:.5f}  {t['label']}  [{t['index']}]"
                               for t in row["top_k"])


def format_top_k(path: str, probs: np.ndarray, labels: Sequence[str], k: int) -> str:
  """'path' then k lines '  0.81234  label  [index]', most probable first."""
  return format_row(top_k_rows([path], [probs], labels, k)[0])


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m vit_jax.inference",
                              description="Top-k classes of images under a ViT/Mixer checkpoint.")
  p.add_argument("--model", default=None,
                 help="MODEL_CONFIGS name of a published checkpoint's architecture, e.g. ViT-B_16 "
                      "(not needed for vit_jax exports or --workdir)")
  p.add_argument("--checkpoint", default=None,
                 help="path, gs://, http(s)://, hf:// or an AugReg file name; or a vit_jax export")
  p.add_argument("--workdir", default=None, help="a vit_jax run directory (its checkpoint)")
  p.add_argument("--step", type=int, default=None, help="with --workdir: checkpoint step")
  p.add_argument("--params", choices=("raw", "ema"), default="raw",
                 help="with --workdir: the raw weights or their moving average (config.ema)")
  p.add_argument("--num_classes", type=int, default=None, help="check the head has this many")
  p.add_argument("--resolution", type=int, default=None,
                 help="input size (default: the checkpoint's training resolution)")
  p.add_argument("--top_k", type=int, default=5)
  p.add_argument("--labels", default=None, help="class-name file (default: shipped ImageNet lists)")
  p.add_argument("--batch_size", type=int, default=16)
  p.add_argument("--verbose", action="store_true", help="print tracebacks of errors")
  p.add_argument("--output", default=None,
                 help="write the top-k of every image to this .csv or .json instead of printing")
  p.add_argument("images", nargs="+", help="image files (any format PIL reads) or folders")
  args = p.parse_args(argv)
  if (args.checkpoint is None) == (args.workdir is None):
    p.error("pass exactly one of --checkpoint (a file or URI) and --workdir (a run directory)")
  if args.workdir is not None and args.model is not None:
    p.error("--model is for published checkpoints; a --workdir knows its own architecture")
  return args


def load_model(args, require_head: bool = True):
  """(model, params, resolution, class names or None) for parsed --model/--checkpoint/--workdir/
  --step/--num_classes/--resolution flags (also used by vit_jax.visualize)."""
  which = getattr(args, "params", "raw")
  if which != "raw" and args.workdir is None:
    raise ValueError("--params=ema reads a run's EMA weights: pass --workdir (an export holds "
                     "the weights it was exported with).")
  if args.workdir is not None or args.model is None:
    model, params, resolution, names = load_own(checkpoint_path=args.checkpoint,
                                                workdir=args.workdir, step=args.step, which=which)
    found = int(np.shape(params["head"]["kernel"])[-1]) if "head" in params else None
    if args.num_classes is not None and args.num_classes != found:
      raise ValueError(f"--num_classes {args.num_classes} but the model has {found} classes.")
    if args.resolution and args.resolution != resolution:
      raise ValueError(f"this model was trained at {resolution} px; drop --resolution (own "
                       "models are not resized here).")
    return model, params, resolution, names or None
  model, params, resolution = load_params(args.model, args.checkpoint,
                                          num_classes=args.num_classes, resolution=args.resolution,
                                          require_head=require_head)
  return model, params, resolution, None


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  from vit_jax import exits  # pylint: disable=g-import-not-at-top
  args = parse_args(argv)
  try:
    model, params, resolution, names = load_model(args)
    num_classes = int(np.shape(params["head"]["kernel"])[-1])
    labels = load_labels(num_classes, args.labels) if args.labels or not names else names
    if args.output and os.path.exists(args.output):
      raise FileExistsError(f"--output {args.output!r} already exists; choose another file.")
    paths = expand_images(args.images)
    k = min(args.top_k, num_classes)
    rows = []
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    size = max(1, args.batch_size)
    chunks = range(0, len(paths), size)
    for start in tqdm(chunks, desc="images", unit="batch", disable=len(chunks) <= 1,
                      file=sys.stderr):
      chunk = paths[start:start + size]
      probs = predict(model, params, np.stack([load_image(p, resolution) for p in chunk]), size)
      rows.extend(top_k_rows(chunk, probs, labels, k))
    if args.output:
      write_predictions(args.output, rows)
  except Exception as e:  # pylint: disable=broad-except  # One line (exits.py).
    status = exits.report(e, verbose=args.verbose)
    # A checkpoint that cannot be fetched (FetchError and other OSErrors) is bad input here.
    return exits.BAD_INPUT if isinstance(e, OSError) and status == exits.ERROR else status
  if args.output:
    print(f"Wrote the top-{k} classes of {len(rows)} images to {args.output}.")
  else:
    for row in rows:
      print(format_row(row))
  return 0


def run() -> None:
  """Console entry point."""
  sys.exit(main())


if __name__ == "__main__":
  run()
