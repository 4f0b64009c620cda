"""Tests of vit_jax.datasets.text (Google's vit_jax.preprocess API): WordPiece against
hand-computed ids, SentencePiece against the sentencepiece package on a model trained here,
image preprocessing against numpy block means."""
from __future__ import annotations

import io
import pathlib
from unittest import mock

import numpy as np
import pytest
import sentencepiece
import tensorflow as tf

from vit_jax import exits, preprocess
from vit_jax.datasets import text

GOOGLE_VOCAB = "[PAD]\n[CLS]\nsome\ntest\nwords"  # Google's test vocabulary (no [UNK]).
# A BERT vocabulary for hand-computed cases: the id of a piece is its line number.
BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "un", "##aff", "##able", "man", ",",
              ".", "!", "he"]
SENTENCES = [
    "a small cat sat on the mat",
    "the dog ran to the park",
    "a photo of a cat",
    "a photo of a dog",
    "two birds sat on a wire",
    "the sun is bright today",
]
EOS_ID = 1  # The id the sentencepiece model below gives '</s>'.


def _write(path: pathlib.Path, content: str) -> str:
  path.write_text(content)
  return str(path)


@pytest.fixture(scope="module")
def spm_path(tmp_path_factory) -> str:
  """A tiny unigram SentencePiece model trained on SENTENCES (unk 0, eos 1, no bos/pad)."""
  model = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(SENTENCES), model_writer=model, vocab_size=40,
      model_type="unigram", unk_id=0, eos_id=EOS_ID, bos_id=-1, pad_id=-1,
      hard_vocab_limit=False, minloglevel=2)
  path = tmp_path_factory.mktemp("spm") / "tiny.model"
  path.write_bytes(model.getvalue())
  return str(path)


def _pieces(path: str, texts: list[str]) -> list[list[int]]:
  """Reference ids from the sentencepiece package itself (no EOS)."""
  processor = sentencepiece.SentencePieceProcessor(model_file=path)
  assert processor.eos_id() == EOS_ID
  return [processor.encode(t) for t in texts]


def test_google_path_re_exports_the_datasets_names():
  for name in preprocess.__all__:
    assert getattr(preprocess, name) is getattr(text, name)
  assert preprocess.get_tokenizer("bert") is text.BertTokenizer
  assert preprocess.get_tokenizer("sentencepiece") is text.SentencepieceTokenizer
  with pytest.raises(ValueError, match="unknown tokenizer 'wordpiece'.*'bert'"):
    preprocess.get_tokenizer("wordpiece")


def test_bert_tokenizer_on_googles_vocabulary(tmp_path):
  path = _write(tmp_path / "vocab.txt", GOOGLE_VOCAB)
  tokenizer = preprocess.BertTokenizer(vocab_path=path, max_len=3)
  assert tokenizer.cls_token == 1
  # 'xxx' is out of a vocabulary without [UNK]: tensorflow_text's one OOV bucket, id 5.
  tokens = tokenizer(["some", "test", "words", "xxx"])
  assert tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens, [[1, 2, 0], [1, 3, 0], [1, 4, 0], [1, 5, 0]])


def test_bert_wordpieces_of_a_sentence_by_hand(tmp_path):
  path = _write(tmp_path / "vocab.txt", "\n".join(BERT_VOCAB) + "\n")
  sentence = "The Unaffable MAN, hé!"  # lower-cased, accent stripped, punctuation split off
  # [CLS] the un ##aff ##able man , he !
  pieces = [2, 4, 5, 6, 7, 8, 9, 12, 11]
  tokenizer = text.BertTokenizer(path, max_len=12)
  assert tokenizer.cls_token == 2
  np.testing.assert_array_equal(
      tokenizer([sentence, "zzz qqq the"]),
      [pieces + [0, 0, 0], [2, 1, 1, 4] + [0] * 8])  # unknown words -> [UNK] (1)
  # Clipped to max_len: [CLS] and the first five pieces.
  np.testing.assert_array_equal(text.BertTokenizer(path, max_len=6)([sentence]), [pieces[:6]])
  # Inside a graph: one scalar string.
  graph = tf.function(tokenizer.preprocess_tf)
  np.testing.assert_array_equal(graph(tf.constant(sentence)).numpy(), pieces + [0, 0, 0])


