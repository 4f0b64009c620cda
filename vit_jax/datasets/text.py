"""Tokenizers and image preprocessing for LiT (image-text) models, Google's vit_jax.preprocess API.

Each class works on numpy batches (`__call__`) and inside a tf.data graph (`preprocess_tf`):

* `BertTokenizer`: lower-cased WordPiece; the [CLS] id, then the word pieces clipped to
  max_len - 1 and padded with 0 (the model recovers the mask from the zeros).
* `SentencepieceTokenizer`: SentencePiece with EOS appended; clipped to max_len - 1 and padded
  with EOS, so the last token is always EOS (the models pool it).
* `PreprocessImages`: uint8 image -> size x size (bilinear resize, or shorter side to `size`
  then a central crop) -> float32 in [-1, 1].

`get_pp` combines a tokenizer and `PreprocessImages` into one function for `Dataset.map`.
Vocabulary paths are read with tf.io.gfile (local or gs://). TensorFlow and tensorflow_text
are imported when a class is built, not when this module is imported.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:
  import tensorflow as tf

TOKENIZER_NAMES = ("bert", "sentencepiece")


def get_tokenizer(tokenizer_name: str) -> type:
  """The tokenizer class for `tokenizer_name` ('bert' or 'sentencepiece')."""
  classes = {"bert": BertTokenizer, "sentencepiece": SentencepieceTokenizer}
  if tokenizer_name not in classes:
    raise ValueError(f"unknown tokenizer {tokenizer_name!r}: use one of {TOKENIZER_NAMES}")
  return classes[tokenizer_name]


def model_tokenizer(pp: Mapping[str, Any], vocab_path: str) -> Any:
  """The tokenizer an image-text model was trained with: its pp's tokenizer_name on
  `vocab_path`, pp's max_len tokens per text (LitModel.pp, a zero-shot entry's settings)."""
  return get_tokenizer(pp["tokenizer_name"])(vocab_path=str(vocab_path),
                                             max_len=int(pp["max_len"]))


def _tensorflow_text() -> Any:
  """The tensorflow_text module, or an ImportError that says how to install it."""
  try:
    import tensorflow_text  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"the LiT tokenizers need tensorflow_text ({e}): pip install --no-deps -r "
        "requirements-nodeps.txt (--no-deps: its wheel asks for `tensorflow`, we install "
        "tensorflow-cpu)") from e
  return tensorflow_text


def _read_vocab(vocab_path: str, mode: str) -> Any:
  """The contents of a vocabulary file (str, or bytes for mode 'rb'), via tf.io.gfile."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  f = tf.io.gfile.GFile(vocab_path, mode)
  try:
    return f.read()
  except tf.errors.NotFoundError as e:
    raise FileNotFoundError(
        f"tokenizer vocabulary {vocab_path!r} not found: pass vocab_path= an existing vocabulary "
        "file (a local path or gs://...; the vocabulary that belongs to the model's "
        "checkpoint)") from e
  finally:
    f.close()


def _check_max_len(max_len: int) -> None:
  if not isinstance(max_len, (int, np.integer)) or max_len < 2:
    raise ValueError(f"max_len={max_len!r}: a tokenizer needs max_len >= 2 (the [CLS] or EOS "
                     "token plus at least one text token)")


