"""Evaluator maths against independent computations: top-k and ReaL by hand, per-class accuracy
by scikit-learn's confusion matrix, the few-shot ridge probe by scikit-learn's Ridge."""
import json

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import confusion_matrix

from vit_jax.datasets import pipeline, sources
from vit_jax.evaluators import classification, classification_evaluator, fewshot, runner


def test_topk_hits_by_hand():
  logits = np.array([[0.1, 0.5, 0.4, 0.0], [3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
  labels = np.array([2, 1, 0])
  np.testing.assert_array_equal(classification.topk_hits(logits, labels, 1), [False, False, False])
  np.testing.assert_array_equal(classification.topk_hits(logits, labels, 2), [True, False, True])
  np.testing.assert_array_equal(classification.topk_hits(logits, labels, 3), [True, True, True])
  assert classification.topk_hits(logits, labels, 10).all()  # k beyond the class count


def test_real_hits_skip_empty_sets():
  logits = np.eye(4)[[0, 1, 2, 3]] * 5
  sets = [[0, 3], [2], [], [3]]
  hits, counted = classification.real_hits(logits, sets)
  np.testing.assert_array_equal(counted, [True, True, False, True])
  np.testing.assert_array_equal(hits, [True, False, False, True])
  assert hits.sum() / counted.sum() == pytest.approx(2 / 3)


def test_per_class_accuracy_against_the_confusion_matrix():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 5, 200)
  logits = rng.normal(size=(200, 6))
  got = classification.per_class_accuracy(logits, labels, 6)
  cm = confusion_matrix(labels, logits.argmax(-1), labels=range(6))
  with np.errstate(invalid="ignore"):
    np.testing.assert_allclose(got, cm.diagonal() / cm.sum(axis=1))
  assert np.isnan(got[5])  # no example of class 5


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
  assert all(l2 in fewshot.DEFAULT_L2_REGS for l2 in result.l2_reg.values())
  again = fewshot.evaluate(train_x, train_y, test_x, test_y, shots=(1, 5, 10), seed=3)
  assert again.accuracy == result.accuracy and again.l2_reg == result.l2_reg
  # The same picks and strength through scikit-learn give the same test accuracy.
  validation = fewshot.sample_per_class(train_y, 5, np.random.default_rng(3))
  for k in (1, 5, 10):
    picked = fewshot.sample_per_class(train_y, k, np.random.default_rng([3, k]),
                                      exclude=validation)
    assert len(picked) == 6 * k and not set(picked) & set(validation)
    ref = Ridge(alpha=result.l2_reg[k]).fit(train_x[picked], 2.0 * np.eye(6)[train_y[picked]] - 1)
    assert np.mean(ref.predict(test_x).argmax(-1) == test_y) == pytest.approx(result.accuracy[k])


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
  count equals classification.real_hits on the same logits."""
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
  hits, counted = classification.real_hits(logits, sets)
  assert totals["real_count"] == counted.sum() and totals["real_correct"] == hits.sum()
  assert totals["count"] == 11


# --- python -m vit_jax.evaluate --------------------------------------------------------------

def test_evaluate_cli_on_a_workdir_matches_the_run(tmp_path, capsys):
  from vit_jax import evaluate  # pylint: disable=g-import-not-at-top
  config, result = _run_with_evals(tmp_path, {})
  out = tmp_path / "eval.json"
  assert evaluate.main(["--workdir", str(tmp_path / "run"), "--json", str(out), "--per_class",
                        "--fewshot", "d=digits:train[:600]:test", "--shots", "1,2"]) == 0
  printed = capsys.readouterr().out
  assert "classification/top1" in printed and "fewshot/d_2shot" in printed
  got = json.loads(out.read_text())
  assert got["dataset"] == "digits" and got["split"] == "test" and got["resolution"] == 8
  res = got["results"]
  assert res["classification/top1"] == pytest.approx(result["eval"]["accuracy"])
  assert res["classification/examples"] == 297 and "classification/class_3" in res
  assert 0.0 <= res["fewshot/d_1shot"] <= 1.0


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
    evaluate.main(["--workdir", str(tmp_path), "--no_classification"])
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
