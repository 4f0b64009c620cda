"""Image-text batches of the input pipeline: captions drawn per stream position, tokens of the
run's tokenizer, the same batches for any process count and after an O(1) resume."""
import collections
import json
import os

import numpy as np
import pytest
from helpers import tiny_image_text_config
from PIL import Image

from vit_jax.datasets import pipeline, sources, text


@pytest.fixture
def config(data_dir):
  return tiny_image_text_config(data_dir)


def _caption_tokens(config):
  """Every caption the labelled digits can get, tokenized: {tokens tuple: (label, template)}."""
  settings = pipeline.text_settings(config)
  out = {}
  for t, template in enumerate(config.input.caption_templates):
    names = [template.format(n) for n in config.input.caption_classnames]
    for label, row in enumerate(settings.tokenize(names)):
      out[tuple(row)] = (label, t)
  return out


def test_digits_with_templates_give_images_and_tokens_of_one_caption_each(config):
  it = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  known = _caption_tokens(config)
  templates = collections.Counter()
  for _ in range(3):
    batch = next(it)
    assert set(batch) == {"image", "tokens"}
    assert batch["image"].shape == (32, 8, 8, 3) and batch["tokens"].shape == (32, 8)
    assert batch["tokens"].dtype == np.int32
    for row in batch["tokens"]:
      templates[known[tuple(row)][1]] += 1                 # a real caption, exactly
  assert len(templates) == len(config.input.caption_templates)  # the draw varies
  it.close()


def test_two_processes_concatenate_to_one_and_a_resume_is_exact(config):
  whole = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  batches = [next(whole) for _ in range(3)]
  halves = [pipeline.create_train_iterator(config, process_index=p, process_count=2)
            for p in (0, 1)]
  for i in range(3):
    parts = [next(h) for h in halves]
    for key in ("image", "tokens"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), batches[i][key])
  resumed = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  resumed.set_state(dict(whole.get_state(), step=2))
  np.testing.assert_array_equal(next(resumed)["tokens"], batches[2]["tokens"])
  for it in [whole, resumed, *halves]:
    it.close()


def test_a_caption_folder_draws_each_of_an_images_captions(tmp_path, data_dir):
  split = tmp_path / "train"
  split.mkdir()
  rows = []
  for k in range(4):
    Image.fromarray(np.full((8, 8, 3), 40 * k, np.uint8)).save(split / f"{k}.png")
    rows.append({"image": f"{k}.png", "captions": [f"the {w} {k}" for w in ("one", "two",
                                                                           "three")]})
  (split / "captions.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
  os.symlink(split, tmp_path / "test")
  vocab = text.write_wordpiece_vocab([c for r in rows for c in r["captions"]],
                                     str(tmp_path / "vocab.txt"))
  sources.clear_cache()
  config = tiny_image_text_config(data_dir, dataset=str(tmp_path), batch=4, **{
      "input.caption_templates": (), "input.caption_classnames": (), "pp.vocab": vocab})
  it = pipeline.create_train_iterator(config, process_index=0, process_count=1)
  settings = pipeline.text_settings(config)
  seen = collections.defaultdict(set)
  for _ in range(12):
    for image, tokens in zip(*next(it).values()):
      k = int(round((image[0, 0, 0] + 1) / 2 * 255 / 40))
      for c in rows[k]["captions"]:
        if tuple(settings.tokenize([c])[0]) == tuple(tokens):
          seen[k].add(c)
  it.close()
  assert {k: len(v) for k, v in seen.items()} == {0: 3, 1: 3, 2: 3, 3: 3}


def test_label_mixing_options_are_refused_for_image_text(config):
  with config.unlocked():
    config.pp.mixup_alpha = 0.2
  with pytest.raises(ValueError, match="do not apply"):
    pipeline.create_train_iterator(config, process_index=0, process_count=1)


def test_the_vocabulary_is_required_with_one_message(config):
  with config.unlocked():
    config.pp.vocab = None
  with pytest.raises(ValueError, match="config.pp.vocab"):
    pipeline.text_settings(config)


def test_wordpiece_vocab_covers_its_texts_and_pads_with_id_zero(tmp_path):
  texts = ["A photo of the number three.", "the digit 3!"]
  vocab = text.wordpiece_vocab(texts)
  assert vocab[0] == "[PAD]" and vocab.index("[CLS]") == 2
  path = text.write_wordpiece_vocab(texts, str(tmp_path / "v.txt"))
  with pytest.raises(FileExistsError):
    text.write_wordpiece_vocab(texts, path)
  tokens = text.BertTokenizer(vocab_path=path, max_len=10)(texts)
  assert vocab.index("[UNK]") not in tokens[:, 1:]
  assert [vocab[i] for i in tokens[0] if i] == ["[CLS]", "a", "photo", "of", "the", "number",
                                                  "three", "."]


def test_the_shipped_digits_vocabulary_covers_the_readme_captions():
  from helpers import load_config_file  # pylint: disable=g-import-not-at-top
  c = load_config_file("siglip", "digits")
  captions = [t.format(n) for t in c.input.caption_templates for n in c.input.caption_classnames]
  with open(c.pp.vocab) as f:
    assert f.read().split("\n")[:-1] == text.wordpiece_vocab(captions)
