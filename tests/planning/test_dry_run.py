"""Tests for --dry_run (vit_jax.planning.dry_run): memory per device, FLOPs, through main.py too."""
import math
import os
import subprocess
import sys

import jax
import pytest
from helpers import REPO, TINY_FLAGS, tiny_config  # pylint: disable=g-bad-import-order

from vit_jax.planning import dry_run, report


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
def test_dry_run_reports_memory_and_flops(tmp_path):
  config = tiny_config(tmp_path, num_classes=10)
  replicated = dry_run.analyse(config)
  with config.unlocked():
    config.mesh = (("fsdp", 4), ("model", 2))
  sharded = dry_run.analyse(config)
  # Independent count: the model's parameters, float32, all on one device when replicated.
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  model = registry.model_from_run_config(config, 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)),
                                             train=False))
  total = sum(math.prod(x.shape) * 4 for x in jax.tree.leaves(shapes["params"]))
  assert replicated["params_bytes"] == total
  assert sharded["params_bytes"] < total
  assert replicated["opt_state_bytes"] >= total  # AdamW: two moments (+ a count).
  assert replicated["temp_bytes"] > 0 and replicated["peak_bytes"] > replicated["params_bytes"]
  assert replicated["flops_per_device"] > 0
  assert sharded["mesh"] == {"data": 1, "fsdp": 4, "model": 2}
  text = dry_run.format_report(replicated)
  for needle in ("params per device", "optimizer state per device", "activations/temp", "FLOPs",
                 "step-time model omitted"):
    assert needle in text, text


def test_main_dry_run_prints_and_exits(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", "vit_jax.main", "--dry_run", *TINY_FLAGS,
                         f"--workdir={tmp_path}/never", "--config.total_steps=10",
                         "--config.mesh=(('data',2),('fsdp',4))"],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "peak memory per device" in proc.stdout and "FLOPs per step" in proc.stdout
  assert not (tmp_path / "never").exists()


# --- TPU slices through libtpu's abstract devices (no TPU needed) ---------------------------
try:
  import libtpu  # noqa: F401  pylint: disable=unused-import,g-import-not-at-top
  HAS_LIBTPU = True
except ImportError:
  HAS_LIBTPU = False
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="pip install -r requirements-tpu.txt")


def tpu_config(**overrides):
  """A small ViT (every width divisible by 4) pretraining-style config; no dataset is opened."""
  import golden_cases  # pylint: disable=g-import-not-at-top  (the guard's tiny config)
  return golden_cases.config({"batch": 16, "batch_eval": 16, **overrides})


def _param_bytes(config):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  model = registry.model_from_run_config(config, 10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                             train=False))["params"]
  from flax.linen import meta  # pylint: disable=g-import-not-at-top
  flat = jax.tree_util.tree_flatten_with_path(meta.unbox(shapes))[0]
  total = sum(math.prod(x.shape) * 4 for _, x in flat)
  biases = sum(math.prod(x.shape) * 4 for path, x in flat if path[-1].key == "bias")
  assert biases < total / 50  # the bound below is tight: biases are a sliver of the model
  return total, biases


@needs_libtpu
@pytest.mark.parametrize("mesh,shards", [((("data", -1),), 1), ((("fsdp", -1),), 4),
                                         ((("fsdp", 2), ("model", 2)), 4)])
def test_tpu_slice_report_matches_the_formula(mesh, shards):
  devices = dry_run.target_devices("v5e:2x2")
  one_layer = {"model.transformer.num_layers": 1}  # the split per leaf is that of every layer
  r = dry_run.analyse(tpu_config(mesh=mesh, **one_layer), devices)
  assert r["device_kind"] == "TPU v5 lite" and r["devices"] == 4 and r["fits"] is True
  total, biases = _param_bytes(tpu_config(**one_layer))
  # params per chip = total / shard factor: exact when replicated; over pure fsdp only (some)
  # bias vectors stay whole; over fsdp x model the 'embed'-only leaves are split 2 ways.
  if shards == 1:
    assert r["params_bytes"] == total
  elif dict(mesh).get("model", 1) == 1:
    assert total / shards <= r["params_bytes"] <= total / shards + biases, (
        r["params_bytes"], total)
  else:
    assert total / shards <= r["params_bytes"] < total / 2, (r["params_bytes"], total)
  assert r["capacity_bytes"] == 16 * 2**30 and r["headroom_bytes"] > 0
  assert r["flops_per_device"] > 0 and r["bytes_accessed_per_device"] > 0
  assert r["formula_flops_per_device"] > 0 and r["step_time_bound_s"] > 0
  assert 0 < r["best_mfu"] <= 1.0
  reduced = r["collectives"]["all-reduce"]["count"] + r["collectives"]["reduce-scatter"]["count"]
  assert reduced > 0  # gradients are reduced over the batch shards
  if shards > 1:  # sharded params are gathered for the forward pass
    assert r["collectives"]["all-gather"]["count"] > 0
  text = dry_run.format_report(r)
  for needle in ("capacity per device", "headroom", "collectives per step", "step time:", "MFU",
                 "fits: yes"):
    assert needle in text, text


@needs_libtpu
def test_oversized_batch_is_one_clear_message_and_exit_1(capsys):
  config = tpu_config(batch=1 << 14, batch_eval=16, **{"pp.crop": 224})  # 785 tokens per image
  assert report.run(config, topology_name="v5e:2x2") == 1
  out = capsys.readouterr().out
  assert "Does not fit: ViT-Ti_16 at batch 16384 on 4 x TPU v5 lite" in out
  assert "--config.model.remat=True" in out and "--config.accum_steps=2" in out
  assert "Compiler message (for experts):" in out and "RESOURCE_EXHAUSTED" in out


