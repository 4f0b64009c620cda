"""Where checkpoint files come from: local paths, http(s)://, gs:// and hf:// URIs.

`fetch(uri)` turns any of these into a local file path:

- local paths (also `~/...` and `file://...`) are returned as they are (checked to exist);
- `http(s)://host/path` is downloaded once into a cache directory (`cache_dir`, else
  $VIT_JAX_CACHE, else ~/.cache/vit_jax) with a progress bar, through a temp file that is
  atomically renamed into place, optionally verified against a sha256; later calls reuse the
  cached file without any request;
- `gs://bucket/object` is read through the GCS JSON-free HTTPS endpoint
  (https://storage.googleapis.com/<bucket>/<object>, overridable with $VIT_JAX_GCS_ENDPOINT)
  and cached like http. Credentials, first found wins: $GOOGLE_OAUTH_ACCESS_TOKEN (a bearer
  token), Application Default Credentials through `google.auth.default()` when the google-auth
  package is installed (`gcloud auth application-default login`), `gcloud auth
  print-access-token` when gcloud is on PATH; otherwise the request is anonymous.
  $VIT_JAX_GCS_ANONYMOUS=1 skips the credential lookup;
- `hf://org/name[@revision][/path/in/repo]` goes through `huggingface_hub.hf_hub_download`
  (its own cache; $HF_HUB_OFFLINE, $HF_ENDPOINT and $HF_HUB_CACHE are read at call time).
  The default file is `model.safetensors`; `fetch_hf_config(uri)` returns the repo's
  config.json as a dict (or None when it has none).

Every failure raises `FetchError` (an OSError) whose message says what to do; a failed or
interrupted download never leaves a partial file where a good one is expected.
"""
from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

import tqdm
import tqdm.auto

from vit_jax.checkpoint import files

GCS_ENDPOINT_ENV = "VIT_JAX_GCS_ENDPOINT"
DEFAULT_GCS_ENDPOINT = "https://storage.googleapis.com"
CACHE_ENV = "VIT_JAX_CACHE"
HF_DEFAULT_FILENAME = "model.safetensors"
_CHUNK = 1 << 20
_TIMEOUT_S = 60

_HF_ALTERNATIVES = (
    "The same Google weights are on the Hugging Face Hub, e.g. "
    "hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k, "
    "hf://timm/vit_base_patch16_224.augreg_in21k (timm layout) or "
    "hf://google/vit-base-patch16-224 (transformers layout); "
    "vit_jax.checkpoint.augreg.resolve(...) gives the hf:// copy of an AugReg file when one is "
    "known.")


class FetchError(OSError):
  """A checkpoint could not be fetched; the message says why and what to do."""


class AccessDeniedError(FetchError):
  """The server refused the request (HTTP 401/403)."""


class MissingFileError(FetchError):
  """The repository exists but has no such file (Hugging Face Hub)."""


class ChecksumError(FetchError):
  """The downloaded (or cached) file does not have the expected sha256."""


def fetch(uri: str, *, cache_dir: Optional[str] = None, sha256: Optional[str] = None,
          progress: bool = True) -> str:
  """Returns a local path for `uri` (local path, file://, http(s)://, gs:// or hf://)."""
  if not isinstance(uri, (str, os.PathLike)):
    raise TypeError(f"checkpoint location must be a path or URI string, got {type(uri).__name__}.")
  uri = os.fspath(uri)
  scheme = urllib.parse.urlsplit(uri).scheme.lower()
  if scheme in ("http", "https"):
    return _fetch_url(uri, _cache_path(uri, cache_dir), sha256=sha256, progress=progress)
  if scheme == "gs":
    url = gcs_url(uri)
    return _fetch_url(url, _cache_path(uri, cache_dir), sha256=sha256, progress=progress,
                      headers=_gcs_auth_headers(), gs_uri=uri)
  if scheme == "hf":
    path = _fetch_hf(uri, cache_dir=cache_dir, progress=progress)
    if sha256:
      _verify_sha256(path, sha256, source=uri)
    return path
  if scheme == "file":
    path = urllib.request.url2pathname(urllib.parse.urlsplit(uri).path)
  elif scheme and len(scheme) > 1:  # 'c:' on Windows is a drive, not a scheme.
    raise FetchError(f"unsupported checkpoint URI scheme {scheme!r} in {uri!r}; use a local path, "
                     "file://, http(s)://, gs://bucket/object or hf://org/name[/file].")
  else:
    path = uri
  return _local(path, sha256)


