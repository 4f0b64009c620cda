"""Evaluator maths against independent computations: top-k, ReaL and per-class counts by hand
through the compiled eval step runs use, per-class accuracy by scikit-learn's confusion matrix,
the few-shot ridge probe by scikit-learn's Ridge and a NumPy closed form, seeds by NumPy."""
import json

import flax.linen as nn
import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import confusion_matrix

from vit_jax.datasets import pipeline, sources
from vit_jax.evaluators import classification, classification_evaluator, fewshot, runner


class _ImageIsLogits(nn.Module):
  """A 'model' whose logits are its (B, 1, 1, C) input: hand-chosen logits through the step."""

  @nn.compact
  def __call__(self, x, train=False):
    del train
    return x.reshape(x.shape[0], -1) * self.param("scale", nn.initializers.ones, ())


# 6 real rows and 2 padded ones (mask 0) over 4 classes; ties rank the lower index first.
_LOGITS = np.array([[1, 3, 2, 0],   # label 1: top-1 hit
                    [1, 3, 2, 0],   # label 2: second, a top-2 hit
                    [2, 2, 1, 0],   # label 1: tied with class 0, which ranks first: top-2 only
                    [2, 2, 1, 0],   # label 0: wins the tie: top-1 hit
                    [0, 0, 0, 0],   # label 3: all tied, last: a hit only at k = 4
                    [5, 1, 1, 1],   # label 2: one above, class 1 tied below it: third
                    [0, 9, 0, 0],   # padding, label 1: would be a hit
                    [9, 0, 0, 0]],  # padding, label 0: would be a hit
                   np.float32)
_LABELS = np.array([1, 2, 1, 0, 3, 2, 1, 0])
_MASK = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)
# ReaL sets (multi-hot): rows 2 and 5 have none (not counted); the padding would hit.
_REAL = np.zeros((8, 4), np.float32)
for _row, _set in enumerate([[1], [2, 3], [], [0, 1], [0], [], [1], [0]]):
  _REAL[_row, _set] = 1.0


def _identity_step(topk, per_class):
  """The eval step runs use (classification_evaluator.make_eval_step) on _ImageIsLogits."""
  import optax  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding  # pylint: disable=g-import-not-at-top  (imports jax: libtpu)
  from vit_jax.configs import base
  from vit_jax.training import train_state
  mesh = sharding.make_mesh(base.DEFAULT_MESH)
  setup = train_state.make_setup(_ImageIsLogits(), optax.identity(), None, mesh, (8, 1, 1, 4),
                                 sharding.logical_axis_rules(base.defaults()))
  params = train_state.put_params({"scale": np.float32(1.0)}, setup)
  return classification_evaluator.make_eval_step(setup, topk, per_class), params


@pytest.mark.parametrize("topk,want_topk", [(1, 2), (2, 4), (3, 5), (4, 6), (10, 6)])
def test_the_eval_step_counts_hand_computed_cases(topk, want_topk):
  """Top-1 / top-k / per-class / ReaL counts and the loss of the compiled step runs use, on
  logits whose answers are worked out by hand (ties, padding), and the figures reported."""
  import jax  # pylint: disable=g-import-not-at-top
  step, params = _identity_step(topk, True)
  batch = {"image": _LOGITS.reshape(8, 1, 1, 4), "label": np.eye(4, dtype=np.float32)[_LABELS],
           "mask": _MASK, "real": _REAL}
  out = {k: np.asarray(v, np.float64) for k, v in jax.device_get(step(params, batch)).items()}
  assert out["count"] == 6 and out["correct"] == 2 and out["correct_topk"] == want_topk
  np.testing.assert_array_equal(out["class_count"], [1, 2, 2, 1])
  np.testing.assert_array_equal(out["class_correct"], [1, 1, 0, 0])
  assert out["real_count"] == 4 and out["real_correct"] == 3  # rows 0, 3, 4 of 0, 1, 3, 4
  logp = _LOGITS - np.log(np.exp(_LOGITS.astype(np.float64)).sum(-1, keepdims=True))
  want_loss = -sum(logp[i, _LABELS[i]] for i in range(6))
  assert out["loss_sum"] == pytest.approx(want_loss, rel=1e-6)
  values = classification.values(out, topk)
  assert values["accuracy"] == 2 / 6 and values[f"top{topk}_accuracy"] == want_topk / 6
  assert values["real_accuracy"] == 3 / 4 and values["examples"] == 6
  assert classification.per_class_values(out) == {0: 1.0, 1: 0.5, 2: 0.0, 3: 0.0}
  # A batch that is all padding counts nothing.
  empty = dict(batch, mask=np.zeros(8, np.float32))
  nothing = jax.device_get(step(params, empty))
  assert all(float(np.sum(v)) == 0.0 for v in nothing.values())


