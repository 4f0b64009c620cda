"""run/compile_cache.py: the run's persistent compilation cache (default in the workdir, a path,
off), a user's JAX setting winning, a fresh process loading what the first one wrote (and a
broken entry named), and the lines a run logs. Fresh JAX processes run as subprocesses without
the suite's cache variable."""
import contextlib
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from vit_jax.configs import base
from vit_jax.run import compile_cache, loop, run_state

# Each step: compile_cache.setup(value, workdir), then one compile inside watch(); prints the
# lines and the min-compile-time JAX used.
SCRIPT = """
import json, sys
import jax, jax.numpy as jnp
import ml_collections
import pytest
from vit_jax.run import compile_cache
out = []
for value, workdir in json.loads(sys.argv[1]):
  out.append(compile_cache.setup(ml_collections.ConfigDict({"compilation_cache_dir": value}),
                                 workdir))
  with compile_cache.watch("f", out.append):
    x = jax.ShapeDtypeStruct((8, 8), "float32")  # No compile to make it.
    jax.jit(lambda x: jnp.sin(x) @ x.T + 1).lower(x).compile()
out.append(jax.config.jax_persistent_cache_min_compile_time_secs)
print(json.dumps(out))
"""


def _fresh_process(steps, **env):
  clean = {k: v for k, v in os.environ.items() if not k.startswith("JAX_PERSISTENT_CACHE")
           and k != "JAX_COMPILATION_CACHE_DIR"}
  clean.update(JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
  out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(steps)], env=clean,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(directory):
  return sorted(p.name for p in directory.glob("*-cache")) if directory.exists() else []


def test_cache_dir_defaults_to_the_workdir_and_none_turns_it_off(tmp_path, monkeypatch):
  assert base.defaults().compilation_cache_dir is None
  assert compile_cache.cache_dir(None, "/runs/a/") == "/runs/a/compilation_cache"
  assert compile_cache.cache_dir(None, "gs://b/runs/a") == "gs://b/runs/a/compilation_cache"
  monkeypatch.chdir(tmp_path)
  assert compile_cache.cache_dir(None, "rel") == f"{tmp_path}/rel/compilation_cache"
  assert compile_cache.cache_dir("gs://b/cache", "/runs/a") == "gs://b/cache"
  for off in ("", "none", "None", " NONE "):
    assert compile_cache.cache_dir(off, "/runs/a") is None
  assert compile_cache.cache_dir(None, None) is None  # The dry run has no workdir.
  # Moving the cache is no config change a resume must refuse.
  moved = base.defaults()
  moved.compilation_cache_dir = "/c"
  assert not run_state.config_changes(base.defaults(), moved)


def test_a_fresh_process_loads_what_the_first_wrote_and_none_writes_nothing(tmp_path):
  work_a, work_b = tmp_path / "a", tmp_path / "b"
  first = _fresh_process([[None, str(work_a)], [None, str(work_b)], ["none", str(work_a)]])
  assert first[0].startswith(f"Compilation cache: {work_a}/compilation_cache (")
  assert "written to the compilation cache" in first[1], first
  # Another workdir in the same process: JAX's cache reopened there.
  assert "written to the compilation cache" in first[3], first
  assert first[4] == "Compilation cache: off (config.compilation_cache_dir='none')."
  assert "(no compilation cache)" in first[5], first
  assert first[6] == 0  # The user's JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS kept.
  entries = _entries(work_a / "compilation_cache")
  assert len(entries) == 1 and entries[0].startswith("jit_"), entries
  assert _entries(work_b / "compilation_cache") == entries  # The key is not the directory's.
  second = _fresh_process([[None, str(work_a)]])
  assert re.fullmatch(r"f: loaded from the compilation cache \([0-9.]+ s\)\.", second[1]), second
  assert _entries(work_a / "compilation_cache") == entries
  # A truncated entry (a writer killed mid-write): a warning, a compile, and a line saying
  # which file to delete (JAX never replaces an entry).
  entry = work_a / "compilation_cache" / entries[0]
  entry.write_bytes(entry.read_bytes()[:100])
  third = _fresh_process([[None, str(work_a)]])
  assert "could not be loaded" in third[1], third
  assert f"delete {work_a}/compilation_cache/jit__lambda-*-cache" in third[1], third


def test_the_users_jax_setting_wins_over_the_config(tmp_path):
  user, configured = tmp_path / "user", tmp_path / "configured"
  out = _fresh_process([[str(configured), str(tmp_path / "w")]],
                       JAX_COMPILATION_CACHE_DIR=str(user))
  assert out[0] == (f"Compilation cache: {user} (set by JAX_COMPILATION_CACHE_DIR; "
                    f"config.compilation_cache_dir={str(configured)!r} not used).")
  assert len(_entries(user)) == 1 and not configured.exists()
  assert not (tmp_path / "w").exists()


def test_dry_run_uses_only_a_configured_dir_and_never_with_topology():
  config = ml_collections.ConfigDict({"compilation_cache_dir": None})
  assert compile_cache.setup_dry_run(config, None) is None
  assert compile_cache.setup_dry_run(config, "v5e-4") is None
  config.compilation_cache_dir = "/tmp/somewhere"
  note = compile_cache.setup_dry_run(config, "v5e-4")
  assert note.startswith("Note: with --topology, JAX's compilation cache is off")
  assert "compilation_cache_dir/dry_run" in note  # the planner's own memo serves the repeat


class _Stop(Exception):
  pass


def test_a_run_logs_the_cache_and_keeps_the_suites(tmp_path, run_config, capsys, monkeypatch):
  """Under the suite's JAX_COMPILATION_CACHE_DIR (conftest) a run writes no cache of its own;
  the train step compiles inside watch() (stopped there: the loop itself is tested elsewhere)."""
  entered = []

  @contextlib.contextmanager
  def watch(what, log):
    entered.append(what)
    yield

  def compile_train_step(*args, **kwargs):
    assert entered == ["Train step"]
    raise _Stop

  monkeypatch.setattr(compile_cache, "watch", watch)
  monkeypatch.setattr(loop.train_step, "compile_train_step", compile_train_step)
  with pytest.raises(_Stop):
    loop.train_and_evaluate(run_config(), str(tmp_path / "w"))
  out = capsys.readouterr().out
  suite = os.environ["JAX_COMPILATION_CACHE_DIR"]
  assert f"Compilation cache: {suite} (set by JAX_COMPILATION_CACHE_DIR)." in out, out
  assert not (tmp_path / "w" / "compilation_cache").exists()