def is_remote(uri: str) -> bool:
  """True when `uri` names a remote source (http, https, gs, hf)."""
  return urllib.parse.urlsplit(os.fspath(uri)).scheme.lower() in ("http", "https", "gs", "hf")


def default_cache_dir() -> str:
  """$VIT_JAX_CACHE, else ~/.cache/vit_jax."""
  return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "vit_jax"))


def gcs_url(uri: str) -> str:
  """https URL of gs://bucket/object on the GCS endpoint ($VIT_JAX_GCS_ENDPOINT overrides)."""
  parts = urllib.parse.urlsplit(uri)
  bucket, obj = parts.netloc, parts.path.lstrip("/")
  if not bucket or not obj:
    raise FetchError(f"malformed GCS URI {uri!r}; expected gs://bucket/path/to/object.")
  endpoint = (os.environ.get(GCS_ENDPOINT_ENV) or DEFAULT_GCS_ENDPOINT).rstrip("/")
  return f"{endpoint}/{bucket}/{urllib.parse.quote(obj)}"


def _local(path: str, sha256: Optional[str]) -> str:
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    return path  # A Hugging Face snapshot folder is a valid checkpoint location.
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"checkpoint {path!r} does not exist; pass an existing local file, or a URI "
        "(gs://bucket/object, https://..., hf://org/name).")
  if sha256:
    _verify_sha256(path, sha256, source=path)
  return path


def _cache_path(uri: str, cache_dir: Optional[str]) -> str:
  """cache_dir/<scheme>/<host or bucket>/<path>, with a hash suffix for query strings."""
  parts = urllib.parse.urlsplit(uri)
  segments = [s for s in urllib.parse.unquote(parts.path).split("/") if s not in ("", ".", "..")]
  if not segments:
    raise FetchError(f"URI {uri!r} names no file; expected e.g. https://host/path/file.npz.")
  if parts.query:
    segments[-1] += "-" + hashlib.sha256(parts.query.encode()).hexdigest()[:12]
  host = parts.netloc.replace(":", "_")
  root = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
  return os.path.join(root, parts.scheme.lower(), host, *segments)


def _verify_sha256(path: str, expected: str, *, source: str) -> None:
  actual = file_sha256(path)
  if actual.lower() != expected.lower():
    raise ChecksumError(f"sha256 mismatch for {source}: expected {expected}, got {actual} "
                        f"({path}). The file is corrupt or not the one you meant; check the URI "
                        "and the checksum, then retry.")