def test_per_class_values_against_the_confusion_matrix():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 200)
  logits = rng.normal(size=(200, 6))
  mask = (rng.random(200) < 0.9).astype(np.float32)
  sums = classification.batch_sums(logits, labels, mask, per_class=True)
  keep = mask > 0
  cm = confusion_matrix(labels[keep], logits[keep].argmax(-1), labels=range(6))
  want = {c: cm[c, c] / cm[c].sum() for c in range(6) if cm[c].sum()}
  got = classification.per_class_values(sums)
  assert set(got) == set(want) == set(range(5))  # no example of class 5: no figure
  for c in want:
    assert got[c] == pytest.approx(want[c])


@pytest.mark.parametrize("n,d", [(12, 40), (80, 8)])  # dual and primal forms
def test_ridge_equals_sklearn(n, d):
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(n, d)), rng.integers(0, 4, n)
  y[:4] = np.arange(4)
  w, b = fewshot.fit_ridge(x, y, 4, 0.7)
  ref = Ridge(alpha=0.7, fit_intercept=True).fit(x, 2.0 * np.eye(4)[y] - 1.0)
  np.testing.assert_allclose(w, ref.coef_.T, atol=1e-9)
  np.testing.assert_allclose(b, ref.intercept_, atol=1e-9)


def _clusters(rng, n_per_class, classes=6, dim=16, noise=1.0):
  centres = rng.normal(0, 3, (classes, dim))
  y = np.repeat(np.arange(classes), n_per_class)
  return centres[y] + rng.normal(0, noise, (len(y), dim)), y


def test_fewshot_matches_sklearn_on_its_own_picks_and_is_seeded():
  rng = np.random.default_rng(2)
  train_x, train_y = _clusters(rng, 40)
  test_x, test_y = _clusters(np.random.default_rng(2), 20)
  result = fewshot.evaluate(train_x, train_y, test_x, test_y, shots=(1, 5, 10), seed=3)
  assert set(result.accuracy) == {1, 5, 10} and result.accuracy[10] > 0.9
  assert all(len(l2) == 1 and l2[0] in fewshot.DEFAULT_L2_REGS for l2 in result.l2_reg.values())
  assert result.accuracy_std == {1: 0.0, 5: 0.0, 10: 0.0}
  again = fewshot.evaluate(train_x, train_y, test_x, test_y, shots=(1, 5, 10), seed=3)
  assert again.accuracy == result.accuracy and again.l2_reg == result.l2_reg
  # The same picks and strength through scikit-learn give the same test accuracy.
  validation = fewshot.sample_per_class(train_y, 5, np.random.default_rng(3))
  for k in (1, 5, 10):
    picked = fewshot.sample_per_class(train_y, k, np.random.default_rng([3, k]),
                                      exclude=validation)
    assert len(picked) == 6 * k and not set(picked) & set(validation)
    ref = Ridge(alpha=result.l2_reg[k][0]).fit(train_x[picked],
                                               2.0 * np.eye(6)[train_y[picked]] - 1)
    assert np.mean(ref.predict(test_x).argmax(-1) == test_y) == pytest.approx(result.accuracy[k])