@needs_libtpu
def test_plan_on_a_tiny_grid(capsys):
  from vit_jax.planning import plan  # pylint: disable=g-import-not-at-top
  devices = dry_run.target_devices("v5e:2x2")
  # One layer: each mesh's compile is shorter; which meshes fit does not depend on the depth.
  result = plan.plan(tpu_config(**{"model.transformer.num_layers": 1}), devices)
  meshes = plan.candidate_meshes(4)
  assert len(meshes) == 5 and result["compiles"] == len(meshes)  # each fits at once
  bounds = [r["step_time_bound_s"] for r in result["fitting"]]
  assert bounds == sorted(bounds)
  table = plan.format_plan(result)
  assert ("--config.mesh='((\"fsdp\", 4),)' --config.model.remat=False --config.accum_steps=1"
          in table)
  assert "Plan: 5 meshes" in capsys.readouterr().out


@needs_libtpu
def test_main_topology_dry_run_and_its_errors(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  base = [sys.executable, "-m", "vit_jax.main", "--dry_run",
          "--config=configs/pretrain_i1k.py:ti16",
          "--config.pp.crop=32", "--config.batch=16", "--config.batch_eval=16",
          # Scanned layers: libtpu compiles one layer body, not 12 (~30 s of the run otherwise).
          "--config.model.scan_layers=True"]
  out = tmp_path / "r.json"
  ok = subprocess.run(base + ["--topology=v5litepod-4", f"--json={out}"], cwd=REPO, env=env,
                      capture_output=True, text=True, timeout=300)
  assert ok.returncode == 0, ok.stderr[-3000:]
  assert "4 x TPU v5 lite" in ok.stdout and "fits: yes" in ok.stdout
  import json  # pylint: disable=g-import-not-at-top
  figures = json.loads(out.read_text())
  assert figures["devices"] == 4 and figures["peak_bytes"] < figures["capacity_bytes"]
  assert figures["collectives"]["all-reduce"]["count"] > 0  # data-parallel gradients
  bad = subprocess.run(base + ["--topology=v5p-7"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
  # A bad slice name is bad input (2); 1 is kept for "compiles but does not fit".
  assert bad.returncode == 2 and "count TensorCores" in bad.stderr, bad.stderr[-2000:]
  assert "Traceback" not in bad.stderr


@needs_libtpu
def test_vit22b_options_compile_for_tpu_with_fsdp_and_model_axes():
  """Parallel blocks, QK norm and no biases: logical axes let fsdp x model shard them."""
  config = tpu_config(mesh=(("fsdp", 2), ("model", 2)), **{
      "model.scan_layers": True})
  with config.unlocked():
    config.model.parallel_block, config.model.qk_norm, config.model.use_bias = True, True, False
  r = dry_run.analyse(config, dry_run.target_devices("v5e:2x2"))
  assert r["fits"] is True and r["mesh"] == {"data": 1, "fsdp": 2, "model": 2}
  total = r["total_params"] * 4
  assert total / 4 <= r["params_bytes"] < total / 2  # sharded over both axes


@needs_libtpu
def test_a_repeated_topology_dry_run_reads_its_memo(tmp_path, monkeypatch):
  """JAX's cache cannot load abstract-TPU compiles; the planner's memo serves the repeat."""
  config = tpu_config(**{"model.transformer.num_layers": 1})
  with config.unlocked():
    config.compilation_cache_dir = str(tmp_path / "cache")
  devices = dry_run.target_devices("v5e:2x2")
  first = dry_run.analyse(config, devices)
  assert first["compile_memo_hit"] is False
  assert len(list((tmp_path / "cache" / "dry_run").glob("*.json.gz"))) == 1

  def no_compile(*args, **kwargs):
    raise AssertionError("compiled again")
  monkeypatch.setattr(dry_run, "_compile", no_compile)
  second = dry_run.analyse(config, devices)
  assert second["compile_memo_hit"] is True
  for key in ("peak_bytes", "flops_per_device", "bytes_accessed_per_device", "ici_bytes",
              "step_time_bound_s"):
    assert second[key] == first[key], key
  assert "read from the dry-run memo" in dry_run.format_report(second)
  monkeypatch.undo()
  with config.unlocked():  # another program: another entry
    config.batch = 32
  assert dry_run.analyse(config, devices)["compile_memo_hit"] is False


@needs_libtpu
def test_a_two_tower_sigmoid_step_compiles_for_a_tpu_slice_with_the_same_report(data_dir):
  from helpers import tiny_image_text_config  # pylint: disable=g-import-not-at-top
  config = tiny_image_text_config(data_dir, batch=16, **{"mesh": (("data", 2), ("fsdp", 2))})
  r = dry_run.analyse(config, dry_run.target_devices("v5e:2x2"))
  assert r["fits"] is True and r["devices"] == 4 and r["total_params"] > 0
  # The chunked loss and in-batch accuracy pass the text embeddings around the 4 batch shards:
  # 3 hops each, forward, and the loss's backward again -- never an all-gather of them.
  assert r["collectives"]["collective-permute"]["count"] >= 6
  assert 0.5 < r["flops_per_device"] / r["formula_flops_per_device"] < 2.0
  assert "fits: yes" in dry_run.format_report(r)
