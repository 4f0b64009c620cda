"""Packed native-aspect training (config.naflex) end to end: a mixed-aspect image folder
trained, evaluated by the run and by `evaluate`, resumed exactly, exported and classified with
`inference --keep_aspect`; the packed step on 1 and 8 devices (data, fsdp); the dry run."""
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from helpers import mixed_aspect_folder, tiny_packed_config
from jax.sharding import Mesh

from vit_jax import evaluate, inference, sharding
from vit_jax.datasets import pipeline
from vit_jax.export_formats import writers
from vit_jax.models import factory
from vit_jax.run import loop
from vit_jax.training import train_state, train_step


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  return mixed_aspect_folder(tmp_path_factory.mktemp("mixed"))


def test_a_packed_run_trains_evaluates_resumes_and_exports(tmp_path, folder, capsys):
  config = tiny_packed_config(folder, total_steps=40, checkpoint_every=20, warmup_steps=4,
                              **{"model.hidden_size": 32, "model.transformer.num_heads": 4,
                                 "naflex.token_drop": 0.2})
  with config.unlocked():
    config.lr = 3e-3
  work = tmp_path / "w"
  result = loop.train_and_evaluate(config, str(work))
  assert result["eval"]["accuracy"] > 0.75          # 3 classes: chance is 1/3
  assert result["eval"]["examples"] == 48
  # Resumed from the checkpoint at step 20: the same final weights, bit for bit.
  expected = jax.tree.leaves(jax.device_get(result["state"].params))
  shutil.rmtree(work / "checkpoints" / "40")
  resumed = loop.train_and_evaluate(config, str(work))
  for a, b in zip(expected, jax.tree.leaves(jax.device_get(resumed["state"].params))):
    np.testing.assert_array_equal(a, b)
  # The command line evaluates the workdir as the run did (one image per sequence).
  out = tmp_path / "r.json"
  assert evaluate.main(["--workdir", str(work), "--json", str(out)]) == 0
  got = json.loads(out.read_text())["results"]
  assert got["classification/loss"] == pytest.approx(resumed["eval"]["loss"], rel=1e-5)
  # At another token budget: (8 px / 4 px patches)^2 = 4 tokens an image instead of 48.
  assert evaluate.main(["--workdir", str(work), "--resolution", "8", "--json", str(out),
                        "--keep_aspect"]) == 0
  small = json.loads(out.read_text())
  assert small["overridden"]["naflex.eval_seq_len"] == {"run": 48, "flag": 4}
  assert small["results"]["classification/loss"] != got["classification/loss"]
  # An export classifies arbitrary images, aspect kept or squashed to the run's crop.
  exported = tmp_path / "m.npz"
  writers.export(str(work), str(exported))
  images = [str(p) for p in sorted(pathlib.Path(folder, "test").glob("*/*.png"))[:3]]
  capsys.readouterr()
  assert inference.main(["--checkpoint", str(exported), "--keep_aspect", "--top_k", "1",
                         *images]) == 0
  assert inference.main(["--checkpoint", str(exported), "--top_k", "1", *images]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert sum(line.strip().startswith(("0.", "1.")) for line in lines) == 6


def _mesh(shape):
  return Mesh(np.array(jax.devices()[:int(np.prod(shape))]).reshape(shape), sharding.MESH_AXES)


def test_the_packed_step_is_the_same_on_one_and_eight_devices(folder):
  config = factory.with_pipeline_settings(tiny_packed_config(folder))
  batch = next(pipeline.create_train_iterator(config))
  out = []
  for shape in ((1, 1, 1), (8, 1, 1), (2, 4, 1)):   # one device; data 8; data 2 x fsdp 4
    setup = train_state.setup_from_config(config, _mesh(shape), 3, 12)
    state = train_state.create_train_state(setup, 0)
    step = train_step.compile_train_step(setup, config, 3)
    state, metrics = step(state, jax.device_put(batch, sharding.batch_sharding(setup.mesh)))
    out.append((jax.device_get(metrics), jax.device_get(state.params)))
  for m, p in out[1:]:
    for key in ("loss", "grad_norm"):
      assert float(m[key]) == pytest.approx(float(out[0][0][key]), rel=1e-4)
    for a, b in zip(jax.tree.leaves(out[0][1]), jax.tree.leaves(p)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_dry_run_plans_the_packed_step(folder):
  from vit_jax.planning import dry_run  # pylint: disable=g-import-not-at-top
  config = tiny_packed_config(folder, mesh=(("data", 1),))
  r = dry_run.analyse(config, jax.devices()[:1])
  assert r["batch"] == 8 and r["packed"] == (48, 3)
  # The formula counts matmuls only; a width-16 model spends as much again on the rest (the
  # unpacked tiny model's ratio is 1.8).
  assert 1.0 < r["flops_per_device"] / r["formula_flops_per_device"] < 2.5
