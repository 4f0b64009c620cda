"""Tests for vit_jax.checkpoint.sources against loopback HTTP servers (never the network).

One threaded http.server on 127.0.0.1 plays three roles: a plain web server, the GCS HTTPS
endpoint (via $VIT_JAX_GCS_ENDPOINT) and the Hugging Face Hub resolve endpoint (via
$HF_ENDPOINT, driving the real huggingface_hub download path).
"""
import hashlib
import io
import json
import os
import socket
import types

import numpy as np
import pytest
from helpers import LoopbackHandler, serving

from vit_jax.checkpoint import sources as cs

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _npz_bytes() -> bytes:
  buf = io.BytesIO()
  np.savez(buf, **{"head/kernel": np.arange(12, dtype=np.float32).reshape(3, 4)})
  return buf.getvalue()


PAYLOAD = _npz_bytes()
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(LoopbackHandler):
  """Routes: /files/*, /truncated/*, /gcs/<bucket>/<object>,
  /hf/<org>/<name>/resolve/<rev>/<file>."""
  protocol_version = "HTTP/1.1"

  def _route(self, head):
    self.server.requests.append((self.command, self.path, dict(self.headers)))
    path = self.path.split("?")[0]
    if path.startswith("/files/"):
      return self._send(200, PAYLOAD, head=head) if path.endswith(".npz") else self._send(404)
    if path.startswith("/truncated/"):
      self.send_response(200)
      self.send_header("Content-Length", str(len(PAYLOAD)))
      self.end_headers()
      self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
      self.wfile.flush()
      self.close_connection = True
      return None
    if path.startswith("/gcs/"):
      if "denied" in path:
        return self._send(403, b"Anonymous caller does not have storage.objects.get access")
      return self._send(200, PAYLOAD, head=head)
    if path.startswith("/hf/"):
      return self._hf(path[len("/hf/"):], head)
    return self._send(404)

  def _hf(self, path, head):
    """Minimal Hub 'resolve' endpoint: the headers hf_hub_download reads."""
    org, name, _, revision, filename = path.split("/", 4)
    files = self.server.hf_files.get(f"{org}/{name}")
    if files is None:
      return self._send(401, headers={"X-Error-Code": "RepoNotFound",
                                      "X-Error-Message": "Repository not found"}, head=head)
    if filename not in files:
      return self._send(404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT,
                                      "X-Error-Message": "Entry not found"}, head=head)
    body = files[filename]
    etag = hashlib.sha256(body).hexdigest()
    return self._send(200, body, head=head, headers={"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"'})

  def do_GET(self):  # pylint: disable=invalid-name
    self._route(head=False)

  def do_HEAD(self):  # pylint: disable=invalid-name
    self._route(head=True)


@pytest.fixture(scope="module")
def server():
  with serving(_Handler, requests=[], hf_files={}) as httpd:
    yield httpd


@pytest.fixture
def srv(server, monkeypatch):
  """The shared server with a fresh request log, no GCS credentials, GCS endpoint on loopback."""
  server.requests.clear()
  server.hf_files.clear()
  monkeypatch.setenv(cs.GCS_ENDPOINT_ENV, server.url + "/gcs")
  monkeypatch.setenv("VIT_JAX_GCS_ANONYMOUS", "1")
  monkeypatch.delenv("GOOGLE_OAUTH_ACCESS_TOKEN", raising=False)
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  return server


def _leftovers(root):
  return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if f.endswith(".part")]


def test_local_paths(tmp_path, monkeypatch):
  path = tmp_path / "w.npz"
  path.write_bytes(PAYLOAD)
  assert cs.fetch(str(path)) == str(path)
  assert cs.fetch(path.as_uri()) == str(path)
  monkeypatch.setenv("HOME", str(tmp_path))
  assert cs.fetch("~/w.npz") == str(path)
  assert cs.fetch(str(path), sha256=SHA) == str(path)
  with pytest.raises(cs.ChecksumError, match="sha256 mismatch"):
    cs.fetch(str(path), sha256="0" * 64)
  with pytest.raises(FileNotFoundError, match="does not exist.*gs://"):
    cs.fetch(str(tmp_path / "nope.npz"))
  with pytest.raises(cs.FetchError, match="unsupported checkpoint URI scheme 's3'"):
    cs.fetch("s3://bucket/x.npz")


def test_http_download_then_cache_reuse(srv, tmp_path, capsys):
  url = srv.url + "/files/sub/ViT-Ti_16.npz"
  path = cs.fetch(url, cache_dir=str(tmp_path), sha256=SHA)
  assert path.startswith(str(tmp_path)) and path.endswith("ViT-Ti_16.npz")
  with open(path, "rb") as f:
    assert f.read() == PAYLOAD
  assert "ViT-Ti_16.npz" in capsys.readouterr().err  # tqdm progress bar on stderr
  n = len(srv.requests)
  assert n == 1
  assert cs.fetch(url, cache_dir=str(tmp_path), progress=False) == path
  assert len(srv.requests) == n  # Served from the cache: no request.
  np.testing.assert_array_equal(np.load(path)["head/kernel"], np.arange(12).reshape(3, 4))
  assert not _leftovers(tmp_path)


def test_cache_dir_from_env_and_quiet(srv, tmp_path, monkeypatch, capsys):
  monkeypatch.setenv(cs.CACHE_ENV, str(tmp_path / "envcache"))
  path = cs.fetch(srv.url + "/files/a.npz", progress=False)
  assert path.startswith(str(tmp_path / "envcache"))
  assert capsys.readouterr().err == ""


def test_sha256_mismatch_discards_download_and_keeps_cached_file(srv, tmp_path):
  url = srv.url + "/files/b.npz"
  with pytest.raises(cs.ChecksumError, match="sha256 mismatch.*discarded"):
    cs.fetch(url, cache_dir=str(tmp_path), sha256="ab" * 32, progress=False)
  dest = cs._cache_path(url, str(tmp_path))  # pylint: disable=protected-access
  assert not os.path.exists(dest) and not _leftovers(tmp_path)
  # A cached file stays in place when a fresh download fails its checksum.
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  with open(dest, "wb") as f:
    f.write(b"older good copy")
  with pytest.raises(cs.ChecksumError):
    cs.fetch(url, cache_dir=str(tmp_path), sha256="cd" * 32, progress=False)
  with open(dest, "rb") as f:
    assert f.read() == b"older good copy"
  # ... and is replaced when the download matches the requested checksum.
  assert cs.fetch(url, cache_dir=str(tmp_path), sha256=SHA, progress=False) == dest
  with open(dest, "rb") as f:
    assert f.read() == PAYLOAD


def test_http_404_message(srv, tmp_path):
  with pytest.raises(cs.FetchError, match="HTTP 404.*hf://timm/"):
    cs.fetch(srv.url + "/files/missing.txt", cache_dir=str(tmp_path))
  assert not _leftovers(tmp_path)


def test_connection_refused_message(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  with pytest.raises(cs.FetchError, match="cannot reach .*offline.*local path"):
    cs.fetch(f"http://127.0.0.1:{port}/x.npz", cache_dir=str(tmp_path))
  assert not _leftovers(tmp_path)


def test_interrupted_transfer_leaves_no_file(srv, tmp_path):
  url = srv.url + "/truncated/c.npz"
  message = f"interrupted after {len(PAYLOAD) // 2} of {len(PAYLOAD)}"
  with pytest.raises(cs.FetchError, match=message):
    cs.fetch(url, cache_dir=str(tmp_path), progress=False)
  assert not os.path.exists(cs._cache_path(url, str(tmp_path)))  # pylint: disable=protected-access
  assert not _leftovers(tmp_path)


def test_gcs_anonymous_and_bearer_token(srv, tmp_path, monkeypatch):
  path = cs.fetch("gs://mixer_models/imagenet21k/Mixer-B_16.npz", cache_dir=str(tmp_path),
                  progress=False)
  assert path == os.path.join(str(tmp_path), "gs", "mixer_models", "imagenet21k", "Mixer-B_16.npz")
  method, req_path, headers = srv.requests[-1]
  assert (method, req_path) == ("GET", "/gcs/mixer_models/imagenet21k/Mixer-B_16.npz")
  assert "Authorization" not in headers
  monkeypatch.delenv("VIT_JAX_GCS_ANONYMOUS")
  monkeypatch.setenv("GOOGLE_OAUTH_ACCESS_TOKEN", "tok-123")
  cs.fetch("gs://vit_models/augreg/x.npz", cache_dir=str(tmp_path), progress=False)
  assert srv.requests[-1][2].get("Authorization") == "Bearer tok-123"


def test_gcs_403_explains_issue_321(srv, tmp_path):
  with pytest.raises(cs.AccessDeniedError) as info:
    cs.fetch("gs://vit_models/augreg/denied.npz", cache_dir=str(tmp_path), progress=False)
  msg = str(info.value)
  for part in ("HTTP 403", "2026-02", "vision_transformer#321",
               "gcloud auth application-default login", "hf://timm/", "hf://google/"):
    assert part in msg
  assert not _leftovers(tmp_path)


def test_malformed_uris():
  with pytest.raises(cs.FetchError, match="gs://bucket/path"):
    cs.fetch("gs://only-bucket")
  with pytest.raises(cs.FetchError, match="hf://org/name"):
    cs.fetch("hf://just-a-name")


def test_hf_download_through_hub_client(srv, tmp_path, monkeypatch):
  monkeypatch.setenv("HF_ENDPOINT", srv.url + "/hf")
  config = {"hidden_size": 192, "num_attention_heads": 3}
  srv.hf_files["google/vit-tiny"] = {"model.safetensors": PAYLOAD,
                                     "config.json": json.dumps(config).encode()}
  srv.hf_files["timm/no-config"] = {"model.safetensors": PAYLOAD, "other.bin": b"x"}
  cache = str(tmp_path / "hf")
  path = cs.fetch("hf://google/vit-tiny", cache_dir=cache, progress=False)
  assert path.endswith(os.path.join("snapshots", COMMIT, "model.safetensors"))
  with open(path, "rb") as f:
    assert f.read() == PAYLOAD
  assert any(m == "GET" and p.endswith("/google/vit-tiny/resolve/main/model.safetensors")
             for m, p, _ in srv.requests)
  assert cs.fetch_hf_config("hf://google/vit-tiny", cache_dir=cache) == config
  assert cs.fetch_hf_config("hf://timm/no-config", cache_dir=cache) is None
  assert cs.fetch(f"hf://google/vit-tiny@{COMMIT}/model.safetensors", cache_dir=cache,
                  sha256=SHA, progress=False) == path
  with pytest.raises(cs.MissingFileError, match="has no file 'missing.safetensors'"):
    cs.fetch("hf://google/vit-tiny/missing.safetensors", cache_dir=cache, progress=False)
  with pytest.raises(cs.FetchError, match="not found"):
    cs.fetch("hf://nobody/nothing", cache_dir=cache, progress=False)
  # Offline: served from the HF cache with no request; a file never downloaded is a clear error.
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  srv.requests.clear()
  assert cs.fetch("hf://google/vit-tiny", cache_dir=cache, progress=False) == path
  assert cs.fetch_hf_config("hf://google/vit-tiny", cache_dir=cache) == config
  assert not srv.requests
  with pytest.raises(cs.FetchError, match="HF_HUB_OFFLINE is set"):
    cs.fetch("hf://timm/never-downloaded", cache_dir=cache, progress=False)


def test_hf_unreachable_hub_message(tmp_path, monkeypatch):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
  monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
  # huggingface_hub retries with exponential backoff (~25 s) before giving up; skip the waits.
  from huggingface_hub.utils import _http  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(_http, "time", types.SimpleNamespace(sleep=lambda _: None))
  with pytest.raises(cs.FetchError, match="could not be reached"):
    cs.fetch("hf://timm/x", cache_dir=str(tmp_path), progress=False)
