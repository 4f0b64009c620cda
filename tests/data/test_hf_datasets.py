"""Hugging Face datasets on disk (config.dataset=hf:PATH): save_to_disk's Arrow layout and the
Hub's Parquet layout, written here with pyarrow exactly as the `datasets` library lays them
out, read as random-access sources with their class names; trained on, sliced, split over
processes. A dataset named on the Hub (hf:org/name[@revision]) is downloaded from a loopback
Hub serving the same Parquet files."""
import hashlib
import io
import json
import os
import re
import urllib.parse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import LoopbackHandler, refused_url, serving, tiny_config
from PIL import Image

from vit_jax.datasets import pipeline, sources
from vit_jax.run import loop

NAMES = ["zero", "one", "two"]
FEATURES = {"img": {"_type": "Image"},
            "fine": {"names": NAMES, "_type": "ClassLabel"},
            "note": {"dtype": "string", "_type": "Value"}}


def _png(k):
  buf = io.BytesIO()
  Image.fromarray(np.full((8, 8, 3), k, np.uint8)).save(buf, "PNG")
  return buf.getvalue()


def _table(ids):
  image = pa.array([{"bytes": _png(k), "path": None} for k in ids],
                   pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
  return pa.table({"img": image, "fine": pa.array([k % 3 for k in ids], pa.int64()),
                   "note": pa.array([f"#{k}" for k in ids])})


def save_to_disk(root, splits):
  """datasets.DatasetDict.save_to_disk's layout: Arrow stream files, state and info JSON."""
  os.makedirs(root)
  with open(os.path.join(root, "dataset_dict.json"), "w") as f:
    json.dump({"splits": list(splits)}, f)
  for split, shards in splits.items():
    folder = os.path.join(root, split)
    os.makedirs(folder)
    files = []
    for i, ids in enumerate(shards):
      name = f"data-{i:05d}-of-{len(shards):05d}.arrow"
      table = _table(ids)
      with pa.OSFile(os.path.join(folder, name), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
          for batch in table.to_batches(max_chunksize=3):   # several record batches
            writer.write_batch(batch)
      files.append({"filename": name})
    with open(os.path.join(folder, "state.json"), "w") as f:
      json.dump({"_data_files": files, "_split": split}, f)
    with open(os.path.join(folder, "dataset_info.json"), "w") as f:
      json.dump({"features": FEATURES}, f)
  sources.clear_cache()
  return str(root)


def parquet_repo(root, splits):
  """The Hub's layout: data/<split>-0000i-of-0000n.parquet with the features in metadata."""
  os.makedirs(os.path.join(root, "data"))
  meta = {b"huggingface": json.dumps({"info": {"features": FEATURES}}).encode()}
  for split, shards in splits.items():
    for i, ids in enumerate(shards):
      table = _table(ids)
      table = table.replace_schema_metadata(meta)
      pq.write_table(table, os.path.join(root, "data",
                                         f"{split}-{i:05d}-of-{len(shards):05d}.parquet"),
                     row_group_size=4)
  sources.clear_cache()
  return str(root)


def _config(tmp_path, dataset, **overrides):
  config = tiny_config(tmp_path / "tfds", **overrides)
  with config.unlocked():
    config.dataset, config.num_classes, config.tfds_data_dir = dataset, None, None
    config.batch, config.batch_eval, config.pp.flip = 12, 8, False
    config.input.num_workers = 0
  return config


SPLITS = {"train": [list(range(0, 10)), list(range(10, 24))], "test": [list(range(30, 36))]}


@pytest.mark.parametrize("layout", [save_to_disk, parquet_repo])
def test_both_layouts_read_every_row_with_its_label_and_class_names(tmp_path, layout):
  root = layout(tmp_path / "hf", SPLITS)
  config = _config(tmp_path, f"hf:{root}")
  source, info = sources.open_source(config, "train")
  assert len(source) == 24 and info.num_classes == 3 and info.class_names == tuple(NAMES)
  rows = [source[i] for i in range(24)]
  grey = [int(np.asarray(Image.open(io.BytesIO(r["image"])))[0, 0, 0]) for r in rows]
  assert grey == list(range(24)) and [r["label"] for r in rows] == [k % 3 for k in range(24)]
  sliced, _ = sources.open_source(config, "train[:50%]")
  assert len(sliced) == 12 and sliced[11]["label"] == 11 % 3
  # The pipeline: shuffled batches, 2 processes = 1, resume.
  it = pipeline.create_train_iterator(config)
  first, second = next(it), next(it)
  seen = np.round((np.concatenate([first["image"], second["image"]])[:, 0, 0, 0] + 1) * 127.5)
  assert sorted(seen.astype(int).tolist()) == list(range(24))           # one epoch, each once
  parts = [next(pipeline.create_train_iterator(config, process_index=p, process_count=2))
           for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([p["image"] for p in parts]), first["image"])
  eval_batches = list(pipeline.create_eval_iterator(config))
  assert sum(b["mask"].sum() for b in eval_batches) == 6


def test_columns_by_name_and_clear_errors(tmp_path):
  root = save_to_disk(tmp_path / "hf", SPLITS)
  with pytest.raises(ValueError, match="no label column 'nope'"):
    sources.open_source(_config(tmp_path, f"hf:{root}", **{"input.label_column": "nope"}),
                        "train")
  with pytest.raises(ValueError, match="not 'validation'"):
    sources.open_source(_config(tmp_path, f"hf:{root}"), "validation")
  with pytest.raises(ValueError, match="no such folder here.*hf download"):
    sources.open_source(_config(tmp_path, f"hf:{tmp_path}/missing"), "train")


def test_a_run_trains_on_a_saved_dataset(tmp_path):
  root = save_to_disk(tmp_path / "hf", SPLITS)
  config = _config(tmp_path, f"hf:{root}", total_steps=4, checkpoint_every=0)
  with config.unlocked():
    config.batch = 16
    config.input.num_workers = 1    # rows read in a worker process (the source is pickled)
  result = loop.train_and_evaluate(config, str(tmp_path / "w"))
  assert result["step"] == 4 and result["eval"]["examples"] == 6


COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(LoopbackHandler):
  """What huggingface_hub's snapshot_download asks of the Hub for a dataset repo: its info at a
  revision, its file tree, and each file's resolve URL (HEAD: commit and ETag; GET: bytes)."""

  def _json(self, value, head):
    return self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"}, head)

  def _route(self, head):
    path = urllib.parse.unquote(self.path.split("?")[0])
    self.server.requests.append(path)
    match = re.fullmatch(r"/(api/)?datasets/([^/]+/[^/]+)/(revision|tree|resolve)/([^/]+)/?(.*)",
                         path)
    files = self.server.repos.get(match[2]) if match else None
    if match and match[2] == "org/gated":
      return self._send(401, headers={"X-Error-Code": "GatedRepo",
                                      "X-Error-Message": "Access to this dataset is restricted"},
                        head=head)
    if files is None:
      return self._send(404, headers={"X-Error-Code": "RepoNotFound",
                                      "X-Error-Message": "Repository not found"}, head=head)
    if match[4] not in ("main", COMMIT):
      return self._send(404, headers={"X-Error-Code": "RevisionNotFound",
                                      "X-Error-Message": "Invalid rev id"}, head=head)
    if match[3] == "revision":
      return self._json({"id": match[2], "sha": COMMIT,
                         "siblings": [{"rfilename": f} for f in files]}, head)
    if match[3] == "tree":
      return self._json([{"type": "file", "path": f, "size": len(b),
                          "oid": hashlib.sha1(b).hexdigest()} for f, b in files.items()], head)
    if match[5] not in files:
      return self._send(404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT},
                        head=head)
    body = files[match[5]]
    return self._send(200, body, {"X-Repo-Commit": COMMIT,
                                  "ETag": f'"{hashlib.sha256(body).hexdigest()}"'}, head)

  def do_GET(self):  # pylint: disable=invalid-name
    self._route(head=False)

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._route(head=True)


@pytest.fixture
def hub(tmp_path, monkeypatch):
  """A loopback Hub holding the dataset repo org/digits (parquet_repo's files), its endpoint and
  an empty Hugging Face cache in the environment."""
  root = parquet_repo(tmp_path / "repo", SPLITS)
  files = {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
           for d, _, fs in os.walk(root) for f in fs}
  with serving(_Hub, requests=[], repos={"org/digits": files}) as httpd:
    monkeypatch.setenv("HF_ENDPOINT", httpd.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    sources.clear_cache()
    yield httpd


def test_a_hub_dataset_by_name_downloads_each_split_once(tmp_path, hub, monkeypatch):
  """The train and eval pipelines read the Hub's copy (training on hf: data: the saved-dataset
  run above), each split fetched when first opened, then read offline from the cache."""
  config = _config(tmp_path, "hf:org/digits")
  source, info = sources.open_source(config, "train")
  assert len(source) == 24 and info.class_names == tuple(NAMES)
  fetched = [p for p in hub.requests if "/resolve/" in p]
  assert fetched and all("/data/train-" in p for p in fetched)  # only the split asked for
  batch = next(pipeline.create_train_iterator(config))
  assert batch["image"].shape == (12, 8, 8, 3)
  assert sum(b["mask"].sum() for b in pipeline.create_eval_iterator(config)) == 6  # test split
  assert any("/data/test-" in p for p in hub.requests)
  # Offline, from the Hugging Face cache (also at a pinned revision).
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  hub.requests.clear()
  sources.clear_cache()
  for name in ("hf:org/digits", f"hf:org/digits@{COMMIT}"):
    source, _ = sources.open_source(_config(tmp_path, name), "test")
    assert len(source) == 6
  assert not hub.requests


@pytest.mark.parametrize("name,split,message", [
    ("hf:org/unknown", "train", "the Hub has no dataset repo 'org/unknown'"),
    ("hf:org/gated", "train", "'org/gated' is gated: accept its terms"),
    ("hf:org/digits@v9", "train", "has no revision 'v9'"),
    ("hf:org/digits", "validation", "no Parquet files of the split 'validation'"),
])
def test_a_hub_name_that_does_not_resolve_says_why(tmp_path, hub, name, split, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    sources.open_source(_config(tmp_path, name), split)


def test_an_unreachable_or_offline_hub_without_a_cached_copy_says_what_to_do(tmp_path,
                                                                             monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
  monkeypatch.setenv("HF_ENDPOINT", refused_url())
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  with pytest.raises(ValueError, match="the Hub could not be reached.*hf download"):
    sources.open_source(_config(tmp_path, "hf:org/digits"), "train")
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(ValueError, match="HF_HUB_OFFLINE is set"):
    sources.open_source(_config(tmp_path, "hf:org/digits"), "train")
