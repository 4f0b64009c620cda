"""Checks a run's data against its config before anything is compiled.

Compiling a large model takes minutes; a wrong class count or an unreadable split found at
step 1 wastes them and surfaces as an XLA shape error. `check(config, info)` runs after the
splits were opened (input_pipeline.get_dataset_info: every split the run reads exists) and
raises one exits.UserError that says what to change:
  * a config that fine-tunes (require_pretrained, e.g. configs/finetune_llrd.py) names weights;
  * the head's class count (config.num_classes) equals the dataset's;
  * an image-text model trains on image-text data (captions, or labels made captions by
    config.input.caption_templates) with a contrastive loss, and its tokenizer reads the
    vocabulary (the first caption is tokenized);
  * the first example of the train and of the eval split decodes with the run's
    preprocessing (it reads two examples, not the data);
  * image folders: an eval split missing some of the train split's classes is reported
    (a warning: accuracy is still well defined).
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from vit_jax import batching, exits
from vit_jax.datasets import captions, mixture, naflex, pipeline, preprocess
from vit_jax.datasets.sources import open_source
from vit_jax.models import factory, lit
from vit_jax.training import contrastive


def check(config, info, warn: Callable[[str], None] = logging.warning) -> None:
  """Raises exits.UserError on the first problem (module docstring)."""
  if config.require_pretrained and not (config.pretrained_path or config.model_or_filename):
    raise exits.UserError(
        "this config fine-tunes pretrained weights (config.require_pretrained) but names none; "
        "pass --config.pretrained_path=FILE_OR_URI (or --config.model_or_filename=NAME), or "
        "--config.require_pretrained=False to train from scratch.")
  dataset = config.dataset
  image_text = _check_image_text(config)
  if (not image_text and config.num_classes is not None
      and int(config.num_classes) != info.num_classes):
    raise exits.UserError(
        f"config.num_classes={config.num_classes} but dataset {dataset!r} has "
        f"{info.num_classes} classes; pass --config.num_classes={info.num_classes} (or leave "
        "it unset to take the dataset's count).")
  if batching.packed_run(config):  # packed sequences: the settings and augmentations they take
    try:
      naflex.settings_from_config(config)
    except ValueError as e:
      raise exits.UserError(str(e)) from None
  opts = preprocess.options_from_config(config.pp)
  rng = np.random.default_rng(0)
  train = lambda x: preprocess.train_image(x, opts, rng)  # noqa: E731
  reads = [(m.dataset, m.split, train) for m in mixture.sources(config)]
  if reads:  # a mixture: its label spaces, then each source's first example
    try:
      pipeline.open_mixture(config, 0)
    except ValueError as e:
      raise exits.UserError(str(e)) from None
  else:
    reads = [(dataset, config.train_split, train)]
  reads.append((dataset, config.eval_split, lambda x: preprocess.eval_image(x, opts)))
  for dataset, split, decode in reads:
    source, source_info = open_source(config, split, dataset)
    if not len(source):
      raise exits.UserError(f"split {split!r} of dataset {dataset!r} is empty; check "
                            "config.train_split / config.eval_split / config.input.data.")
    element = source[0]
    image_key, label_key = source_info.keys
    try:
      image = decode(element[image_key])
    except Exception as e:  # pylint: disable=broad-except
      where = element.get("path", f"example 0 of {split!r}") if hasattr(element, "get") else split
      raise exits.UserError(f"cannot decode {where} of dataset {dataset!r} with the run's "
                            f"preprocessing (pp.train={config.pp.train!r}, pp.crop="
                            f"{config.pp.crop}): {e}") from e
    if image.shape != (opts.crop, opts.crop, 3):
      raise exits.UserError(f"preprocessing gave images of shape {image.shape} for split "
                            f"{split!r}, expected ({opts.crop}, {opts.crop}, 3); check config.pp.")
    if source_info.captions_key:
      continue
    label = int(element[label_key])
    if not 0 <= label < info.num_classes:
      raise exits.UserError(f"split {split!r} has label {label}, outside [0, {info.num_classes}).")
  _check_folder_classes(config, warn)


def _check_image_text(config) -> bool:
  """True for an image-text run whose model, data, loss and tokenizer agree (the first
  caption is tokenized); one UserError otherwise; False for a classification run."""
  model, data = factory.is_image_text_run(config), pipeline.is_image_text_data(config)
  if config.input.image_embeddings and not model:
    raise exits.UserError("config.input.image_embeddings precomputes an image-text model's "
                          "image embeddings (LiT); this run trains the image model "
                          f"{config.model_name!r}: unset it.")
  if not model and not data:
    return False
  if model and not data:
    raise exits.UserError(
        f"config.model_name={config.model_name!r} is an image-text model, but "
        f"{config.dataset!r} has labels, not captions: give a caption dataset (TFDS "
        "coco_captions, a folder with captions.jsonl / .csv, WebDataset .tar shards) or turn "
        "the labels into captions with --config.input.caption_templates=\"('a photo of a "
        "{}.',)\".")
  if data and not model:
    raise exits.UserError(
        f"{config.dataset!r} gives image-text pairs, but config.model_name="
        f"{config.model_name!r} is an image classifier; train an image-text model (one of "
        f"{sorted(lit.LIT_CONFIGS)}, e.g. --config=configs/siglip.py).")
  if config.loss not in contrastive.LOSSES:
    raise exits.UserError(f"config.loss={config.loss!r}: an image-text model trains with one of "
                          f"{contrastive.LOSSES}; pass --config.loss=sigmoid_contrastive.")
  settings = pipeline.text_settings(config)
  source, info = open_source(config, config.train_split)
  source, key = pipeline.image_text_source(config, source, info)
  try:
    first = captions.element_captions(source[0], key)
    settings.tokenize(first[:1])
  except (OSError, ValueError) as e:
    raise exits.UserError(f"cannot tokenize the captions of {config.dataset!r} with "
                          f"config.pp.tokenizer={settings.tokenizer!r} on config.pp.vocab="
                          f"{settings.vocab!r}: {e}") from e
  return True


def _check_folder_classes(config, warn) -> None:
  import os  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(str(config.dataset)):
    return
  train, _ = open_source(config, config.train_split)
  evaluation, _ = open_source(config, config.eval_split)
  train_labels = set(getattr(getattr(train, "source", train), "labels", []))
  eval_labels = set(getattr(getattr(evaluation, "source", evaluation), "labels", []))
  names = getattr(getattr(train, "source", train), "class_names", ())
  missing = sorted(names[i] for i in train_labels - eval_labels if i < len(names))
  if missing and eval_labels:
    warn(f"eval split {config.eval_split!r} of {config.dataset} has no images of "
         f"{len(missing)} train class(es): {missing[:10]}.")
