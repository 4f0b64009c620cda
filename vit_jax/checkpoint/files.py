"""Checkpoint file formats: reading .npz / .safetensors / HF snapshot dirs, atomic writes.

Owns the byte level of vit_jax.checkpoint: `read_flat(path)` returns a flat
{key: np.ndarray} dict from a local file (never unpickling anything: np.load with
allow_pickle=False, safetensors parsed from its JSON header, no torch.load), and
`write_atomic(path, write)` (`write_npz_atomic` for .npz; the export's architecture
sidecar too) writes a temp file in the target directory and os.replace()s it, so a
failure never leaves a partial file at `path` nor destroys a good one;
`write_dir_atomic(path, fill)` does the same for a whole directory (the export formats).
Layout (key names) is not this module's business; see layouts.py.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import tempfile
import zipfile
from typing import BinaryIO, Callable, Optional

import numpy as np

from vit_jax import exits

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
    "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class CheckpointFormatError(ValueError):
  """A file that is not a readable checkpoint (truncated, pickled, unknown format)."""


def read_hf_config(directory: str) -> Optional[dict]:
  """config.json of a Hugging Face snapshot directory as a dict, or None when absent."""
  path = os.path.join(directory, "config.json")
  if not os.path.isfile(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def weights_file_in(directory: str) -> str:
  """The weights file of a snapshot directory (model.safetensors, else a single .npz)."""
  names = sorted(os.listdir(directory))
  if "model.safetensors" in names:
    return os.path.join(directory, "model.safetensors")
  candidates = [n for n in names if n.endswith((".safetensors", ".npz"))]
  if len(candidates) == 1:
    return os.path.join(directory, candidates[0])
  raise CheckpointFormatError(
      f"directory {directory!r} holds no model.safetensors (found {names[:10]}); pass the path "
      "of the weights file itself (.npz or .safetensors). Sharded safetensors are not supported.")


def read_flat(path: str) -> dict[str, np.ndarray]:
  """Flat {key: array} from a local .npz or .safetensors file (format sniffed from the bytes)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist; check the path (or pass a "
                            "gs://, https:// or hf:// URI).")
  with open(path, "rb") as f:
    head = f.read(8)
  if head[:2] == b"PK" and _is_torch_zip(path):
    raise CheckpointFormatError(
        f"{path!r} is a PyTorch pickle (torch.save archive); pickled checkpoints are never loaded "
        "(they can run code). Use the model.safetensors file of the same weights, or an .npz.")
  if head[:2] == b"PK":
    return _read_npz(path)
  if path.endswith(".safetensors") or _looks_like_safetensors(head):
    return _read_safetensors(path)
  if head[:1] == b"\x80":  # Pickle protocol 2+ (also torch's legacy format), any extension.
    raise CheckpointFormatError(
        f"{path!r} is a Python pickle; pickled checkpoints are never loaded (they can run code). "
        "Re-export the weights as .npz (numpy arrays) or .safetensors.")
  what = (f" (its {os.path.splitext(path)[1]} extension is usual for PyTorch pickles, but its "
          "bytes are not one)" if path.endswith(_PICKLE_SUFFIXES) else "")
  raise CheckpointFormatError(
      f"{path!r} is neither an .npz archive nor a .safetensors file{what}; pass a ViT/Mixer "
      "checkpoint (.npz as in gs://vit_models, or model.safetensors from the Hugging Face Hub).")


def _is_torch_zip(path: str) -> bool:
  """True for torch.save's zip format (a '<name>/data.pkl' member), judged from the bytes."""
  try:
    with zipfile.ZipFile(path) as archive:
      return any(n == "data.pkl" or n.endswith("/data.pkl") for n in archive.namelist())
  except (zipfile.BadZipFile, OSError):
    return False


def _looks_like_safetensors(head: bytes) -> bool:
  return len(head) == 8 and 2 <= struct.unpack("<Q", head)[0] < 100_000_000


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as archive:
      return {k: _recover_bfloat16(np.asarray(archive[k])) for k in archive.files}
  except ValueError as e:
    if "pickle" in str(e):
      raise CheckpointFormatError(
          f"{path!r} contains pickled (object) arrays; they are never loaded (they can run "
          "code). Re-save the weights as plain numeric arrays (checkpoint.save).") from e
    raise _corrupt(path, e) from e
  except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
    raise _corrupt(path, e) from e


