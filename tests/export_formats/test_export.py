"""Tests for vit_jax.export: a trained run → official .npz → checkpoint.load round trip."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import REPO, tiny_config  # pylint: disable=g-bad-import-order

from tests import official_layout as ol
from vit_jax import artifacts
from vit_jax.export_formats import npz, writers


def _trained_params(workdir) -> dict:
  """The final params of a workdir by the whole-state restore (not the params-only path the
  export takes), flattened."""
  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.run import run_state  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train_state  # pylint: disable=g-import-not-at-top
  config = run_state.read_config(str(workdir))
  setup = train_state.setup_from_config(config, sharding.make_mesh((("data", -1),)),
                                        int(config.num_classes), int(config.total_steps))
  ckpt = run_state.Checkpointer(str(workdir))
  try:
    state, _ = ckpt.restore(max(ckpt.all_steps()), setup.abstract_state)
  finally:
    ckpt.close()
  return ol.flatten(jax.device_get(state.params))


def test_export_round_trip(tmp_path, trained_workdir):
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  workdir = trained_workdir  # shared, read only: the export goes to tmp_path
  trained = _trained_params(workdir)

  out = writers.export(str(workdir), str(tmp_path / "model.npz"))
  with np.load(out) as f:
    keys = set(f.files)
  # The official (pre-Linen) block numbering on disk.
  assert any("MultiHeadDotProductAttention_1" in k for k in keys), sorted(keys)[:20]
  assert any("MlpBlock_3" in k for k in keys)
  loaded = ol.flatten(checkpoint.load(out))
  assert set(loaded) == set(trained)
  for key, value in trained.items():
    np.testing.assert_array_equal(loaded[key], value, err_msg=key)

  # An existing file is kept unless --overwrite is given.
  before = (tmp_path / "model.npz").read_bytes()
  with pytest.raises(FileExistsError, match="--overwrite"):
    writers.export(str(workdir), out)
  assert (tmp_path / "model.npz").read_bytes() == before
  assert writers.export(str(workdir), out, overwrite=True) == out


def test_export_cli_and_missing_workdir(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.run([sys.executable, "-m", "vit_jax.export", f"--workdir={tmp_path}/none",
                         f"--output={tmp_path}/x.npz"], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode != 0 and "config.json not found" in proc.stderr
  assert not (tmp_path / "x.npz").exists()



def test_export_of_a_scanned_model_is_read_back_by_inference(tmp_path):
  """Exports are per-layer files; a run built with scan_layers=True gets its stacked layout
  back when the loader (vit_jax.artifacts) rebuilds it from the sidecar."""
  from flax.linen import meta  # pylint: disable=g-import-not-at-top

  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  config = tiny_config(tmp_path, **{"model.scan_layers": True, "model.transformer.num_layers": 2})
  model = npz.model_from_architecture(npz.architecture(config))
  images = np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)
  params = meta.unbox(model.init(jax.random.PRNGKey(1), images[:1], train=False)["params"])
  rng = np.random.default_rng(2)  # Non-zero head and distinct layers.
  params = jax.tree.map(lambda x: np.asarray(x) + rng.normal(0, 0.1, x.shape).astype(np.float32),
                        params)
  out = tmp_path / "model.npz"
  checkpoint.save(params, str(out))
  text = json.dumps(npz.architecture(config))
  (tmp_path / "model.json").write_text(text)
  restored = artifacts.resolve(checkpoint_path=str(out))
  loaded_model, loaded = restored.model, restored.params
  assert loaded["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape == (2, 16)
  np.testing.assert_allclose(loaded_model.apply({"params": loaded}, images, train=False),
                             model.apply({"params": params}, images, train=False), atol=1e-5,
                             rtol=1e-5)
