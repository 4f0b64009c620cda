"""Runtime start-up defaults, per platform: XLA flags, CPU dispatch mode, the host allocator.

Applied wherever the library is used, not only by `python -m vit_jax.main`: importing
`vit_jax.models` or `vit_jax.sharding` (the first library modules any JAX work goes through)
applies `apply_defaults()` while JAX has not started a backend yet, and the models apply
`apply_host_defaults('cpu')` the first time they run on the CPU backend
(vit_jax.models.platform.on_cpu). A program that ran JAX computations before that is told
once how to get them. Modules that never touch JAX (the input pipeline, which grain's
worker processes import) do not import JAX for this.

Owns:
  * `DEFAULT_XLA_FLAGS` — platform -> {flag: value}: XLA options measured to speed up ViT
    training (measurements and commands in docs/performance.md). Flags of every platform are
    put in XLA_FLAGS (XLA parses all of them and each backend reads its own).
  * `apply_defaults()` — call before JAX initialises its backends (`apply_at_first_use`,
    main.py and the bench/ scripts call it first thing). It appends the default flags missing
    from XLA_FLAGS (the user's value of a flag always wins) and turns off JAX's asynchronous
    dispatch on CPU (`jax_cpu_enable_async_dispatch=False`; environment
    JAX_CPU_ENABLE_ASYNC_DISPATCH=true keeps it on; it only affects single-device CPU
    computations): a computation then runs on the calling thread, whose memory comes from
    glibc's main arena, which `tune_host_allocator` can keep mapped (see there).
  * `apply_host_defaults()` — call once the backend is known (any time before the first
    train step runs): on the CPU backend it calls `tune_host_allocator()`.
  * `tune_host_allocator()` — glibc only: mallopt(M_MMAP_MAX=0) and M_TRIM_THRESHOLD=max, so
    large buffers (XLA:CPU allocates each execution's temporaries, ~1.7 GB for a ViT-Ti/16
    batch-32 train step, in one block) are carved from the heap and reused instead of being
    mmap-ed fresh and page-faulted (zero-filled) on every step. Measured on a 2-core CPU:
    ~470k page faults and ~0.75 CPU-s of kernel time per step gone; ViT-Ti/16 b32 train
    step ~1.28x faster (docs/performance.md).
    The cost: freed memory stays in the process (RSS stays at its peak).
  * `quiet_tensorflow()` — TF_CPP_MIN_LOG_LEVEL=2 and TF_ENABLE_ONEDNN_OPTS=0 unless the user
    set them (importing `vit_jax` applies it): TensorFlow is only the TFDS reader here and its
    C++ start-up lines are noise; errors still show.
  * `enable_compilation_cache()` — points JAX's persistent compilation cache at a directory
    (vit_jax/run/compile_cache.py decides which: `<workdir>/compilation_cache` for runs) and
    caches programs that took >= CACHE_MIN_COMPILE_TIME_SECS to compile (off the GPU without
    JAX's XLA autotune cache, whose path would enter every key), unless the user chose
    (JAX_COMPILATION_CACHE_DIR, jax.config): then theirs is kept (docs/running.md).
Set VIT_JAX_NO_XLA_DEFAULTS=1 to apply none of the XLA / dispatch / allocator defaults (to
measure what they buy).

This module is the one home of the library's process-wide side effects; where each is applied
is listed in docs/architecture.md ("Start-up side effects") and held by tests/test_architecture.py.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from typing import Mapping, MutableMapping, Optional

# platform -> {flag: value}. Each entry needs a measurement in docs/performance.md.
# CPU: no XLA flag measured a gain for ViT-Ti/16 training or inference on the 2-core CPU
# (xla_cpu_prefer_vector_width=512, xla_cpu_enable_fast_math, the concurrency-optimised
# scheduler on/off, xla_cpu_multi_thread_eigen=false, YNNPACK fusion types DOT / +ELTWISE
# +REDUCE, oneDNN, XNNPACK: within noise or up to 21% slower; docs/performance.md), so none
# is set: the CPU gains come from the model's formulation and the host settings below.
# GPU/TPU: not measured yet (no accelerator lent so far), so none is set; the candidates
# and the commands to measure them are in docs/performance.md.
DEFAULT_XLA_FLAGS: dict[str, dict[str, str]] = {
    "cpu": {},
    "gpu": {},
    "tpu": {},
}

_DISABLE_ENV = "VIT_JAX_NO_XLA_DEFAULTS"
_ASYNC_ENV = "JAX_CPU_ENABLE_ASYNC_DISPATCH"
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameter numbers (malloc.h)
_host_allocator_tuned = False


TF_ENV_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


def quiet_tensorflow(environ: MutableMapping[str, str] = os.environ) -> None:
  """TensorFlow's C++ start-up noise off (oneDNN notes, CPU instruction sets, GCS probes)."""
  for key, value in TF_ENV_DEFAULTS.items():
    environ.setdefault(key, value)


