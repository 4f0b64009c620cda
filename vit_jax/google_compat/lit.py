"""Google's `LitModel` and `get_model`: the pure LiT modules (models/lit.py) with the methods
Google's LiT Colab calls -- load_variables, vocab_path, get_tokenizer, get_image_preprocessing,
get_pp -- which need the checkpoint layer and TensorFlow, so they live here, above both.

`vit_jax.models.LitModel` and `vit_jax.models.get_model('LiT-...')` resolve to these.

Where the files come from: load_variables(path) reads `path` (local, gs://, https://);
without a path it reads ./<model_name>.npz when that exists (Google's local copy), else
gs://vit_models/lit/<model_name>.npz (copied to ./ when cache=True, as Google's). The
vocabulary is the file beside the weights last loaded for this model name (X.txt for the
BERT models, X.model for the sentencepiece ones), else ./<model_name>.<ext>, else the
published one beside gs://vit_models/lit/; a remote one is fetched into the checkpoint cache.
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Callable

from vit_jax.checkpoint import image_text
from vit_jax.datasets import text
from vit_jax.models import lit as lit_models, registry

BASE_PATH = "gs://vit_models/lit"
# model_name -> where its weights were last loaded from (the vocabulary is read beside them).
_LOADED_FROM: dict[str, str] = {}


class LitModel(lit_models.LitModel):
  """models.lit.LitModel with Google's loading and preprocessing methods."""

  def load_variables(self, path: str | None = None, cache: bool = True) -> dict[str, Any]:
    """{'params': both towers and t} from `path` or the published file (module doc)."""
    origin = path
    if path is None:
      local = f"{self.model_name}.npz"
      path = origin = local if os.path.exists(local) else f"{BASE_PATH}/{self.model_name}.npz"
      if path != local:
        print("Loading params from cloud:", path)
        if cache:  # Google's local copy; the vocabulary stays read beside the origin.
          fetched = image_text.fetch(path)
          shutil.copyfile(fetched, local + ".tmp")
          os.replace(local + ".tmp", local)
          path = local
    _LOADED_FROM[self.model_name] = os.fspath(origin)
    return {"params": image_text.load_image_text(path)}

  @property
  def vocab_path(self) -> str:
    """A local path of this model's tokenizer vocabulary (module doc: where it is looked for)."""
    name = self.pp["tokenizer_name"]
    loaded = _LOADED_FROM.get(self.model_name)
    if loaded is not None:
      return image_text.fetch_vocab(loaded, name)
    local = image_text.vocab_location(f"{self.model_name}.npz", name)
    if os.path.exists(local):
      return local
    return image_text.fetch_vocab(f"{BASE_PATH}/{self.model_name}.npz", name)

  def get_tokenizer(self) -> Callable[..., Any]:
    """The tokenizer the model was trained with (texts -> (n, pp.max_len) int32 tokens)."""
    return text.model_tokenizer(self.pp, self.vocab_path)

  def get_image_preprocessing(self, crop: bool = False) -> Callable[..., Any]:
    """Images (any sizes) -> (n, pp.size, pp.size, 3) float32 in [-1, 1]."""
    return text.PreprocessImages(size=self.pp["size"], crop=crop)

  def get_pp(self, crop: bool = False) -> Callable[..., Any]:
    """A tf.data map function: 'image' resized to pp.size, 'texts' tokenized if present."""
    return text.get_pp(tokenizer_name=self.pp["tokenizer_name"], vocab_path=self.vocab_path,
                       max_len=self.pp["max_len"], size=self.pp["size"], crop=crop)


def get_model(name: str, **kwargs: Any):
  """Google's factory: a LitModel for 'LiT-...' names, else the image model (registry)."""
  if lit_models.is_lit(name):
    return LitModel(**lit_models.get_lit_config(name), **kwargs)
  return registry.get_model(name, **kwargs)
