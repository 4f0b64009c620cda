"""Which weights a command line runs: the flags that name them and the one resolver.

  --model NAME --checkpoint PATH_OR_URI    a published checkpoint: PATH_OR_URI is anything
                                           vit_jax.checkpoint.load reads (local .npz /
                                           .safetensors, gs://, http(s)://, hf://org/name) or an
                                           AugReg file name (checkpoint.load_from: its Hugging
                                           Face copy first, then gs://vit_models/augreg/...)
  --checkpoint model.npz                   a vit_jax export: its architecture is the sidecar
                                           model.json (export_formats.npz), so no --model
  --workdir W [--step N] [--params=ema]    a run's checkpoint (latest by default): only its
                                           params, or only their EMA, are restored
                                           (run_state.read_params, which exports use too)

`add_flags` puts these on an argparse parser (with --num_classes / --resolution where a
command line takes them) and `check_flags` refuses a bad combination; `resolve` (or
`from_args` for parsed flags) gives the `Weights`: the Flax model, host numpy params, input
resolution, class names, the run config of a workdir and where they came from. vit_jax.
inference, evaluate and visualize read their weights here, export through the workdir part of
`resolve` (run_state.read_params), so they agree on what a flag means. A published
checkpoint keeps its head (checked unless require_head=False) and has its position
embeddings resized when --resolution asks for another input size.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import linen as nn

from vit_jax import checkpoint, exits, param_tree
from vit_jax.export_formats import npz
from vit_jax.models import lit, registry
from vit_jax.run import run_state

PARAMS = tuple(run_state.PARAMS_FIELDS)  # --params choices: 'raw', 'ema'
EXACTLY_ONE = ("pass exactly one of --checkpoint (a file or URI) and --workdir (a run "
               "directory)")
MODEL_WITH_WORKDIR = "--model is for published checkpoints; a --workdir knows its own architecture"
EMA_WITHOUT_WORKDIR = ("--params=ema reads a run's EMA weights: pass --workdir (an export holds "
                       "the weights it was exported with).")


@dataclasses.dataclass(frozen=True)
class Weights:
  """A model with host params ready for `model.apply`, and where they came from."""
  model: nn.Module
  params: dict                                  # nested numpy arrays (host)
  resolution: int                               # input size the params are for
  class_names: Optional[list[str]]              # None: not recorded (published checkpoints)
  config: Optional[ml_collections.ConfigDict]   # the run's config (workdir only)
  source: str                                   # 'published', 'export' or 'workdir'
  location: str                                 # the file / URI read, or the workdir
  step: Optional[int] = None                    # workdir: the checkpoint step restored
  which: str = "raw"                            # workdir: 'raw' params or their 'ema'
  vocab: Optional[str] = None                   # image-text: the tokenizer file beside it

  @property
  def num_classes(self) -> Optional[int]:
    """Outputs of the classification head (None for a feature extractor)."""
    head = self.params.get("head") or {}
    return int(np.shape(head["kernel"])[-1]) if "kernel" in head else None


def add_flags(parser: argparse.ArgumentParser, *, num_classes: bool = False,
              resolution: bool = True, vocab: bool = False) -> None:
  """Adds --model, --checkpoint, --workdir, --step, --params (and --num_classes, --resolution,
  --vocab)."""
  parser.add_argument("--model", default=None,
                      help="MODEL_CONFIGS name of a published checkpoint's architecture, e.g. "
                           "ViT-B_16 (not needed for vit_jax exports or --workdir)")
  parser.add_argument("--checkpoint", default=None,
                      help="path, gs://, http(s)://, hf:// or an AugReg file name; or a vit_jax "
                           "export")
  parser.add_argument("--workdir", default=None, help="a vit_jax run directory (its checkpoint)")
  parser.add_argument("--step", type=int, default=None, help="with --workdir: checkpoint step")
  parser.add_argument("--params", choices=PARAMS, default="raw",
                      help="with --workdir: the raw weights or their moving average (config.ema)")
  if num_classes:
    parser.add_argument("--num_classes", type=int, default=None,
                        help="check the head has this many")
  if resolution:
    parser.add_argument("--resolution", type=int, default=None,
                        help="input size (default: the checkpoint's training resolution)")
  if vocab:
    parser.add_argument("--vocab", default=None,
                        help="image-text (LiT) models: the tokenizer vocabulary (default: the "
                             ".txt / .model published beside the weights)")


def _flag_error(model: Optional[str], checkpoint_path: Optional[str], workdir: Optional[str],
                which: str) -> Optional[str]:
  """What is wrong with a combination of the weight flags (None: nothing)."""
  if (checkpoint_path is None) == (workdir is None):
    return EXACTLY_ONE
  if workdir is not None and model is not None:
    return MODEL_WITH_WORKDIR
  if which not in PARAMS:
    return f"params={which!r} is unknown; use 'raw' or 'ema'."
  if which != "raw" and workdir is None:
    return EMA_WITHOUT_WORKDIR
  return None


def check_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
  """parser.error (usage, exit status 2) for a bad combination of the flags add_flags adds."""
  error = _flag_error(args.model, args.checkpoint, args.workdir, args.params)
  if error:
    parser.error(error)


def from_args(args: argparse.Namespace, *, require_head: bool = True) -> Weights:
  """`resolve` for flags add_flags added (--num_classes / --resolution when present)."""
  return resolve(model=args.model, checkpoint_path=args.checkpoint, workdir=args.workdir,
                 step=args.step, which=args.params,
                 num_classes=getattr(args, "num_classes", None),
                 resolution=getattr(args, "resolution", None), require_head=require_head,
                 vocab=getattr(args, "vocab", None))


def resolve(*, model: Optional[str] = None, checkpoint_path: Optional[str] = None,
            workdir: Optional[str] = None, step: Optional[int] = None, which: str = "raw",
            num_classes: Optional[int] = None, resolution: Optional[int] = None,
            require_head: bool = True, vocab: Optional[str] = None) -> Weights:
  """The weights the flags name: a published checkpoint (`model` set), a vit_jax export
  (`checkpoint_path` alone) or a run's `workdir` checkpoint (`step`, `which` params).

  num_classes: checked against the head. resolution: a published checkpoint is adapted to
  it (default: its training resolution); an own model must have been trained at it.
  require_head=False (inspection) also takes feature extractors and zero (i21k) heads.
  vocab (--vocab): the text tokenizer's vocabulary, the one rule for it: this file, else the
  one published beside an image-text checkpoint (Weights.vocab).
  """
  error = _flag_error(model, checkpoint_path, workdir, which)
  if error:
    raise exits.UserError(error)
  if model is not None and lit.is_lit(model):
    return _published_image_text(model, checkpoint_path, resolution=resolution, vocab=vocab)
  if model is not None:
    return _published(model, checkpoint_path, num_classes=num_classes, resolution=resolution,
                      require_head=require_head)
  weights = _from_workdir(workdir, step, which) if workdir is not None else _export(
      checkpoint_path)
  if num_classes is not None and num_classes != weights.num_classes:
    raise ValueError(f"--num_classes {num_classes} but the model has {weights.num_classes} "
                     "classes.")
  if resolution and resolution != weights.resolution:
    if getattr(weights.model, "posemb_grid", None) is None:
      raise ValueError(f"this model was trained at {weights.resolution} px; drop --resolution "
                       "(own models are not resized here; a FlexiViT or progressive-resolution "
                       "run's model interpolates its position embedding and takes any).")
    # Its position embedding has a fixed grid, interpolated in the forward: any resolution.
    weights = dataclasses.replace(weights, resolution=int(resolution))
  return dataclasses.replace(weights, vocab=vocab) if vocab else weights


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


def _init_shapes(model: nn.Module, resolution: int) -> dict:
  """Parameter ShapeDtypeStructs (no compute) of `model` at `resolution` (an image-text model:
  with its own `init_inputs`, images and tokens)."""
  shape = (1, resolution, resolution, 3)
  if lit.is_lit(model):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             **model.init_inputs(shape)))["params"]
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x)
  return variables["params"]


def _shapes(tree: Any) -> Any:
  return jax.tree.map(np.shape, tree)


def checkpoint_resolution(model: nn.Module, raw: dict, reference: int = 224) -> int:
  """Input size the checkpoint's token grid corresponds to (reference if it cannot tell)."""
  tokens = param_tree.patch_tokens(raw)
  ref_tokens = param_tree.patch_tokens(_init_shapes(model, reference))
  if not tokens or not ref_tokens:
    return reference
  side = reference * math.sqrt(tokens / ref_tokens)
  return int(round(side)) if abs(side - round(side)) < 1e-6 else reference


