"""`python -m vit_jax.datasets.convert SRC DST`: an image folder, a WebDataset set and a Hugging
Face dataset become ArrayRecord shards holding the same examples (bytes, labels, captions),
read back as a source; parallel, resumable after an interruption, verified, refusing to write
over other files."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
from helpers import id_image_folder
from test_hf_datasets import SPLITS, save_to_disk

from vit_jax.configs import base
from vit_jax.datasets import array_records, convert, pipeline, sources


def _config(dataset):
  c = base.defaults()
  c.dataset = dataset
  c.input.num_workers = 0
  c.batch = 8
  return c


def _same_examples(src, dst, split):
  a, ia = sources.open_source(_config(src), split)
  b, ib = sources.open_source(_config(dst), split)
  assert len(a) == len(b) and ia.num_classes == ib.num_classes
  assert ia.class_names == ib.class_names and ia.captions_key == ib.captions_key
  for i in range(len(a)):
    x, y = a[i], b[i]
    assert bytes(x["image"]) == y["image"] and str(x.get("path", "")) == y["path"]
    if ia.captions_key:
      assert list(x["captions"]) == y["captions"]
    else:
      assert int(x["label"]) == y["label"]


def test_an_image_folder_converts_in_parallel_and_reads_back(tmp_path, capsys):
  src = id_image_folder(tmp_path / "src", range(0, 23), range(23, 30))
  dst = str(tmp_path / "dst")
  assert convert.main([src, dst, "--shard_size", "5", "--workers", "2"]) == 0
  assert "train 23 (5 shards), test 7 (2 shards); verified" in capsys.readouterr().out
  index = json.loads((tmp_path / "dst" / "dataset.json").read_text())
  assert index["format"] == array_records.FORMAT and index["num_classes"] == 3
  for split in ("train", "test"):
    _same_examples(src, dst, split)
  batch = next(pipeline.create_train_iterator(_config(dst)))   # trains like the folder
  assert batch["image"].shape[0] == 8


def test_an_interrupted_conversion_resumes_and_other_files_are_never_overwritten(
    tmp_path, monkeypatch):
  src = id_image_folder(tmp_path / "src", range(0, 12), range(12, 14))
  dst = tmp_path / "dst"
  real, calls = convert._write_shard, []

  def dies_on_the_third(*args):
    calls.append(args[3])
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real(*args)

  monkeypatch.setattr(convert, "_write_shard", dies_on_the_third)
  with pytest.raises(KeyboardInterrupt):
    convert.convert(src, str(dst), shard_size=4, workers=0, progress=False)
  assert not (dst / "dataset.json").exists()            # unfinished: not a dataset yet
  monkeypatch.setattr(convert, "_write_shard", lambda *a: calls.append(a[3]) or real(*a))
  convert.convert(src, str(dst), shard_size=4, workers=0, progress=False)
  assert calls[3:] == [calls[2], "test-00000-of-00001.array_record"]  # only what was missing
  _same_examples(src, str(dst), "train")
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  assert convert.main([src, str(other)]) == 2
  assert (other / "notes.txt").read_text() == "mine"


def _webdataset(root, n=6):
  folder = root / "train"
  folder.mkdir(parents=True)
  with tarfile.open(folder / "shard-000.tar", "w") as tar:
    for k in range(n):
      for name, data in ((f"{k:04d}.jpg", b"\xff\xd8fake-jpeg-%d" % k),
                         (f"{k:04d}.txt", f"caption {k}".encode())):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
  return str(root)


def test_webdataset_and_hugging_face_sources(tmp_path):
  wds = _webdataset(tmp_path / "wds")
  convert.convert(wds, str(tmp_path / "wds_ar"), workers=0, progress=False)
  _same_examples(wds, str(tmp_path / "wds_ar"), "train")
  hf = save_to_disk(tmp_path / "hf", SPLITS)
  convert.convert(f"hf:{hf}", str(tmp_path / "hf_ar"), shard_size=10, workers=0,
                  progress=False)
  _same_examples(f"hf:{hf}", str(tmp_path / "hf_ar"), "train")
  index = array_records.read_index(str(tmp_path / "hf_ar"))
  assert index["class_names"] == ["zero", "one", "two"]
  assert len(index["splits"]["train"]["shards"]) == 3


def test_a_record_round_trips():
  record = array_records.encode({"image": b"\x00\x01", "label": np.int64(4), "path": "a/b.png"})
  assert array_records.decode(record) == {"image": b"\x00\x01", "label": 4, "path": "a/b.png"}
  with pytest.raises(ValueError, match="not encoded bytes"):
    array_records.encode({"image": np.zeros((2, 2, 3), np.uint8), "label": 0})
  assert not array_records.is_array_record_dir(os.path.dirname(__file__))
