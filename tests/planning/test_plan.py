"""--plan: what is a skipped row (with its reason) and what is the user's error; the ranking."""
import os
import subprocess
import sys

import pytest
from helpers import REPO

from vit_jax.planning import plan


class XlaRuntimeError(Exception):
  """Stands in for jaxlib's compiler error type (matched by name, as plan.py does)."""


class FakeDevice:
  platform, device_kind = "tpu", "TPU v5 lite"


def _config(**overrides):
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  c = base.defaults()
  c.model_name, c.dataset, c.num_classes = "ViT-Ti_16", "cifar10", None
  c.batch, c.optimizer = 16, "adamw"
  with c.unlocked():
    c.update_from_flattened_dict(overrides)
  return c


def _fake_analyse(fits_from=None, refuse_model=None, comm=None):
  """An analyse() stand-in: fits from a ladder rung on, refuses a model axis size, and costs
  `comm(mesh)` seconds of communication on top of the same compute everywhere."""
  order = [r.remat_policy for r in plan.LADDER]

  def analyse(config, devices):
    mesh = dict(config.mesh)
    if refuse_model and mesh["model"] == refuse_model:
      raise XlaRuntimeError("INVALID_ARGUMENT: the compiler refuses this sharding")
    policy = config.model.remat_policy if config.model.remat else None
    fits = fits_from is None or order.index(policy) >= order.index(fits_from)
    extra = comm(mesh) if comm else 0.0
    return {"fits": fits, "peak_bytes": 1 << 30, "capacity_bytes": 16 << 30,
            "step_time_bound_s": 1.0, "step_time_no_overlap_s": 1.0 + extra,
            "mfu_range": (0.4, 0.5), "bound_by": "compute", "ici_bytes": extra * 1e9,
            "dcn_bytes": 0.0}
  return analyse


def test_rows_are_ranked_by_the_step_time_with_communication(monkeypatch):
  # Same FLOPs everywhere; more fsdp = more bytes sent: fsdp-heavy meshes rank last.
  monkeypatch.setattr(plan.dry_run, "analyse", _fake_analyse(comm=lambda m: m["fsdp"] / 100))
  result = plan.plan(_config(), [FakeDevice()] * 16)
  fsdp = [dict(r["mesh_config"])["fsdp"] for r in result["fitting"]]
  model = [dict(r["mesh_config"])["model"] for r in result["fitting"]]
  assert fsdp[0] == 1 and fsdp[-1] == 16 and len(fsdp) == len(plan.candidate_meshes(16))
  times = [r["step_time_no_overlap_s"] for r in result["fitting"]]
  assert times == sorted(times) and model  # one compile per mesh: each fits at once
  assert result["compiles"] == len(plan.candidate_meshes(16))


def test_ladder_climbs_until_it_fits_and_lists_each_skip(monkeypatch):
  monkeypatch.setattr(plan.dry_run, "analyse", _fake_analyse(fits_from="full"))
  result = plan.plan(_config(), [FakeDevice()] * 4)
  assert all("--config.model.remat_policy=full" in r["overrides"] for r in result["fitting"])
  reasons = [s["reason"] for s in result["skipped"]]
  assert sum(r.startswith("does not fit") for r in reasons) == 3 * len(result["fitting"])
  table = plan.format_plan(result)
  assert "Skipped (" in table and "does not fit: needs 1.00 GiB" in table


def test_batch_that_does_not_divide_and_compiler_refusals_are_rows(monkeypatch):
  monkeypatch.setattr(plan.dry_run, "analyse", _fake_analyse(refuse_model=4))
  result = plan.plan(_config(batch=12), [FakeDevice()] * 8)
  reasons = [s["reason"] for s in result["skipped"]]
  assert any("micro-batch 12 does not divide over data x fsdp = 8 chips" in r for r in reasons)
  assert any(r.startswith("compiler refused: INVALID_ARGUMENT") for r in reasons)
  assert result["fitting"]  # model 2 (4 shards of 12) fits


def test_a_config_error_is_raised_not_a_row(monkeypatch):
  def typo(config, devices):
    raise ValueError("optimizer='adamx' is unknown; use 'sgd', 'adamw', 'adafactor' or 'lion'.")
  monkeypatch.setattr(plan.dry_run, "analyse", typo)
  with pytest.raises(ValueError, match="adamx"):
    plan.plan(_config(), [FakeDevice()] * 4)


def test_main_plan_with_a_typo_exits_2_with_one_line():
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  got = subprocess.run(
      [sys.executable, "-m", "vit_jax.main", "--plan", "--config=configs/pretrain_i1k.py:ti16",
       "--config.pp.crop=32", "--config.batch=16", "--config.optimizer=adamx"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert got.returncode == 2, got.stderr[-2000:]
  assert "adamx" in got.stderr and "Traceback" not in got.stderr
  assert "No configuration of the grid fits" not in got.stdout
