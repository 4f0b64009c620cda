"""run_state: the workdir's config.json written and read back in one module (Orbax:
test_resume.py)."""
import json

import ml_collections
import pytest

from vit_jax.configs import base
from vit_jax.run import run_state


def _config(**kw):
  c = base.defaults()
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
  assert old.grad_norm_clip == base.defaults().grad_norm_clip
  assert old.input.device_prefetch == base.defaults().input.device_prefetch
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


def test_config_changes_outside_the_resumable_keys(tmp_path):
  config = _config(model_name="ViT-Ti_16", base_lr=0.1)
  run_state.check_or_write_config(str(tmp_path), config, has_checkpoint=False)
  stored = run_state.read_config(str(tmp_path))
  longer = _config(model_name="ViT-Ti_16", base_lr=0.1, total_steps=99, eval_every=7)
  with longer.unlocked():
    longer.class_names = ("a", "b")  # Recorded by the trainer from the data.
    longer.input.num_workers = 0
  assert run_state.config_changes(stored, longer) == {}
  other = _config(model_name="ViT-Ti_16", base_lr=0.2, seed=3)
  assert run_state.config_changes(stored, other) == {"base_lr": (0.1, 0.2), "seed": (0, 3)}
  with pytest.raises(ValueError, match=r"base_lr: 0.1 -> 0.2; seed: 0 -> 3"):
    run_state.check_or_write_config(str(tmp_path), other, has_checkpoint=True)
  # A workdir written before a key existed compares equal on that key (today's default).
  data = json.loads((tmp_path / "config.json").read_text())
  del data["class_names"], data["watchdog"]
  (tmp_path / "config.json").write_text(json.dumps(data))
  assert run_state.config_changes(run_state.read_config(str(tmp_path)), config) == {}


def test_results_record_and_last_eval(tmp_path):
  assert run_state.last_eval(str(tmp_path)) is None
  run_state.record_eval(str(tmp_path), 10, {"accuracy": 0.5, "loss": 1.0})
  run_state.record_eval(str(tmp_path), 20, {"accuracy": 0.7, "loss": 0.5})
  run_state.record_eval(str(tmp_path), 20, {"accuracy": 0.8, "loss": 0.4})  # Re-evaluated.
  assert run_state.last_eval(str(tmp_path)) == {"step": 20, "accuracy": 0.8, "loss": 0.4}
  assert run_state.last_eval(str(tmp_path), 10)["accuracy"] == 0.5
  assert run_state.last_eval(str(tmp_path), 15) is None