def _published(model_name: str, location: str, *, num_classes: Optional[int],
               resolution: Optional[int], require_head: bool) -> Weights:
  """A published checkpoint with its head kept; position embeddings resized if needed."""
  config = registry.get_model_config(model_name)
  heads = param_tree.num_heads(config=config)
  given = os.fspath(location)
  location, raw = checkpoint.load_from(given, lambda uri: checkpoint.load(uri, num_heads=heads))
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
  if _shapes(_init_shapes(model, resolution)) != _shapes(raw):
    # Another resolution (or layout): load_pretrained aligns and validates.
    init = model.init(jax.random.PRNGKey(0), np.zeros((1, resolution, resolution, 3), np.float32),
                      train=False)["params"]
    raw = checkpoint.load_pretrained(pretrained_path=location, init_params=init,
                                     model_config=config)
  return Weights(model, raw, resolution, None, None, "published", location)


def _published_image_text(model_name: str, location: str, *, resolution: Optional[int],
                          vocab: Optional[str]) -> Weights:
  """A published LiT file (both towers) with `vocab`, else the vocabulary beside it if
  there is one."""
  arch = lit.get_lit_config(model_name)
  size = int(arch.pp.size)
  if resolution and resolution != size:
    raise ValueError(f"{model_name} embeds images at {size} px (its pp.size); drop --resolution "
                     f"or pass --resolution {size}.")
  params = checkpoint.load_image_text(location)
  if vocab is None:
    try:
      vocab = checkpoint.fetch_vocab(location, arch.pp.tokenizer_name)
    except (OSError, ValueError):  # Not published beside it: the caller's --vocab is needed.
      vocab = None
  model = lit.LitModel(**arch)
  if _shapes(_init_shapes(model, size)) != _shapes(params):
    raise ValueError(f"{location} does not hold the weights of {model_name} (its arrays differ "
                     "from the architecture's); pass the --model its file was published as.")
  return Weights(model, params, size, None, None, "published", os.fspath(location), vocab=vocab)


