"""run_state: the workdir's config.json written and read back in one module (Orbax: test_resume.py)."""
import json

import ml_collections
import pytest

from vit_jax import run_state
from vit_jax.configs import common


def _config(**kw):
  c = common.defaults()
  c.update(kw)
  return c


def test_config_round_trip_and_old_workdirs_get_new_defaults(tmp_path):
  config = _config(model_name="ViT-Ti_16", base_lr=0.123, mesh=(("fsdp", 2), ("data", -1)))
  with config.unlocked():
    config.model.dtype = "bfloat16"
  run_state.check_or_write_config(str(tmp_path), config, has_checkpoint=False)
  back = run_state.read_config(str(tmp_path))
  assert isinstance(back, ml_collections.ConfigDict)
  assert back.base_lr == 0.123 and back.model.dtype == "bfloat16"
  assert [tuple(x) for x in back.mesh] == [("fsdp", 2), ("data", -1)]
  # A workdir written before a key existed: the key reads as today's default.
  stored = json.loads((tmp_path / "config.json").read_text())
  del stored["grad_norm_clip"], stored["input"]["device_prefetch"]
  (tmp_path / "config.json").write_text(json.dumps(stored))
  old = run_state.read_config(str(tmp_path))
  assert old.grad_norm_clip == common.defaults().grad_norm_clip
  assert old.input.device_prefetch == common.defaults().input.device_prefetch
  assert old.base_lr == 0.123


def test_another_model_in_the_same_workdir_is_refused(tmp_path):
  run_state.check_or_write_config(str(tmp_path), _config(model_name="ViT-Ti_16"), False)
  with pytest.raises(ValueError, match="holds a checkpoint of another model"):
    run_state.check_or_write_config(str(tmp_path), _config(model_name="ViT-S_16"), True)
  # Without a checkpoint the workdir is free to take another model.
  run_state.check_or_write_config(str(tmp_path), _config(model_name="ViT-S_16"), False)
  assert run_state.read_config(str(tmp_path)).model_name == "ViT-S_16"


def test_read_config_of_a_directory_no_run_wrote(tmp_path):
  with pytest.raises(FileNotFoundError, match="must be a directory a vit_jax run wrote"):
    run_state.read_config(str(tmp_path))