def _recover_bfloat16(array: np.ndarray) -> np.ndarray:
  """np.save writes bfloat16 arrays (big_vision checkpoints) as 2-byte void: back to float32."""
  if array.dtype.kind == "V" and array.dtype.itemsize == 2 and array.dtype.names is None:
    return (array.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
  return array


def _corrupt(path: str, cause: Exception) -> CheckpointFormatError:
  return CheckpointFormatError(
      f"checkpoint {path!r} is truncated or corrupt ({type(cause).__name__}: {cause}); delete it "
      "and download or export it again.")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  size = os.path.getsize(path)
  try:
    with open(path, "rb") as f:
      (header_len,) = struct.unpack("<Q", f.read(8))
      header = json.loads(f.read(header_len))
  except (struct.error, ValueError, UnicodeDecodeError) as e:
    raise _corrupt(path, e) from e
  header.pop("__metadata__", None)
  start = 8 + header_len
  end = max((int(v["data_offsets"][1]) for v in header.values()), default=0)
  if start + end > size:
    raise _corrupt(path, EOFError(f"file has {size} bytes, header promises {start + end}"))
  data = np.memmap(path, dtype=np.uint8, mode="r", offset=start, shape=(end,)) if end else None
  return {name: _safetensor(data, info, path, name) for name, info in header.items()}


def _safetensor(data, info: dict, path: str, name: str) -> np.ndarray:
  begin, stop = (int(x) for x in info["data_offsets"])
  raw = np.asarray(data[begin:stop]) if stop > begin else np.zeros((0,), np.uint8)
  shape = tuple(int(s) for s in info["shape"])
  if info["dtype"] == "BF16":  # bfloat16 = the top half of a float32.
    return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
  if info["dtype"] not in _SAFETENSORS_DTYPES:
    raise CheckpointFormatError(f"{path!r}: tensor {name!r} has unsupported dtype "
                                f"{info['dtype']}; convert it to float32.")
  array = raw.view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(shape)
  return array.astype(np.float32) if array.dtype == np.float16 else array.copy()


def _umask() -> int:
  umask = os.umask(0o022)
  os.umask(umask)
  return umask


def default_file_mode() -> int:
  """0o666 minus the process umask: what open() would give a new file (mkstemp gives 0o600)."""
  return 0o666 & ~_umask()


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
  """Calls write(file) on a temp file in `path`'s directory, fsyncs it and renames it to
  `path` (mode as open() would give); on any failure the temp file is removed and `path`
  is untouched. Out of space is one OSError saying "disk full"."""
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"cannot save to {path!r}: directory {directory!r} does not exist; "
                            "create it first.")
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".",
                             suffix=".tmp")
  try:
    os.chmod(tmp, default_file_mode())
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and exits.is_disk_full(e):
      raise OSError(e.errno or errno.ENOSPC,
                    f"disk full while saving {path!r}; nothing was written there (any "
                    "previous file is intact). Free space or save elsewhere.") from e
    raise


def write_dir_atomic(path: str, fill: Callable[[str], None], *, overwrite: bool = False) -> None:
  """Calls fill(tmp_dir) on a new directory beside `path`, then renames it to `path`.

  An existing `path` (file or directory) is refused unless `overwrite`, and then replaced only
  once the new directory is complete; on any failure the temp directory is removed and `path`
  is untouched. Out of space is one OSError saying "disk full".
  """
  path = os.path.abspath(os.fspath(path))
  parent, name = os.path.dirname(path), os.path.basename(path)
  if os.path.lexists(path) and not overwrite:
    raise FileExistsError(f"{path!r} already exists; choose another --output or pass "
                          "--overwrite to replace it.")
  if not os.path.isdir(parent):
    raise FileNotFoundError(f"cannot write {path!r}: directory {parent!r} does not exist; "
                            "create it first.")
  tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".tmp")
  old = None
  try:
    os.chmod(tmp, 0o777 & ~_umask())  # What mkdir would give (mkdtemp gives 0o700).
    fill(tmp)
    if os.path.lexists(path):
      old = tempfile.mkdtemp(dir=parent, prefix=f".{name}.", suffix=".old")
      os.rename(path, os.path.join(old, name))
    os.rename(tmp, path)
  except BaseException as e:
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None and not os.path.lexists(path):  # Put the previous output back.
      os.rename(os.path.join(old, name), path)
      shutil.rmtree(old, ignore_errors=True)
    if isinstance(e, OSError) and exits.is_disk_full(e):
      raise OSError(e.errno or errno.ENOSPC, f"disk full while writing {path!r}; nothing was "
                    "written there (any previous output is intact). Free space or write "
                    "elsewhere.") from e
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)


def write_npz_atomic(flat: dict[str, np.ndarray], path: str) -> None:
  """Writes `flat` as an uncompressed .npz at `path` via write_atomic."""
  write_atomic(path, lambda f: _write_npz(f, flat))


def _write_npz(fileobj, flat: dict[str, np.ndarray]) -> None:
  """The actual archive write (split out so tests can simulate a failure mid-write)."""
  np.savez(fileobj, **flat)