def _export(path: str) -> Weights:
  """A vit_jax export: the .npz read with the architecture of its sidecar."""
  arch = npz.read_architecture(path)
  if arch is None:
    raise ValueError(f"{path} has no architecture file {npz.sidecar_path(path)} (vit_jax.export "
                     "writes one); pass --model NAME for a published architecture, or --workdir "
                     "for a run.")
  params = checkpoint.load(path, num_heads=param_tree.num_heads(config=arch["model"]))
  model = npz.model_from_architecture(arch)
  if getattr(model, "scan_layers", False):
    params = checkpoint.stack_layers(params)  # Exports are per-layer; a scanned run stacks.
  resolution = int(arch["resolution"])
  if _shapes(_init_shapes(model, resolution)) != _shapes(params):
    raise ValueError(f"the weights of {path} do not match the architecture recorded beside "
                     "them; export the run again.")
  return Weights(model, params, resolution, list(arch.get("class_names") or []) or None, None,
                 "export", os.fspath(path))


def _from_workdir(workdir: str, step: Optional[int], which: str) -> Weights:
  """The run's params (or EMA) at `step` (default: latest), restored without optimizer state."""
  params, config, step = run_state.read_params(workdir, step, which)
  arch = npz.architecture(config)
  model = npz.model_from_architecture(arch)
  resolution = int(arch["resolution"])
  if _shapes(_init_shapes(model, resolution)) != _shapes(params):
    raise ValueError(f"the checkpoint of step {step} in {workdir} does not match the model of "
                     "its config.json; was the workdir reused for another model?")
  return Weights(model, params, resolution, list(config.class_names or ()) or None, config,
                 "workdir", workdir, step, which,
                 vocab=str(config.pp.vocab) if config.pp.vocab else None)  # an image-text run's