def file_sha256(path: str) -> str:
  """Hex sha256 of the file at `path`."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_CHUNK), b""):
      digest.update(block)
  return digest.hexdigest()


def _fetch_url(url: str, dest: str, *, sha256: Optional[str], progress: bool,
               headers: Optional[dict] = None, gs_uri: Optional[str] = None) -> str:
  """Downloads `url` to `dest` unless a (checksum-valid) copy is already cached there."""
  if os.path.isfile(dest):
    if not sha256 or file_sha256(dest).lower() == sha256.lower():
      return dest
    print(f"vit_jax: cached {dest} fails its sha256 check; downloading again.", file=sys.stderr)
  os.makedirs(os.path.dirname(dest), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=f".{os.path.basename(dest)}.",
                             suffix=".part")
  try:
    os.chmod(tmp, files.default_file_mode())
    with os.fdopen(fd, "wb") as out:
      digest = _download(url, out, headers=headers or {}, progress=progress, gs_uri=gs_uri)
    if sha256 and digest.lower() != sha256.lower():
      raise ChecksumError(f"sha256 mismatch for {gs_uri or url}: expected {sha256}, got {digest}. "
                          "The download was discarded; check the URI and the checksum, then retry.")
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return dest


def _download(url: str, out, *, headers: dict, progress: bool, gs_uri: Optional[str]) -> str:
  """Streams `url` into the open file `out`; returns the hex sha256 of what was written."""
  request = urllib.request.Request(url, headers={"User-Agent": "vit_jax", **headers})
  source = gs_uri or url
  try:
    response = urllib.request.urlopen(request, timeout=_TIMEOUT_S)  # pylint: disable=R1732
  except urllib.error.HTTPError as e:
    raise _http_error(e.code, e.reason, source, url) from None
  except (urllib.error.URLError, OSError) as e:
    raise _network_error(source, getattr(e, "reason", e)) from None
  digest = hashlib.sha256()
  with response:
    total = response.headers.get("Content-Length")
    total = int(total) if total and total.isdigit() else None
    received = 0
    name = os.path.basename(urllib.parse.urlsplit(url).path)
    with tqdm.tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name,
                   disable=not progress, file=sys.stderr, leave=False) as bar:
      while True:
        try:
          block = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as e:  # reset, timeout, IncompleteRead
          raise _interrupted(source, received, total, e) from None
        if not block:
          break
        out.write(block)
        digest.update(block)
        received += len(block)
        bar.update(len(block))
  if total is not None and received != total:
    raise _interrupted(source, received, total, "connection closed early")
  return digest.hexdigest()


def _interrupted(source: str, received: int, total: Optional[int], cause) -> FetchError:
  return FetchError(f"download of {source} was interrupted after {received} of "
                    f"{total if total is not None else '?'} bytes ({cause}); nothing was kept. "
                    "Retry, or download the file manually and pass its local path.")


def _http_error(code: int, reason, source: str, url: str) -> FetchError:
  """The FetchError for an HTTP error status, with GCS-specific advice for 401/403."""
  is_gcs = source.startswith("gs://") or "storage.googleapis.com" in url
  if code in (401, 403):
    msg = f"HTTP {code} ({reason}) for {source}: access denied."
    if is_gcs:
      msg += (" The gs://vit_models bucket has refused anonymous reads since 2026-02 "
              "(google-research/vision_transformer#321). Authenticate with "
              "`gcloud auth application-default login` (and `pip install google-auth`), or set "
              "$GOOGLE_OAUTH_ACCESS_TOKEN to a token with storage read access, then retry. ")
    else:
      msg += " Check that you are allowed to read it, or download it manually and pass the path. "
    return AccessDeniedError(msg + _HF_ALTERNATIVES)
  if code == 404:
    return FetchError(f"HTTP 404 (not found) for {source}; check the URI (for AugReg files, "
                      "vit_jax.checkpoint.augreg.resolve lists valid names). " + _HF_ALTERNATIVES)
  return FetchError(f"HTTP {code} ({reason}) for {source}. Retry later, or download the file "
                    "manually and pass its local path. " + _HF_ALTERNATIVES)


def _network_error(source: str, reason) -> FetchError:
  return FetchError(f"cannot reach {source} ({reason}); this machine looks offline or the "
                    "server is down. Download the file elsewhere and pass its local path, or use a "
                    "Hugging Face copy already in your HF cache (hf://org/name with "
                    "HF_HUB_OFFLINE=1). " + _HF_ALTERNATIVES)


def _gcs_auth_headers() -> dict:
  """{'Authorization': 'Bearer ...'} from the first credential source found, else {}."""
  if os.environ.get("VIT_JAX_GCS_ANONYMOUS", "").lower() in ("1", "true", "yes"):
    return {}
  token = os.environ.get("GOOGLE_OAUTH_ACCESS_TOKEN") or _adc_token() or _gcloud_token()
  return {"Authorization": f"Bearer {token}"} if token else {}


def _adc_token() -> Optional[str]:
  """Access token from Application Default Credentials, or None (no google-auth, no creds)."""
  try:
    import google.auth  # pylint: disable=g-import-not-at-top
    import google.auth.transport.requests  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  try:
    creds, _ = google.auth.default(
        scopes=["https://www.googleapis.com/auth/devstorage.read_only"])
    creds.refresh(google.auth.transport.requests.Request())
    return creds.token
  except Exception:  # No credentials configured or refresh failed.  pylint: disable=broad-except
    return None


def _gcloud_token() -> Optional[str]:
  """`gcloud auth print-access-token` when gcloud is installed and logged in, else None."""
  gcloud = shutil.which("gcloud")
  if not gcloud:
    return None
  try:
    result = subprocess.run([gcloud, "auth", "print-access-token"], capture_output=True,
                            text=True, timeout=30, check=False)
  except (OSError, subprocess.TimeoutExpired):
    return None
  token = result.stdout.strip()
  return token if result.returncode == 0 and token else None


def parse_hf_uri(uri: str) -> tuple[str, Optional[str], Optional[str]]:
  """'hf://org/name[@rev][/file]' -> (repo_id 'org/name', revision or None, filename or None)."""
  rest = uri[len("hf://"):] if uri.lower().startswith("hf://") else uri
  parts = [p for p in rest.split("/") if p]
  if len(parts) < 2:
    raise FetchError(f"malformed Hugging Face URI {uri!r}; expected hf://org/name[@revision]"
                     "[/file], e.g. hf://timm/vit_base_patch16_224.augreg2_in21k_ft_in1k.")
  name, _, revision = parts[1].partition("@")
  filename = "/".join(parts[2:]) or None
  return f"{parts[0]}/{name}", revision or None, filename


def hub_settings(cache_dir: Optional[str] = None) -> dict:
  """huggingface_hub download arguments from $HF_HUB_OFFLINE / $HF_ENDPOINT / $HF_HUB_CACHE
  read now (huggingface_hub reads them once, at import): local_files_only, endpoint and
  cache_dir (`cache_dir` first when given). Weights (hf://) and datasets (hf:NAME) use it."""
  offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
  return dict(local_files_only=offline, endpoint=os.environ.get("HF_ENDPOINT"),
              cache_dir=cache_dir or os.environ.get("HF_HUB_CACHE"))


def _hf_download(uri: str, filename: str, *, cache_dir: Optional[str], progress: bool) -> str:
  """hf_hub_download honouring HF_HUB_OFFLINE / HF_ENDPOINT / HF_HUB_CACHE read now."""
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
    from huggingface_hub import errors as hf_errors  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise FetchError(f"{uri} needs the huggingface_hub package: "
                     "pip install huggingface_hub") from None
  repo_id, revision, _ = parse_hf_uri(uri)
  kwargs = dict(revision=revision, **hub_settings(cache_dir))
  offline = kwargs["local_files_only"]
  if not progress:
    kwargs["tqdm_class"] = _SilentTqdm
  try:
    return huggingface_hub.hf_hub_download(repo_id, filename, **kwargs)
  except hf_errors.LocalEntryNotFoundError as e:
    hint = ("HF_HUB_OFFLINE is set and the file is not in the local HF cache; unset it or "
            "download once while online" if offline else "the Hub could not be reached and the "
            "file is not in the local HF cache; connect, or copy the HF cache from another machine")
    raise MissingFileError(f"cannot get {filename!r} of {repo_id} ({hint}). {e}") from None
  except hf_errors.GatedRepoError:
    raise FetchError(f"Hugging Face repo {repo_id!r} is gated; accept its terms on the Hub and "
                     "run `hf auth login`, then retry.") from None
  except hf_errors.RepositoryNotFoundError:
    raise FetchError(f"Hugging Face repo {repo_id!r} not found (or private: run "
                     "`hf auth login`); check the name in hf://org/name.") from None
  except hf_errors.HFValidationError as e:
    raise FetchError(f"invalid Hugging Face repo id in {uri!r}: {e}") from None
  except hf_errors.RevisionNotFoundError:
    raise FetchError(f"revision {revision!r} not found in {repo_id}.") from None
  except hf_errors.EntryNotFoundError:
    raise MissingFileError(f"{repo_id} has no file {filename!r}; name the weights file explicitly, "
                     f"e.g. hf://{repo_id}/model.safetensors (only safetensors are read, never "
                     "pickled PyTorch files).") from None
  except (hf_errors.HfHubHTTPError, OSError) as e:
    raise FetchError(f"cannot download {filename!r} of {repo_id}: {e}. Retry, or set "
                     "HF_HUB_OFFLINE=1 to use the local HF cache.") from None


def _fetch_hf(uri: str, *, cache_dir: Optional[str], progress: bool) -> str:
  """Local path of the weights file of hf://org/name[@rev][/file] (default model.safetensors)."""
  _, _, filename = parse_hf_uri(uri)
  return _hf_download(uri, filename or HF_DEFAULT_FILENAME, cache_dir=cache_dir, progress=progress)


def fetch_hf_config(uri: str, *, cache_dir: Optional[str] = None) -> Optional[dict]:
  """The repo's config.json for hf://org/name[...] as a dict, or None when it has none."""
  try:
    path = _hf_download(uri, "config.json", cache_dir=cache_dir, progress=False)
  except MissingFileError:  # No config.json in the repo (or, offline, in the HF cache).
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


class _SilentTqdm(tqdm.auto.tqdm):  # pylint: disable=too-few-public-methods
  """huggingface_hub progress bar class for progress=False: always disabled."""

  def __init__(self, *args, **kwargs):
    kwargs["disable"] = True
    super().__init__(*args, **kwargs)
