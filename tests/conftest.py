"""Session-wide test setup: 8 fake CPU devices, quiet TensorFlow, no network, one persistent
compilation cache, and the fixtures many test files share.

XLA_FLAGS must be set before JAX initialises its backend, so it is set here at import time
(pytest imports conftest before any test module). Tests that need a specific device count or
several processes start subprocesses instead; they inherit the environment set here, the
compilation cache included, so a program compiled once (the tiny trainer step, say) is read
from the cache by every later process that compiles it.
"""
import atexit
import os
import pathlib
import shutil
import sys
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
# Never reach the network from tests: Hugging Face Hub calls must use loopback
# servers or the local cache that a test prepares.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# JAX's persistent compilation cache for this process and every subprocess it starts. The key
# covers the program, the compile options and the devices, so a hit is the same executable.
# A fresh cache per pytest run (removed at exit), so timings are those of a fresh machine.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="vit_jax_test_jax_cache_")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))  # `from helpers import ...`

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One TFDS data dir per session: the embedded 'digits' is prepared there once, on first use."""
  return tmp_path_factory.getbasetemp() / "tfds_shared"


@pytest.fixture
def run_config(data_dir):
  """Factory of the tiny run config (helpers.tiny_config) on the session's digits data dir."""
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  return lambda **overrides: tiny_config(data_dir, **overrides)


@pytest.fixture(scope="session")
def trained_workdir(tmp_path_factory, data_dir):
  """One finished tiny run (EMA on, 12 steps, checkpoints at 4/8/12), trained once per session
  and shared by the tests that only read a workdir. Tests must not write into it."""
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top

  from vit_jax.run import loop  # pylint: disable=g-import-not-at-top
  workdir = tmp_path_factory.mktemp("trained_workdir")
  config = tiny_config(data_dir, **{"ema.decay": 0.9})
  result = loop.train_and_evaluate(config, str(workdir))
  assert result["step"] == config.total_steps
  return workdir