@mock.patch("tensorflow_text.SentencepieceTokenizer")
@mock.patch("tensorflow.io.gfile.GFile")
def test_sentencepiece_tokenizer_mocked_as_google_tests_it(gfile_patch, tokenizer_patch):
  eos = 7
  gfile_patch.return_value.read.return_value = "test vocab"
  tokenizer_patch.return_value.string_to_id.return_value = eos
  tokenizer_patch.return_value.tokenize.side_effect = (
      tf.constant([1, eos], tf.int32),
      tf.constant([2, 3, eos], tf.int32),
      tf.constant([4, 5, 6, eos], tf.int32),
  )
  tokenizer = preprocess.SentencepieceTokenizer(vocab_path="test_path", max_len=3)
  gfile_patch.assert_called_once_with("test_path", "rb")
  tokenizer_patch.assert_called_once_with(model="test vocab", add_eos=True)
  tokenizer_patch.return_value.string_to_id.assert_called_once_with("</s>")
  assert tokenizer.eos_token == eos

  tokens = tokenizer(["some", "test", "words"])
  assert tokenizer_patch.return_value.tokenize.call_args_list == [
      mock.call("some"), mock.call("test"), mock.call("words")]
  np.testing.assert_array_equal(tokens, [[1, eos, eos], [2, 3, eos], [4, 5, eos]])


def test_sentencepiece_tokens_match_the_sentencepiece_package(spm_path):
  texts = ["a cat", "the dog sat", "a photo of the park"]
  reference = _pieces(spm_path, texts)
  max_len = max(len(r) for r in reference) + 3
  tokenizer = text.SentencepieceTokenizer(spm_path, max_len=max_len)
  assert tokenizer.eos_token == EOS_ID
  tokens = tokenizer(texts)
  assert tokens.dtype == np.int32 and tokens.shape == (3, max_len)
  for row, ids in zip(tokens, reference):
    # The text's pieces, its EOS, then EOS padding.
    np.testing.assert_array_equal(row, ids + [EOS_ID] * (max_len - len(ids)))


def test_sentencepiece_clipping_keeps_eos_last(spm_path):
  long_text = " ".join(SENTENCES)
  (ids,) = _pieces(spm_path, [long_text])
  assert len(ids) > 8
  for max_len in (2, 5, 8):
    tokens = text.SentencepieceTokenizer(spm_path, max_len=max_len)([long_text])
    np.testing.assert_array_equal(tokens, [ids[:max_len - 1] + [EOS_ID]])
  # Exactly max_len - 1 pieces: the tokenizer's own EOS is clipped, the padding puts one back.
  exact = text.SentencepieceTokenizer(spm_path, max_len=len(ids) + 1)([long_text])
  np.testing.assert_array_equal(exact, [ids + [EOS_ID]])


def _block_means(image: np.ndarray, factor: int) -> np.ndarray:
  h, w, c = image.shape
  return image.reshape(h // factor, factor, w // factor, factor, c).astype(np.float64).mean(
      axis=(1, 3))


def _to_range(pixels: np.ndarray) -> np.ndarray:
  return np.floor(pixels) / 255 * 2 - 1  # truncated to uint8 values, then to [-1, 1]


def test_preprocess_images_against_block_means():
  # Halving with bilinear (half-pixel centres, no antialiasing) averages 2x2 blocks.
  rng = np.random.default_rng(0)
  square = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
  wide = rng.integers(0, 256, (8, 16, 3), dtype=np.uint8)
  out = text.PreprocessImages(size=4)([square])
  assert out.dtype == np.float32 and out.shape == (1, 4, 4, 3)
  np.testing.assert_allclose(out[0], _to_range(_block_means(square, 2)), atol=1e-6)
  # crop: the short side 8 -> 4 (the long one 16 -> 8), then the central 4 columns.
  out = text.PreprocessImages(size=4, crop=True)([wide])
  np.testing.assert_allclose(out[0], _to_range(_block_means(wide, 2))[:, 2:6], atol=1e-6)
  extremes = np.stack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4, 3), 255, np.uint8)])
  np.testing.assert_array_equal(text.PreprocessImages(size=4)(extremes)[:, 0, 0, 0], [-1, 1])


def test_preprocess_images_borders_resized_or_cropped():
  """Google's case: white images with black borders on the long side."""
  portrait = np.full((16, 10, 3), 255, np.uint8)
  portrait[:2] = portrait[-2:] = 0
  landscape = np.ascontiguousarray(portrait.transpose(1, 0, 2))
  resized = preprocess.PreprocessImages(size=4, crop=False)([portrait, landscape])
  assert resized.shape == (2, 4, 4, 3) and resized.mean() < 1.0
  cropped = preprocess.PreprocessImages(size=4, crop=True)([portrait, landscape])
  assert cropped.shape == (2, 4, 4, 3) and cropped.mean() == 1.0


