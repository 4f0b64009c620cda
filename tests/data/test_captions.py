"""Tests of vit_jax.datasets.captions: caption folders (jsonl, csv), WebDataset tars, TFDS
coco_captions, labels as captions, and their detection by sources.open_source."""
import io
import json
import logging
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from vit_jax.configs import base
from vit_jax.datasets import captions, image_folder, sources


def _config(dataset, data_dir=None):
  c = base.defaults()
  c.dataset, c.tfds_data_dir = str(dataset), data_dir
  return c


def _image_bytes(level: int, fmt: str = "PNG") -> bytes:
  out = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), level, np.uint8)).save(out, fmt)
  return out.getvalue()


def _write_images(folder, names):
  """8x8 images at folder/name (sub-folders made), grey level = position; → {name: bytes}."""
  written = {}
  for level, name in enumerate(names):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_image_bytes(level * 10, "JPEG" if name.endswith(".jpg") else "PNG"))
    written[name] = path.read_bytes()
  return written


@pytest.fixture(autouse=True)
def _fresh_cache():
  sources.clear_cache()
  yield
  sources.clear_cache()


def test_jsonl_folder_merges_sorts_and_reads_bytes(tmp_path, caplog):
  split = tmp_path / "train"
  written = _write_images(split, ["b.png", "a/z.jpg", "a/y.png", "unused.png", "x.txt"])
  lines = [{"image": "b.png", "caption": " a blue square. "},
           {"image": "a/z.jpg", "captions": ["first.", "second."]},
           {"image": "b.png", "captions": ["another."]},
           {"image": "./a/y.png", "caption": "why."}]
  (split / "captions.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n\n")
  with caplog.at_level(logging.WARNING):
    source = captions.CaptionFolderSource(str(tmp_path), "train")
  assert "1 image(s)" in caplog.text  # unused.png (x.txt is no image).
  assert len(source) == 3
  got = [source[i] for i in range(3)]
  assert [e["path"] for e in got] == [str(split / n) for n in ("a/y.png", "a/z.jpg", "b.png")]
  assert [e["captions"] for e in got] == [["why."], ["first.", "second."],
                                          ["a blue square.", "another."]]
  assert [e["image"] for e in got] == [written[n] for n in ("a/y.png", "a/z.jpg", "b.png")]
  assert pickle.loads(pickle.dumps(source))[2]["captions"] == got[2]["captions"]


def test_csv_folder_merges_rows_and_quoted_commas(tmp_path):
  split = tmp_path / "val"
  written = _write_images(split, ["1.png", "sub/2.png"])
  (split / "captions.csv").write_text(
      'image,text\nsub/2.png,"two, with a comma"\n1.png,one\nsub/2.png,deux\n',
      encoding="utf-8")
  source = captions.CaptionFolderSource(str(tmp_path), "val")
  assert [source[i]["captions"] for i in range(len(source))] == [["one"],
                                                                  ["two, with a comma", "deux"]]
  assert source[1]["image"] == written["sub/2.png"]


@pytest.mark.parametrize("name,text,expected", [
    ("captions.jsonl", '{"image": "a.png", "caption": "ok"}\n{"image": "gone.png", '
     '"caption": "x"}\n', ["captions.jsonl", "line 2 (gone.png)", "add the images or delete"]),
    ("captions.jsonl", '{"image": "a.png", "caption": "ok"}\n\n{"image": "a.png" "caption"}\n',
     ["captions.jsonl:3: not valid JSON", '{"image": "relative/path.jpg"']),
    ("captions.jsonl", '{"image": "a.png", "caption": ""}\n',
     ["captions.jsonl:1: the caption is missing, empty"]),
    ("captions.jsonl", '["a.png", "cap"]\n', ["captions.jsonl:1: a JSON list, not an object"]),
    ("captions.csv", "image,caption\na.png,ok\na.png,too,many\n",
     ["captions.csv:3: the row has more fields", "quote captions that contain commas"]),
    ("captions.csv", "file,caption\na.png,ok\n", ["captions.csv:1: the header row",
                                                  "'image' column"]),
], ids=["missing_image", "bad_json", "empty_caption", "not_an_object", "csv_extra_field",
        "csv_header"])
def test_caption_file_errors_name_the_line(tmp_path, name, text, expected):
  _write_images(tmp_path / "train", ["a.png"])
  (tmp_path / "train" / name).write_text(text)
  with pytest.raises(ValueError) as e:
    captions.CaptionFolderSource(str(tmp_path), "train")
  for fragment in expected:
    assert fragment in str(e.value), str(e.value)


