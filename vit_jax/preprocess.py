"""Google's `vit_jax.preprocess` path: the LiT tokenizers and image preprocessing
(vit_jax/datasets/text.py; TensorFlow is imported when a tokenizer or get_pp is built)."""
from vit_jax.datasets.text import (  # noqa: F401
  BertTokenizer,
  PreprocessImages,
  SentencepieceTokenizer,
  get_pp,
  get_tokenizer,
)

__all__ = ["BertTokenizer", "PreprocessImages", "SentencepieceTokenizer", "get_pp",
           "get_tokenizer"]