def test_preprocess_images_rejects_float_images():
  with pytest.raises(ValueError, match="uint8"):
    text.PreprocessImages(size=4).preprocess_tf(tf.zeros([8, 8, 3], tf.float32))


def _batch(pp, features: dict) -> dict:
  ds = tf.data.Dataset.from_tensor_slices(features).map(pp).batch(2)
  return next(iter(ds.as_numpy_iterator()))


def _dtypes_shapes(batch: dict) -> dict:
  return {k: (v.dtype, v.shape) for k, v in batch.items()}


def test_get_pp_bert_on_a_dataset(tmp_path):
  path = _write(tmp_path / "vocab.txt", GOOGLE_VOCAB)
  pp = preprocess.get_pp(tokenizer_name="bert", vocab_path=path, max_len=3, size=4)
  images = tf.ones([2, 10, 10, 3], tf.uint8)
  batch = _batch(pp, {"text": tf.constant(["test", "words"]), "image": images, "id": [7, 8]})
  assert _dtypes_shapes(batch) == {
      "image": (np.float32, (2, 4, 4, 3)), "text": (object, (2,)),
      "tokens": (np.int32, (2, 3)), "id": (np.int32, (2,))}
  np.testing.assert_array_equal(batch["tokens"], [[1, 3, 0], [1, 4, 0]])
  # Only the keys present are processed.
  assert set(_batch(pp, {"image": images})) == {"image"}
  assert set(_batch(pp, {"text": tf.constant(["test", "some"])})) == {"text", "tokens"}


@mock.patch("tensorflow_text.SentencepieceTokenizer")
@mock.patch("tensorflow.io.gfile.GFile")
def test_get_pp_sentencepiece_mocked(gfile_patch, tokenizer_patch):
  gfile_patch.return_value.read.return_value = "test vocab"
  tokenizer_patch.return_value.string_to_id.return_value = 7
  tokenizer_patch.return_value.tokenize.side_effect = (
      tf.constant([1, 7], tf.int32), tf.constant([2, 3, 7], tf.int32))
  pp = preprocess.get_pp(tokenizer_name="sentencepiece", vocab_path="test", max_len=3, size=4)
  batch = _batch(pp, {"text": tf.constant(["test", "test"]),
                      "image": tf.ones([2, 10, 10, 3], tf.uint8)})
  assert _dtypes_shapes(batch) == {
      "image": (np.float32, (2, 4, 4, 3)), "text": (object, (2,)),
      "tokens": (np.int32, (2, 3))}


def test_get_pp_sentencepiece_in_a_graph_matches_eager(spm_path):
  texts = ["a cat sat", "the sun is bright today and the dog ran to the park"]
  pp = text.get_pp(tokenizer_name="sentencepiece", vocab_path=spm_path, max_len=6, size=4,
                   crop=True)
  batch = _batch(pp, {"text": tf.constant(texts)})
  np.testing.assert_array_equal(
      batch["tokens"], text.SentencepieceTokenizer(spm_path, max_len=6)(texts))
  assert (batch["tokens"][:, -1] == EOS_ID).all()


@pytest.mark.parametrize("name", ["bert", "sentencepiece"])
def test_missing_vocabulary_is_one_clear_error(tmp_path, name):
  missing = str(tmp_path / "no_such_vocab.txt")
  with pytest.raises(FileNotFoundError) as info:
    text.get_pp(tokenizer_name=name, vocab_path=missing, max_len=4, size=4)
  message = str(info.value)
  assert missing in message and "vocab_path=" in message and "\n" not in message
  assert exits.status_for(info.value) == exits.BAD_INPUT


def test_bad_vocabulary_and_max_len_are_clear_errors(tmp_path):
  path = _write(tmp_path / "vocab.txt", "[PAD]\nsome\nwords\n")
  with pytest.raises(ValueError, match=r"no '\[CLS\]' line"):
    text.BertTokenizer(path, max_len=4)
  path = _write(tmp_path / "vocab2.txt", GOOGLE_VOCAB)
  with pytest.raises(ValueError, match="max_len >= 2"):
    text.BertTokenizer(path, max_len=1)