def _add(tar, name, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def wds_root(tmp_path):
  """train/ with two tars; → (root, [(path, image bytes, captions)] in the expected order)."""
  split = tmp_path / "train"
  split.mkdir()
  expected = []
  with tarfile.open(split / "shard-000001.tar", "w") as tar:  # Sorted after shard-000000.
    _add(tar, "d/0002.jpg", _image_bytes(50, "JPEG"))
    _add(tar, "d/0002.txt", "in a sub-folder.\n".encode())
    _add(tar, "d/0001.png", _image_bytes(40))
    _add(tar, "d/0001.json", json.dumps({"captions": ["c1", "c2"], "id": 1}).encode())
    _add(tar, "nocap.png", _image_bytes(60))  # No caption: skipped.
    expected += [("shard-000001.tar", "d/0001", _image_bytes(40), ["c1", "c2"]),
                 ("shard-000001.tar", "d/0002", _image_bytes(50, "JPEG"), ["in a sub-folder."])]
  with tarfile.open(split / "shard-000000.tar", "w") as tar:
    for k in range(3):
      _add(tar, f"{k:04d}.cls", b"3")
      _add(tar, f"{k:04d}.webp" if k == 1 else f"{k:04d}.png", _image_bytes(k))
      if k == 2:
        _add(tar, f"{k:04d}.json", json.dumps({"caption": "é json"}).encode())
      else:
        _add(tar, f"{k:04d}.txt", f"caption {k}".encode())
    _add(tar, "lonely.txt", b"a caption without an image")  # Skipped.
    expected = [("shard-000000.tar", "0000", _image_bytes(0), ["caption 0"]),
                ("shard-000000.tar", "0001", _image_bytes(1), ["caption 1"]),
                ("shard-000000.tar", "0002", _image_bytes(2), ["é json"])] + expected
  return tmp_path, [(f"{split / t}:{k}", image, caps) for t, k, image, caps in expected]


def test_webdataset_reads_back_every_sample_and_pickles(wds_root, caplog):
  root, expected = wds_root
  with caplog.at_level(logging.WARNING):
    source = captions.WebDatasetSource(str(root), "train")
  assert "1 WebDataset sample(s) without an image" in caplog.text
  assert "1 without a caption" in caplog.text
  assert len(source) == len(expected) == 5
  for restored in (source, pickle.loads(pickle.dumps(source))):
    got = [(e["path"], e["image"], e["captions"]) for e in (restored[i] for i in range(5))]
    assert got == expected
  source[0]  # Opens a file handle; the pickled state still holds none.
  assert pickle.loads(pickle.dumps(source))._handles == {}
  assert pickle.loads(pickle.dumps(source))[4]["captions"] == ["in a sub-folder."]
  opened = source._handles[0]
  source._pid = -1  # As in a forked worker: it opens its own files.
  assert source[1]["image"] == expected[1][1] and source._handles[0] is not opened


def test_webdataset_rejects_compressed_shards(tmp_path):
  for name in ("a.tar", "b.tar.gz"):
    (tmp_path / name[0] / "train").mkdir(parents=True)
    with tarfile.open(tmp_path / name[0] / "train" / name, "w:gz") as tar:
      _add(tar, "0.png", _image_bytes(0))
  with pytest.raises(ValueError, match="a.tar is not an uncompressed tar"):
    captions.WebDatasetSource(str(tmp_path / "a"), "train")
  with pytest.raises(ValueError, match="no .tar shards \\(1 compressed ones"):
    sources.open_source(_config(tmp_path / "b"), "train")  # Not taken for an image folder.


def test_element_captions_types_and_paths():
  assert captions.element_captions({"captions": " one "}, "captions") == ["one"]
  assert captions.element_captions({"captions": "é".encode()}, "captions") == ["é"]
  assert captions.element_captions({"captions": ["a", b"b", "  "]}, "captions") == ["a", "b"]
  assert captions.element_captions({"c": ("x",)}, "c") == ["x"]
  arrays = [np.array([b"a", b"b"], object), np.array([b"a", b"b"]), np.array(["a", "b"]),
            np.array([[b"a"], [b"b"]], object)]
  for array in arrays:
    got = captions.element_captions({"captions": array}, "captions")
    assert got == ["a", "b"] and all(type(c) is str for c in got)
  nested = {"captions": {"id": np.array([1, 2]), "text": np.array([b"x ", b"y"], object)}}
  assert captions.element_captions(nested, "captions/text") == ["x", "y"]
  with pytest.raises(ValueError, match="example of img/7.jpg has no non-empty caption"):
    captions.element_captions({"captions": ["", " "], "path": "img/7.jpg"}, "captions")
  with pytest.raises(ValueError, match="no captions at 'captions/text' \\(no 'text'\\)"):
    captions.element_captions({"captions": {"id": 1}}, "captions/text")
  with pytest.raises(ValueError, match="a caption at 'c' is a int"):
    captions.element_captions({"c": [1]}, "c")


def _coco_data_source(self, split, decoders=None, **kwargs):
  """Three coco_captions examples (i + 1 captions each) through the real TFDS features'
  serialize / deserialize_example_np (what tfds.data_source returns per record)."""
  del split, kwargs
  features = self.info.features
  examples = [{"image": np.full((8, 8, 3), 10 * i, np.uint8), "image/id": i,
               "image/filename": f"{i}.jpg", "objects": [],
               "captions": [{"id": 10 * i + j, "text": f"caption {i}.{j}"} for j in range(i + 1)]}
              for i in range(3)]
  return [features.deserialize_example_np(features.serialize_example(e), decoders=decoders)
          for e in examples]


def test_coco_captions_via_tfds_mock(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(as_data_source_fn=_coco_data_source):
    source, info = sources.open_source(_config("coco_captions", str(tmp_path)), "train")
  assert info.captions_key == "captions/text" and info.keys == ("image", "captions")
  assert info.num_classes == 0 and info.class_names == ()
  assert len(source) == 3
  for i in range(3):
    element = source[i]
    assert isinstance(element["image"], bytes)  # Still encoded (SkipDecoding).
    assert np.asarray(Image.open(io.BytesIO(element["image"]))).shape == (8, 8, 3)
    got = captions.element_captions(element, info.captions_key)
    assert got == [f"caption {i}.{j}" for j in range(i + 1)]
    assert all(type(c) is str for c in got)


def test_tfds_caption_features_are_found():
  import tensorflow_datasets as tfds
  f = tfds.features
  find = lambda key, **feats: sources._tfds_captions_key(f.FeaturesDict(feats), key)
  image = f.Image(shape=(None, None, 3))
  assert find("caption", image=image, caption=f.Text()) == "caption"
  assert find("label", image=image, captions=f.Sequence(f.Text())) == "captions"
  assert find("label", image=image, text=f.Text()) == "text"
  assert find("label", image=image, captions=f.Sequence({"id": np.int64, "text": f.Text()})) \
      == "captions/text"
  assert find("label", image=image, label=f.Scalar(np.int64)) is None
  assert find("label", image=image, caption=f.Tensor(shape=(2,), dtype=np.str_)) is None


def _class_folder(root):
  for split, count in (("train", 3), ("test", 2)):
    for k in range(count):
      _write_images(root / split / ("big_cat" if k % 2 else "dog"), [f"{k}.png"])


def test_label_captions_on_an_image_folder(tmp_path):
  _class_folder(tmp_path)
  folder, info = sources.open_source(_config(tmp_path), "train")
  wrapped = captions.LabelCaptions(folder, info.class_names, ["a {}.", "a photo of the {}"])
  assert len(wrapped) == 3
  labels = [folder[i]["label"] for i in range(3)]
  names = {0: "big cat", 1: "dog"}
  restored = pickle.loads(pickle.dumps(wrapped))
  for i in range(3):
    element = restored[i]
    assert element["captions"] == [f"a {names[labels[i]]}.", f"a photo of the {names[labels[i]]}"]
    assert element["image"] == folder[i]["image"] and element["path"] == folder[i]["path"]
  for bad in (["a photo"], [], ["a {} of {}"], ["{name}"]):
    with pytest.raises(ValueError, match="template|at least one"):
      captions.LabelCaptions(folder, info.class_names, bad)


def test_open_source_detects_caption_and_tar_folders_with_slices(tmp_path, wds_root):
  root = tmp_path / "pairs"  # tmp_path itself holds wds_root's tars.
  _write_images(root / "train", [f"{k}.png" for k in range(4)])
  (root / "train" / "captions.jsonl").write_text(
      "".join(json.dumps({"image": f"{k}.png", "caption": f"c{k}"}) + "\n" for k in range(4)))
  source, info = sources.open_source(_config(root), "train[:50%]")
  assert info == sources.SourceInfo(0, (), ("image", "captions"), captions_key="captions")
  assert isinstance(source, sources.SlicedSource) and len(source) == 2
  assert [source[i]["captions"] for i in range(2)] == [["c0"], ["c1"]]
  whole, _ = sources.open_source(_config(root), "train")
  assert isinstance(whole, captions.CaptionFolderSource) and len(whole) == 4

  tars, expected = wds_root
  sliced, info = sources.open_source(_config(tars), "train[2:]")
  assert info.captions_key == "captions" and info.num_classes == 0 and len(sliced) == 3
  assert [sliced[i]["path"] for i in range(3)] == [p for p, _, _ in expected[2:]]
  assert isinstance(sources.open_source(_config(tars), "train")[0], captions.WebDatasetSource)

  _class_folder(tmp_path / "classes")  # No captions file and no tars: still an image folder.
  folder, info = sources.open_source(_config(tmp_path / "classes"), "test[:1]")
  assert isinstance(folder.source, image_folder.ImageFolderSource) and info.num_classes == 2
  assert info.captions_key is None