def default_flags(platforms: Optional[tuple[str, ...]] = None) -> dict[str, str]:
  """The default flags of `platforms` (default: all) merged into one dict."""
  merged: dict[str, str] = {}
  for platform, flags in DEFAULT_XLA_FLAGS.items():
    if platforms is None or platform in platforms:
      merged.update(flags)
  return merged


def apply_defaults(environ: MutableMapping[str, str] = os.environ) -> str:
  """Adds the default flags missing from XLA_FLAGS and the CPU dispatch default.

  Returns the resulting XLA_FLAGS. Must run before JAX creates its backends; it is
  idempotent. Does nothing when VIT_JAX_NO_XLA_DEFAULTS=1.
  """
  current = environ.get("XLA_FLAGS", "")
  if environ.get(_DISABLE_ENV) == "1":
    return current
  present = {f.split("=", 1)[0] for f in current.split()}
  extra = [f"{k}={v}" for k, v in default_flags().items() if k not in present]
  environ["XLA_FLAGS"] = " ".join([current] + extra).strip()
  if environ is os.environ:
    # JAX reads no environment variable for this option; the user's own setting (env
    # JAX_CPU_ENABLE_ASYNC_DISPATCH=true|false) wins. Importing jax creates no backend.
    import jax  # pylint: disable=g-import-not-at-top
    user = environ.get(_ASYNC_ENV)
    jax.config.update("jax_cpu_enable_async_dispatch",
                      user is not None and user.lower() in ("1", "true", "yes"))
  return environ["XLA_FLAGS"]


def tune_host_allocator() -> bool:
  """glibc malloc: never mmap (M_MMAP_MAX=0), never trim (M_TRIM_THRESHOLD=max).

  Returns True when applied (Linux with glibc), False elsewhere. Idempotent.
  """
  global _host_allocator_tuned
  if _host_allocator_tuned:
    return True
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # Not glibc (e.g. musl has no mallopt).
    return False
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # -1 converts to SIZE_MAX inside glibc: the heap top is never returned to the OS.
  ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, -1) == 1
  _host_allocator_tuned = ok
  return ok


def apply_host_defaults(platform: Optional[str] = None,
                        environ: Mapping[str, str] = os.environ) -> bool:
  """On the CPU backend (default: JAX's default backend), tunes the host allocator.

  Returns whether the allocator was tuned. Does nothing when VIT_JAX_NO_XLA_DEFAULTS=1.
  """
  if environ.get(_DISABLE_ENV) == "1":
    return False
  if platform is None:
    import jax  # pylint: disable=g-import-not-at-top
    platform = jax.default_backend()
  return tune_host_allocator() if platform == "cpu" else False


_import_checked = False


def apply_at_first_use(environ: Mapping[str, str] = os.environ) -> bool:
  """`apply_defaults()` if JAX has started no backend yet; else one warning saying how.

  Called when vit_jax.models or vit_jax.sharding is imported; only the first call acts.
  Returns whether the defaults were applied. Does nothing when VIT_JAX_NO_XLA_DEFAULTS=1.
  """
  global _import_checked
  if environ.get(_DISABLE_ENV) == "1" or _import_checked:
    return False
  _import_checked = True
  if "jax" in sys.modules and _backends_started():
    import jax  # pylint: disable=g-import-not-at-top
    if jax.default_backend() == "cpu" and jax.config.read("jax_cpu_enable_async_dispatch"):
      import logging  # pylint: disable=g-import-not-at-top
      logging.getLogger("vit_jax").warning(
          "JAX started its CPU backend before vit_jax.models / vit_jax.sharding were "
          "imported, so the library's CPU start-up defaults (synchronous dispatch; "
          "docs/performance.md) are not in effect and training runs slower. Import them "
          "before the first JAX computation, or set %s=1 to silence this.", _DISABLE_ENV)
    return False
  apply_defaults()
  return True


def _backends_started() -> bool:
  """Whether JAX has created its backends (then backend options can no longer change)."""
  try:
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # A JAX without the helper: assume not started.
    return False