def _ridge_closed_form(x, y, classes, l2):
  """Ridge with an unpenalised bias by the normal equations of [x, 1] (no centring): an
  independent formulation of fewshot.fit_ridge."""
  xa = np.concatenate([x, np.ones((len(x), 1))], axis=1)
  penalty = l2 * np.eye(xa.shape[1])
  penalty[-1, -1] = 0.0
  wa = np.linalg.solve(xa.T @ xa + penalty, xa.T @ (2.0 * np.eye(classes)[y] - 1.0))
  return wa[:-1], wa[-1]


def test_fewshot_fixed_l2_reg_is_the_closed_form_ridge_and_seeds_average_as_numpy():
  rng = np.random.default_rng(4)
  train_x, train_y = _clusters(rng, 30, noise=3.0)
  test_x, test_y = _clusters(np.random.default_rng(4), 15, noise=3.0)
  result = fewshot.evaluate(train_x, train_y, test_x, test_y, shots=(2, 5), l2_reg=8.0, seed=7,
                            num_seeds=4)
  for k in (2, 5):
    assert result.l2_reg[k] == [8.0] * 4 and result.validation_accuracy[k] == [None] * 4
    per_seed, picks = [], []
    for seed in range(7, 11):  # seed ... seed + num_seeds - 1, each its own shots
      picked, held_out = fewshot.pick_shots(train_y, k, seed, 5, held_out=False)
      assert len(held_out) == 0 and len(picked) == 6 * k
      w, b = _ridge_closed_form(train_x[picked], train_y[picked], 6, 8.0)
      per_seed.append(np.mean((test_x @ w + b).argmax(-1) == test_y))
      picks.append(tuple(picked))
    assert len(set(picks)) == 4  # the seeds chose different shots
    np.testing.assert_allclose(result.seed_accuracy[k], per_seed, atol=1e-12)
    assert result.accuracy[k] == pytest.approx(np.mean(per_seed), abs=1e-12)
    assert result.accuracy_std[k] == pytest.approx(np.std(per_seed), abs=1e-12)
  # The held-out choice over seeds: each seed's figure is that seed alone, averaged by NumPy.
  chosen = fewshot.evaluate(train_x, train_y, test_x, test_y, shots=(3,), seed=1, num_seeds=3)
  alone = [fewshot.evaluate(train_x, train_y, test_x, test_y, shots=(3,), seed=s).accuracy[3]
           for s in (1, 2, 3)]
  assert chosen.seed_accuracy[3] == alone
  assert chosen.accuracy[3] == pytest.approx(np.mean(alone))
  assert chosen.accuracy_std[3] == pytest.approx(np.std(alone))
  with pytest.raises(ValueError, match="num_seeds=0"):
    fewshot.evaluate(train_x, train_y, test_x, test_y, num_seeds=0)
  with pytest.raises(ValueError, match="l2_reg=-1"):
    fewshot.evaluate(train_x, train_y, test_x, test_y, l2_reg=-1.0)


def test_fewshot_bad_input_is_one_clear_error():
  x, y = np.zeros((10, 4)), np.zeros(10, int)
  with pytest.raises(ValueError, match="differ in length"):
    fewshot.evaluate(x, y[:9], x, y)
  with pytest.raises(ValueError, match="differ in width"):
    fewshot.evaluate(x, y, np.zeros((10, 5)), y)


# --- config.evals in a run -------------------------------------------------------------------

def _run_with_evals(tmp_path, evals, **overrides):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top

  from vit_jax.run import loop  # pylint: disable=g-import-not-at-top
  overrides = {"total_steps": 4, "checkpoint_every": 4, **overrides}
  config = tiny_config(tmp_path.parent / "tfds_shared", **overrides)
  with config.unlocked():
    config.evals = ml_collections.ConfigDict(evals)
  return config, loop.train_and_evaluate(config, str(tmp_path / "run"))


