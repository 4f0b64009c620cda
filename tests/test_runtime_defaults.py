"""runtime_defaults: the start-up defaults reach every entry point (CLI, notebook, library)."""
import os
import pathlib
import subprocess
import sys

import pytest

from vit_jax import runtime_defaults

REPO = pathlib.Path(__file__).resolve().parent.parent


def _python(code: str, **env) -> subprocess.CompletedProcess:
  environ = {k: v for k, v in os.environ.items()
             if k not in ("VIT_JAX_NO_XLA_DEFAULTS", "JAX_CPU_ENABLE_ASYNC_DISPATCH")}
  environ.update(PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", **env)
  return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=environ, timeout=300)


def test_apply_defaults_keeps_the_users_flags_and_can_be_turned_off(monkeypatch):
  monkeypatch.setitem(runtime_defaults.DEFAULT_XLA_FLAGS, "cpu", {"--xla_a": "1", "--xla_b": "2"})
  env = {"XLA_FLAGS": "--xla_a=7"}
  assert runtime_defaults.apply_defaults(env).split() == ["--xla_a=7", "--xla_b=2"]
  assert runtime_defaults.apply_defaults(env).split() == ["--xla_a=7", "--xla_b=2"]  # Idempotent.
  off = {"XLA_FLAGS": "", "VIT_JAX_NO_XLA_DEFAULTS": "1"}
  assert runtime_defaults.apply_defaults(off) == ""
  assert runtime_defaults.apply_host_defaults("cpu", off) is False
  assert runtime_defaults.apply_host_defaults("gpu", {}) is False


IMPORT_THEN_USE = (
    "import vit_jax.models, jax\n"
    "from vit_jax import runtime_defaults as rd\n"
    "from vit_jax.models import platform\n"
    "print(jax.config.read('jax_cpu_enable_async_dispatch'), rd._host_allocator_tuned)\n"
    "platform.on_cpu()\n"
    "print(rd._host_allocator_tuned)\n")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator setting")
def test_library_users_get_the_cpu_defaults_without_main():
  out = _python(IMPORT_THEN_USE)
  assert out.returncode == 0, out.stderr[-2000:]
  # Synchronous CPU dispatch from the import; the allocator tuned at the models' first CPU use.
  assert out.stdout.split() == ["False", "False", "True"], out.stdout


def test_the_opt_outs_still_work():
  off = _python(IMPORT_THEN_USE, VIT_JAX_NO_XLA_DEFAULTS="1")
  assert off.returncode == 0 and off.stdout.split() == ["True", "False", "False"], off.stdout
  keep_async = _python(IMPORT_THEN_USE, JAX_CPU_ENABLE_ASYNC_DISPATCH="true")
  assert keep_async.stdout.split()[0] == "True", keep_async.stdout


def test_importing_after_jax_started_says_once_how_to():
  code = ("import jax; jax.numpy.zeros(1).block_until_ready()\n"
          "import vit_jax.models, vit_jax.sharding, vit_jax.training.train_state")
  out = _python(code)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stderr.count("JAX started its CPU backend before") == 1, out.stderr
  assert "before the first JAX computation" in out.stderr
  quiet = _python(code, VIT_JAX_NO_XLA_DEFAULTS="1")
  assert "JAX started its CPU backend before" not in quiet.stderr


def test_the_input_pipeline_does_not_import_jax_for_it():
  """grain's worker processes import the pipeline: they must not pay for JAX."""
  out = _python("import sys, vit_jax, vit_jax.datasets.pipeline; print('jax' in sys.modules)")
  assert out.returncode == 0 and out.stdout.strip() == "False", (out.stdout, out.stderr[-2000:])