# --- Persistent compilation cache -------------------------------------------------------------
# What JAX 0.10 does (jax/_src/compiler.py, compilation_cache.py, lru_cache.py), which makes one
# directory safe to share between the processes and hosts of a job and between restarts:
#   * Every process looks a program up before compiling it (key: the program, jaxlib version,
#     backend version, XLA_FLAGS / LIBTPU_INIT_ARGS, compile options incl. the device
#     assignment, device kinds); a hit is deserialised instead of compiled.
#   * Only process 0 (jax.distributed's process_id) writes entries, so there is one writer per
#     job; other processes only read. A shared directory (gs://, NFS) gives every host the hit;
#     a per-host local directory gives hits only on the host of process 0.
#   * An entry is one file `<name>-<sha256>-cache`, written once (an existing key is never
#     rewritten) with no lock and no rename (jax_compilation_cache_max_size=-1, the default:
#     no eviction). A reader that meets a partial or unloadable entry (a write cut short) gets
#     a warning and compiles (zlib refuses a truncated entry); the entry is never replaced.
#   * Compiles shorter than jax_persistent_cache_min_compile_time_secs are not written; the
#     entry-size floor (jax_persistent_cache_min_entry_size_bytes, default 0) is none.
#   * With jax_persistent_cache_enable_xla_caches at its default, JAX puts XLA:GPU's autotune
#     cache under the cache directory and that path enters every key (on any backend): a moved
#     workdir, or hosts mounting one share at different paths, would only miss. Off the GPU
#     that XLA cache does nothing, so there it is turned off and keys do not depend on the path.
# Compiles for abstract TPU topology devices (the dry run's --topology) are written but cannot be
# loaded back: the compile-only client cannot deserialise (measured, docs/running.md).
CACHE_MIN_COMPILE_TIME_SECS = 0.5  # The tiny CPU run's eval step (0.35 s) stays out, init in.
_JAX_MIN_COMPILE_TIME_DEFAULT = 1.0  # JAX's own default of that option.
_CACHE_DIR_ENV = "JAX_COMPILATION_CACHE_DIR"
_MIN_TIME_ENV = "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"
_XLA_CACHES_ENV, _JAX_XLA_CACHES_DEFAULT = ("JAX_PERSISTENT_CACHE_ENABLE_XLA_CACHES",
                                            "xla_gpu_per_fusion_autotune_cache_dir")
_cache_dir_set: Optional[str] = None  # The directory enable_compilation_cache() put in JAX.


def enable_compilation_cache(path: Optional[str],
                             environ: Mapping[str, str] = os.environ) -> tuple[Optional[str], str]:
  """JAX's persistent compilation cache in `path` (None: off), unless the user chose one.

  Returns (the directory in effect or None, who chose it: 'vit_jax', 'JAX_COMPILATION_CACHE_DIR',
  'jax config' or 'jax_enable_compilation_cache=False'). Call it before the first compile that
  should use it, on every process. A user's choice, made in the environment or with
  jax.config.update before this call, is kept; so is their min-compile-time setting.
  """
  global _cache_dir_set
  import jax  # pylint: disable=g-import-not-at-top
  current = jax.config.jax_compilation_cache_dir
  if not jax.config.jax_enable_compilation_cache:
    return None, "jax_enable_compilation_cache=False"
  if _CACHE_DIR_ENV in environ:
    return current or None, _CACHE_DIR_ENV
  if current is not None and current != _cache_dir_set:
    return current, "jax config"
  if path != current:
    if current is not None:  # This process used another directory of ours: let JAX reopen.
      from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top
      compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", path)
    _cache_dir_set = path
  if path is None:
    return None, "vit_jax"
  if (_MIN_TIME_ENV not in environ and
      jax.config.jax_persistent_cache_min_compile_time_secs == _JAX_MIN_COMPILE_TIME_DEFAULT):
    jax.config.update("jax_persistent_cache_min_compile_time_secs", CACHE_MIN_COMPILE_TIME_SECS)
  if (_XLA_CACHES_ENV not in environ and jax.default_backend() != "gpu" and
      jax.config.jax_persistent_cache_enable_xla_caches == _JAX_XLA_CACHES_DEFAULT):
    jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
  return path, "vit_jax"


def compilation_cache_in_effect() -> bool:
  """Whether JAX has a persistent compilation cache directory and the cache enabled."""
  import jax  # pylint: disable=g-import-not-at-top
  return bool(jax.config.jax_compilation_cache_dir) and bool(
      jax.config.jax_enable_compilation_cache)
