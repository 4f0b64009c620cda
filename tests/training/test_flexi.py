"""FlexiViT training: a model at another patch size equals the model built at that size from
the loader's resized weights; the per-step draw; a tiny run at three patch sizes end to end."""
import collections

import jax
import numpy as np
import pytest

from vit_jax.checkpoint import patch_embed, posemb
from vit_jax.models import factory, registry
from vit_jax.run import loop
from vit_jax.training import flexi


@pytest.mark.parametrize("classifier,patch", [("token", 8), ("token", 32), ("gap", 8),
                                              ("map", 32)])
def test_a_flexi_model_at_another_patch_size_equals_the_model_built_there(classifier, patch):
  flex = registry.create_model("testing", 10, classifier=classifier, posemb_grid=(4, 4))
  x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  params = jax.tree.map(np.asarray, flex.init(jax.random.PRNGKey(0), x, train=False)["params"])
  params["head"]["kernel"] = np.random.default_rng(1).normal(size=params["head"]["kernel"].shape)
  got = flex.clone(flexi_patch=(patch, patch)).apply({"params": params}, x, train=False)
  # The independent route: the checkpoint loader's PI-resize and posemb interpolation.
  prefix = 1 if classifier == "token" else 0
  grid = (64 // patch, 64 // patch)
  ref = dict(params, embedding=dict(params["embedding"], kernel=patch_embed.resize_patch_kernel(
      params["embedding"]["kernel"], (patch, patch))))
  pe = params["Transformer"]["posembed_input"]["pos_embedding"]
  ref["Transformer"] = dict(params["Transformer"], posembed_input={
      "pos_embedding": posemb.interpolate_posemb(pe, grid, num_prefix_tokens=prefix,
                                                 old_grid=(4, 4))})
  built = registry.create_model("testing", 10, classifier=classifier,
                                patches={"size": (patch, patch)})
  want = built.apply({"params": ref}, x, train=False)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  base = flex.apply({"params": params}, x, train=False)   # base patch 16: the 4x4 grid as is
  assert not np.allclose(np.asarray(base), np.asarray(got))


def test_the_draw_depends_on_seed_and_step_only_and_follows_the_weights(run_config):
  config = run_config(**{"flexi.patch_sizes": (2, 4, 8), "flexi.probs": (1, 0, 3)})
  draws = [flexi.patch_size_at(config, s) for s in range(400)]
  assert draws == [flexi.patch_size_at(config, s) for s in range(400)]
  counts = collections.Counter(draws)
  assert counts[4] == 0 and 0.65 < counts[8] / 400 < 0.85
  with pytest.raises(ValueError, match="do not divide the crop 8"):
    flexi.patch_sizes(run_config(**{"flexi.patch_sizes": (3,)}))
  with pytest.raises(ValueError, match="one weight >= 0 per patch size"):
    flexi.probabilities(run_config(**{"flexi.patch_sizes": (2, 4), "flexi.probs": (1,)}))
  fields = factory.run_model_config(config)
  assert tuple(fields.posemb_grid) == (2, 2)               # crop 8 // base patch 4


def test_a_tiny_flexivit_run_trains_at_every_patch_size_and_evaluates_at_two(tmp_path,
                                                                                run_config,
                                                                                capfd):
  config = run_config(**{"flexi.patch_sizes": (2, 4, 8), "total_steps": 9,
                         "checkpoint_every": 9, "log_every": 1})
  with config.unlocked():
    config.evals = {"p2": {"type": "classification", "patch_size": 2},
                    "p8": {"type": "classification", "patch_size": 8}}
  result = loop.train_and_evaluate(config, str(tmp_path / "w"))
  ev = result["eval"]
  assert {"p2/top1", "p8/top1"} <= set(ev) and ev["p2/loss"] != ev["p8/loss"]
  assert result["train"]["patch_size"] == flexi.patch_size_at(config, 8)
  log = "".join(capfd.readouterr())
  compiled = [p for p in (2, 4, 8) if f"Train step at patch size {p}" in log]
  first = flexi.patch_size_at(config, 0)
  assert set(compiled) | {first} == {flexi.patch_size_at(config, s) for s in range(9)}
  # The command line evaluates the workdir at any patch size, equal to the run's own figure.
  from vit_jax import evaluate  # pylint: disable=g-import-not-at-top
  out = tmp_path / "r.json"
  assert evaluate.main(["--workdir", str(tmp_path / "w"), "--patch_size", "8",
                        "--json", str(out)]) == 0
  import json  # pylint: disable=g-import-not-at-top
  results = json.loads(out.read_text())["results"]
  assert results["p8/loss"] == pytest.approx(ev["p8/loss"], rel=1e-5)
  assert results["p2/loss"] == pytest.approx(ev["p8/loss"], rel=1e-5)  # p2's entry, at 8 now
  # ... and at another resolution: its position embedding is interpolated, nothing squashed.
  assert evaluate.main(["--workdir", str(tmp_path / "w"), "--resolution", "16",
                        "--patch_size", "4", "--json", str(out)]) == 0
  report = json.loads(out.read_text())
  assert report["resolution"] == 16 and report["results"]["p8/examples"] == 297


def test_the_dry_run_plans_the_smallest_patch_size(run_config):
  from vit_jax.planning import dry_run  # pylint: disable=g-import-not-at-top
  config = run_config(**{"flexi.patch_sizes": (2, 4, 8), "mesh": (("data", 1),)})
  r = dry_run.analyse(config, jax.devices()[:1])
  plain = dry_run.analyse(run_config(mesh=(("data", 1),)), jax.devices()[:1])
  assert r["flexi_patch_size"] == 2 and "patch size 2" in dry_run.format_report(r)
  assert r["formula_flops_per_device"] > 3 * plain["formula_flops_per_device"]  # 16 vs 4 tokens


def test_another_patch_size_on_a_plain_model_is_one_clear_error(trained_workdir, capsys):
  from vit_jax import evaluate  # pylint: disable=g-import-not-at-top
  assert evaluate.main(["--workdir", str(trained_workdir), "--patch_size", "2"]) != 0
  assert "only a FlexiViT model" in capsys.readouterr().err