@dataclasses.dataclass(frozen=True)
class BertTokenizer:
  """Lower-cased WordPiece tokens of fixed length max_len: [CLS], pieces, zero padding.

  `cls_token` is the line number of '[CLS]' in the vocabulary file (set on construction).
  """

  vocab_path: str
  max_len: int
  cls_token: int = dataclasses.field(init=False)
  _tokenizer: Any = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tensorflow_text = _tensorflow_text()
    _check_max_len(self.max_len)
    # The lookup table numbers the file's lines, as split on '\n' here.
    words = _read_vocab(self.vocab_path, "r").split("\n")
    if "[CLS]" not in words:
      raise ValueError(f"tokenizer vocabulary {self.vocab_path!r} has no '[CLS]' line: a BERT "
                       "vocabulary (one word piece per line) is needed for tokenizer 'bert'")
    tokenizer = tensorflow_text.BertTokenizer(
        self.vocab_path, token_out_type=tf.int32, lower_case=True)
    object.__setattr__(self, "cls_token", words.index("[CLS]"))
    object.__setattr__(self, "_tokenizer", tokenizer)

  def _tokenize_batch(self, texts: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    # [batch, words, pieces] -> [batch, pieces], then clip / zero-pad to max_len - 1.
    pieces = self._tokenizer.tokenize(texts).merge_dims(1, 2)
    pieces = pieces.to_tensor(default_value=0, shape=[None, self.max_len - 1])
    cls = tf.fill([tf.shape(pieces)[0], 1], tf.constant(self.cls_token, pieces.dtype))
    return tf.concat([cls, pieces], axis=1)

  def preprocess_tf(self, text: tf.Tensor) -> tf.Tensor:
    """Tokens (int32, [max_len]) of one scalar string tensor, inside a TensorFlow graph."""
    return self._tokenize_batch(text[None])[0]

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Tokens (int32, [len(texts), max_len]) of a batch of texts."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return self._tokenize_batch(tf.constant(list(texts), tf.string)).numpy()


@dataclasses.dataclass(frozen=True)
class SentencepieceTokenizer:
  """SentencePiece tokens of fixed length max_len whose last token is always EOS.

  Texts are clipped to max_len - 1 tokens and padded with EOS (`eos_token`, the id of '</s>').
  """

  vocab_path: str
  max_len: int
  eos_token: int = dataclasses.field(init=False)
  _tokenizer: Any = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    tensorflow_text = _tensorflow_text()
    _check_max_len(self.max_len)
    model = _read_vocab(self.vocab_path, "rb")
    tokenizer = tensorflow_text.SentencepieceTokenizer(model=model, add_eos=True)
    object.__setattr__(self, "eos_token", int(tokenizer.string_to_id("</s>")))
    object.__setattr__(self, "_tokenizer", tokenizer)

  def preprocess_tf(self, text: tf.Tensor | str) -> tf.Tensor:
    """Tokens (int32, [max_len]) of one text (a scalar string tensor), inside a TF graph."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tokens = self._tokenizer.tokenize(text)[:self.max_len - 1]
    # At least one EOS of padding: the last token is EOS even for clipped texts.
    return tf.pad(tokens, [[0, self.max_len - tf.shape(tokens)[0]]],
                  constant_values=self.eos_token)

  def __call__(self, texts: Sequence[str]) -> np.ndarray:
    """Tokens (int32, [len(texts), max_len]) of a batch of texts, each tokenized on its own."""
    return np.stack([np.asarray(self.preprocess_tf(text)) for text in texts])


@dataclasses.dataclass(frozen=True)
class PreprocessImages:
  """uint8 images -> float32 size x size images in [-1, 1].

  crop=False resizes to size x size (aspect ratio not kept); crop=True resizes the shorter side
  to `size` (aspect ratio kept, the other side rounded) and takes the central size x size crop.
  """

  size: int
  crop: bool = False

  def preprocess_tf(self, image: tf.Tensor) -> tf.Tensor:
    """One [height, width, channels] uint8 image tensor, inside a TensorFlow graph."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if image.dtype != tf.uint8:
      raise ValueError(f"PreprocessImages takes uint8 images (values 0..255), got {image.dtype}: "
                       "decode the image without converting it to float")
    if self.crop:
      height = tf.cast(tf.shape(image)[0], tf.float32)
      width = tf.cast(tf.shape(image)[1], tf.float32)
      scale = self.size / tf.minimum(height, width)
      new_size = tf.cast(tf.round(tf.stack([height * scale, width * scale])), tf.int32)
      resized = tf.image.resize(image, new_size, method="bilinear")
      top = (new_size[0] - self.size) // 2
      left = (new_size[1] - self.size) // 2
      resized = tf.image.crop_to_bounding_box(resized, top, left, self.size, self.size)
    else:
      resized = tf.image.resize(image, [self.size, self.size], method="bilinear")
    # Back to whole uint8 values first (truncating), as the published models were fed.
    pixels = tf.cast(tf.cast(resized, tf.uint8), tf.float32)
    return pixels / 255 * 2 - 1

  def __call__(self, images: Sequence[np.ndarray]) -> np.ndarray:
    """A batch of uint8 images (each [height, width, channels]) -> [n, size, size, channels]."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return np.stack([self.preprocess_tf(tf.constant(image)).numpy() for image in images])


def get_pp(*, tokenizer_name: str, vocab_path: str, max_len: int, size: int,
           crop: bool = False) -> Callable[[dict], dict]:
  """A function for `tf.data.Dataset.map`: 'image' -> preprocessed image, 'text' -> 'tokens'.

  Each key is processed only when present; the other features pass through unchanged.
  """
  tokenizer = get_tokenizer(tokenizer_name)(vocab_path=vocab_path, max_len=max_len)
  preprocess_images = PreprocessImages(size=size, crop=crop)

  def pp(features: dict) -> dict:
    features = dict(features)
    if "image" in features:
      features["image"] = preprocess_images.preprocess_tf(features["image"])
    if "text" in features:
      features["tokens"] = tokenizer.preprocess_tf(features["text"])
    return features

  return pp


BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # [PAD] = id 0: padding


def wordpiece_vocab(texts: Sequence[str]) -> list[str]:
  """A whole-word BERT vocabulary covering `texts`: the special tokens (id 0 = [PAD]), then the
  distinct lower-cased words and punctuation marks, sorted (as BERT's basic tokenizer splits
  them, so no text of `texts` meets [UNK]). For training a text tower from scratch offline."""
  words = set()
  for line in texts:
    words.update(re.findall(r"\w+|[^\w\s]", str(line).lower()))
  return list(BERT_SPECIAL_TOKENS) + sorted(words - set(BERT_SPECIAL_TOKENS))


def write_wordpiece_vocab(texts: Sequence[str], path: str) -> str:
  """Writes wordpiece_vocab(texts) to `path` (one piece per line); refuses an existing file."""
  if os.path.exists(path):
    raise FileExistsError(f"{path} already exists; choose another vocabulary path.")
  with open(path, "w", encoding="utf-8") as f:
    f.write("\n".join(wordpiece_vocab(texts)) + "\n")
  return path