def test_named_evaluators_run_log_and_record(tmp_path):
  from vit_jax.run import run_state  # pylint: disable=g-import-not-at-top
  evals = {"val": dict(type="classification", split="test", every=2, per_class=True, topk=3),
           "half": dict(type="classification", split="test[:50%]", every=0,
                        pp=dict(eval="resize_crop", resize=10)),
           "fs": dict(type="fewshot", every=0, shots=(1, 3),
                      datasets={"digits": ("digits", "train", "test")})}
  config, result = _run_with_evals(tmp_path, evals)
  ev = result["eval"]
  assert {"val/top1", "val/top3", "val/loss", "val/examples", "half/top1", "fs/digits_1shot",
          "fs/digits_3shot"} <= set(ev)
  assert ev["val/examples"] == 297 and ev["half/examples"] == 148  # TFDS rounds 50% down
  assert ev["val/top1"] <= ev["val/top3"] <= 1.0
  per_class = [ev[f"val/class_{i}"] for i in range(10) if f"val/class_{i}" in ev]
  assert len(per_class) == 10 and all(0.0 <= a <= 1.0 for a in per_class)
  assert 0.0 <= ev["fs/digits_3shot"] <= 1.0
  # val ran at step 2 and 4; half and fs only at the end; all recorded in results.json.
  steps = {e["step"]: e for e in json.loads(
      (tmp_path / "run" / run_state.RESULTS_FILE).read_text())["evals"]}
  assert set(steps) == {2, 4} and "half/top1" not in steps[2] and "val/top1" in steps[2]
  # The named 'val' over the whole test split is the default evaluator's figure.
  from vit_jax.run import loop  # pylint: disable=g-import-not-at-top  (imports jax: libtpu)
  default = loop.evaluate(classification_evaluator.make_eval_step(_setup(config)),
                          result["state"].params, config)
  assert default["accuracy"] == pytest.approx(ev["val/top1"])


def _setup(config, num_classes=10):
  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train_state
  mesh = sharding.make_mesh(config.mesh)
  return train_state.setup_from_config(config, mesh, num_classes, 4)


def test_fewshot_features_are_the_headless_forward(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top

  from vit_jax.training import train_state, train_step
  config = tiny_config(tmp_path.parent / "tfds_shared")
  with config.unlocked():
    config.eval_split = "test[:40]"
  setup = _setup(config)
  params = train_state.create_train_state(setup, 0).params
  feats, labels = runner.extract_features(train_step.make_feature_step(setup), params, config)
  assert feats.shape == (40, 16) and labels.shape == (40,)
  images, want_labels = [], []
  for batch in pipeline.create_eval_iterator(config):
    keep = batch["mask"] > 0
    images.append(batch["image"][keep])
    want_labels.append(batch["label"][keep].argmax(-1))
  headless = setup.model.clone(num_classes=None)
  host = jax.device_get(params)
  want = jax.jit(lambda p, x: headless.apply({"params": p}, x, train=False))(  # one compile
      {k: v for k, v in host.items() if k != "head"}, np.concatenate(images))
  np.testing.assert_allclose(feats, np.asarray(want), atol=1e-5)
  np.testing.assert_array_equal(labels, np.concatenate(want_labels))


def test_evaluator_config_errors(tmp_path):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top

  config = tiny_config(tmp_path)
  for entry, message in ((dict(type="fewshots"), "type='fewshots' is unknown"),
                         (dict(type="classification", spilt="test"), "unknown keys \\['spilt'\\]"),
                         (dict(type="classification", pp=dict(crop=8)), "may change only")):
    with config.unlocked():
      config.evals = ml_collections.ConfigDict({"x": entry})
    with pytest.raises(ValueError, match=message):
      runner.specs(config)


def test_real_labels_from_tfds_through_the_eval_step(tmp_path):
  """imagenet2012_real (mock data): label sets become a multi-hot 'real', and the step's ReaL
  count equals a loop over the label sets on the same logits."""
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top

  from vit_jax.training import train_state  # pylint: disable=g-import-not-at-top  (jax: libtpu)
  config = tiny_config(tmp_path)
  with config.unlocked():
    config.dataset, config.eval_split, config.num_classes = "imagenet2012_real", "validation", 1000
    config.batch_eval = 8
  sources.clear_cache()
  try:
    with tfds.testing.mock_data(num_examples=11, policy=tfds.testing.MockPolicy.USE_CODE):
      info = sources.open_source(config, "validation")[1]
      assert info.keys == ("image", "original_label") and info.multilabel_key == "real_label"
      source = sources.open_source(config, "validation")[0]
      sets = [list(source[i]["real_label"]) for i in range(11)]
      setup = _setup(config, 1000)
      # Off the init by NumPy noise, placed on the param shardings (jax.random per leaf would
      # compile a sampler per shape).
      rng = np.random.default_rng(0)
      params = train_state.put_params(jax.tree.map(
          lambda p: p + np.float32(0.05) * rng.normal(size=p.shape).astype(np.float32),
          jax.device_get(train_state.init_params(setup, 0))), setup)
      totals = runner.classification_pass(classification_evaluator.make_eval_step(setup), params,
                                          config, 1000)
      batches = list(pipeline.create_eval_iterator(config))
  finally:
    sources.clear_cache()
  real = np.concatenate([b["real"] for b in batches])[:11]
  for row, labels in zip(real, sets):
    np.testing.assert_array_equal(np.flatnonzero(row), sorted(set(int(x) for x in labels)))
  images = np.concatenate([b["image"] for b in batches])[:11]
  logits = np.asarray(jax.jit(lambda p, x: setup.model.apply({"params": p}, x, train=False))(
      jax.device_get(params), images))
  counted = [len(labels) > 0 for labels in sets]  # empty sets are left out (ReaL paper)
  hits = [len(labels) > 0 and int(row.argmax()) in set(int(x) for x in labels)
          for row, labels in zip(logits, sets)]
  assert totals["real_count"] == sum(counted) and totals["real_correct"] == sum(hits)
  assert totals["count"] == 11


# --- python -m vit_jax.evaluate --------------------------------------------------------------

def test_evaluate_cli_on_a_workdir_matches_the_run(tmp_path, capsys):
  from vit_jax import evaluate  # pylint: disable=g-import-not-at-top
  config, result = _run_with_evals(tmp_path, {})
  out = tmp_path / "eval.json"
  assert evaluate.main(["--workdir", str(tmp_path / "run"), "--json", str(out), "--per_class",
                        "--fewshot", "d=digits:train[:600]:test", "--shots", "1,2",
                        "--fewshot_seeds", "3", "--fewshot_l2_reg", "1024"]) == 0
  printed = capsys.readouterr().out
  assert "classification/top1" in printed and "fewshot/d_2shot" in printed
  row = next(line for line in printed.splitlines() if line.startswith("fewshot/d_2shot"))
  assert " ± " in row and "fewshot/d_2shot_std" not in printed  # mean ± std on one line
  got = json.loads(out.read_text())
  assert got["dataset"] == "digits" and got["split"] == "test" and got["resolution"] == 8
  res = got["results"]
  assert res["classification/top1"] == pytest.approx(result["eval"]["accuracy"])
  assert res["classification/examples"] == 297 and "classification/class_3" in res
  assert 0.0 <= res["fewshot/d_1shot"] <= 1.0 and 0.0 <= res["fewshot/d_1shot_std"] <= 0.5
  assert got["evaluators"]["fewshot"]["num_seeds"] == 3
  assert got["evaluators"]["fewshot"]["l2_reg"] == 1024.0


def test_evaluate_cli_compares_an_augreg_file_with_its_published_figure(tmp_path, capsys):
  import jax  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from flax.linen import meta  # pylint: disable=g-import-not-at-top

  from vit_jax import checkpoint, evaluate  # pylint: disable=g-import-not-at-top
  from vit_jax.models import registry
  name = ("Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0--cifar100-steps_10k-"
          "lr_0.003-res_224")
  model = registry.create_model("ViT-Ti_16", 100)
  params = meta.unbox(jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((1, 224, 224, 3)), train=False))["params"])
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.normal(0, 0.02, s.shape).astype(np.float32), params)
  path = tmp_path / f"{name}.npz"
  checkpoint.save(params, str(path))
  index = tmp_path / "index.csv"
  header = ("name,ds,lr,aug,wd,do,sd,best_val,final_val,final_test,adapt_ds,adapt_lr,adapt_steps,"
            "adapt_resolution,adapt_final_val,adapt_final_test,params,infer_samples_per_sec,"
            "filename,adapt_filename")
  pretrain = name.split("--")[0]
  index.write_text(f"{header}\nTi/16,i21k,0.001,none,0.03,0.0,0.0,0.3,0.3,0.3,cifar100,0.003,"
                   f"10000,224,0.885,0.8832,5717416,3000,{pretrain},{name}\n")
  sources.clear_cache()
  try:
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
      status = evaluate.main(["--checkpoint", str(path), "--augreg_index", str(index),
                              "--batch_size", "8", "--eval_pp", "resize_small"])
  finally:
    sources.clear_cache()
  printed = capsys.readouterr().out
  assert status == 0, printed
  # dataset, split and resolution come from the file name; the published figure is quoted.
  assert "published adapt_final_test 88.32%" in printed
  top1 = float(printed.split("classification/top1")[1].split("%")[0]) / 100
  assert f"difference {100 * (top1 - 0.8832):+.2f} points" in printed
  assert "likely causes: preprocessing" in printed and "--eval_pp resize" in printed


def test_evaluate_cli_bad_input_is_one_line(tmp_path, capsys):
  from vit_jax import evaluate, exits  # pylint: disable=g-import-not-at-top
  assert evaluate.main(["--workdir", str(tmp_path / "none")]) == exits.BAD_INPUT
  assert len(capsys.readouterr().err.strip().splitlines()) == 1
  with pytest.raises(SystemExit):
    evaluate.main(["--workdir", str(tmp_path), "--eval_pp", "nope"])
  from vit_jax.evaluators import offline  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="not a known short name"):
    offline.fewshot_datasets(["cifar1000"])


def test_evaluators_leave_training_bit_identical(tmp_path):
  """Evaluating every 2 steps (classification and few-shot) draws no random numbers and
  touches no state: the trained params equal those of a run with no evaluation until the end."""
  import jax  # pylint: disable=g-import-not-at-top
  evals = {"val": dict(type="classification", split="test[:64]", every=2),
           "fs": dict(type="fewshot", every=2, shots=(1,),
                      datasets={"d": ("digits", "train[:200]", "test[:50]")})}
  _, with_evals = _run_with_evals(tmp_path / "a", evals, total_steps=6)
  _, without = _run_with_evals(tmp_path / "b", {}, total_steps=6, eval_every=0)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(with_evals["state"].params),
               jax.device_get(without["state"].params))


def test_evaluate_cli_takes_evaluators_from_a_config_file_and_names_a_missing_split(
    tmp_path, capsys):
  from vit_jax import evaluate, exits  # pylint: disable=g-import-not-at-top
  _run_with_evals(tmp_path, {})
  cfg = tmp_path / "evals.py"
  cfg.write_text("import ml_collections\nfrom vit_jax.configs import base\n\n"
                 "def get_config(arg=None):\n  c = base.defaults()\n"
                 "  c.evals = ml_collections.ConfigDict({'first': dict(type='classification', "
                 "split='test[:40]', topk=2)})\n  return c\n")
  assert evaluate.main(["--workdir", str(tmp_path / "run"), "--evals_config", str(cfg)]) == 0
  printed = capsys.readouterr().out
  assert "first/top1" in printed and "first/top2" in printed and "first/examples" in printed
  assert "classification/" not in printed
  assert evaluate.main(["--workdir", str(tmp_path / "run"), "--split", "validation"]) == \
      exits.BAD_INPUT
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "validation" in err[0], err


def test_default_fewshot_datasets_are_big_visions():
  got = runner.default_fewshot_datasets("/nonexistent")
  assert set(got) == {"caltech", "cars", "cifar100", "dtd", "pets", "uc_merced"}
  assert got["uc_merced"] == ("uc_merced", "train[:1000]", "train[1000:]")
