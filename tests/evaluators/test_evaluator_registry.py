"""Evaluator types by name (vit_jax/evaluators/registry.py): the built-ins through the registry,
a type registered by this test module and one named by its module's dotted path, the errors;
and the one implementation of the classification sums (NumPy and the compiled step) against
independent computations."""
import sys
import textwrap

import ml_collections
import numpy as np
import pytest

from vit_jax.datasets import pipeline
from vit_jax.evaluators import classification, classification_evaluator, common, registry, runner


# A type of the user's own, registered by this module (nothing of ours is edited).
@registry.register("test_mean_confidence", keys=("temperature",))
def mean_confidence(ctx, spec, params):
  """Mean over the eval split of the top softmax probability at a temperature."""
  import jax  # pylint: disable=g-import-not-at-top  (imports libtpu)
  temperature = float(spec.settings.get("temperature") or 1.0)
  step = ctx.logits_step()
  total, count = 0.0, 0.0
  for batch in common.batches(params, ctx.data_config(spec)):
    logits = np.asarray(jax.device_get(step(params, batch["image"])), np.float64) / temperature
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    mask = np.asarray(jax.device_get(batch["mask"]))
    total += float(np.sum(probs.max(-1) * mask))
    count += float(mask.sum())
  return {"confidence": total / count, "examples": count}


def _config(tmp_path, evals=None, **overrides):
  from helpers import tiny_config  # pylint: disable=g-import-not-at-top  (imports jax: libtpu)
  config = tiny_config(tmp_path.parent / "tfds_shared", **overrides)
  with config.unlocked():
    config.evals = ml_collections.ConfigDict(evals or {})
  return config


def _params(config, num_classes=10, noise=0.3):
  """A StateSetup and params moved off their init (so predictions differ between classes)."""
  import jax  # pylint: disable=g-import-not-at-top  (imports libtpu)
  from helpers import setup_for  # pylint: disable=g-import-not-at-top  (imports jax: libtpu)

  from vit_jax import sharding  # pylint: disable=g-import-not-at-top  (imports jax: libtpu)
  from vit_jax.training import train_state  # pylint: disable=g-import-not-at-top  (jax)
  setup = setup_for(config, sharding.make_mesh(config.mesh), num_classes)
  params = jax.device_get(train_state.init_params(setup, 0))  # create_train_state's params
  # NumPy noise on the host, then placed on the param shardings: jax.random per leaf would
  # compile a sampler per shape (or one slow-to-compile program for the whole tree).
  rng = np.random.default_rng(1)
  params = jax.tree.map(
      lambda p: p + np.float32(noise) * rng.normal(size=p.shape).astype(np.float32), params)
  return setup, train_state.put_params(params, setup)


def _logits(setup, params, images):
  """The model's float64 logits, model.apply compiled once (not op by op)."""
  import jax  # pylint: disable=g-import-not-at-top  (imports libtpu)
  apply = jax.jit(lambda p, x: setup.model.apply({"params": p}, x, train=False))
  return np.asarray(apply(jax.device_get(params), images), np.float64)


# --- the maths: one implementation, NumPy and jax.numpy --------------------------------------

def _topk_by_sorting(logits, labels, k):
  """Independent top-k: each row's classes sorted by (-logit, index), label in the first k."""
  return np.array([label in sorted(range(len(row)), key=lambda j: (-row[j], j))[:k]
                   for row, label in zip(logits.tolist(), labels.tolist())])


def test_topk_hits_numpy_and_jax_equal_sorting_with_ties():
  import jax  # pylint: disable=g-import-not-at-top  (imports libtpu)
  rng = np.random.default_rng(0)
  logits = rng.integers(0, 4, (300, 7)).astype(np.float32)  # many ties
  labels = rng.integers(0, 7, 300)
  for k in (1, 2, 3, 7, 10):
    want = _topk_by_sorting(logits, labels, k)
    np.testing.assert_array_equal(classification.topk_hits(logits, labels, k), want)
    np.testing.assert_array_equal(
        np.asarray(classification.topk_hits(jax.numpy.asarray(logits), labels, k, jax.numpy)),
        want)
    top = np.asarray(jax.lax.top_k(logits, min(k, 7))[1])  # The old step's definition.
    np.testing.assert_array_equal(np.any(top == labels[:, None], -1), want)


def test_batch_sums_against_loops():
  import jax  # pylint: disable=g-import-not-at-top  (imports libtpu)
  rng = np.random.default_rng(1)
  n, c = 50, 6
  logits, labels = rng.normal(size=(n, c)), rng.integers(0, c, n)
  mask = (rng.random(n) < 0.8).astype(np.float32)
  real = (rng.random((n, c)) < 0.3).astype(np.float32)
  got = classification.batch_sums(logits, labels, mask, topk=3, per_class=True, real=real)
  pred = logits.argmax(-1)
  keep = mask > 0
  assert got["count"] == keep.sum() and got["correct"] == np.sum((pred == labels) & keep)
  assert got["correct_topk"] == sum(_topk_by_sorting(logits, labels, 3) & keep)
  counted = [bool(row.any()) for row in real]
  assert got["real_count"] == sum(k and ct for k, ct in zip(keep, counted))
  assert got["real_correct"] == sum(k and real[i, pred[i]] > 0 for i, k in enumerate(keep))
  for cls in range(c):
    rows = [i for i in range(n) if keep[i] and labels[i] == cls]
    assert got["class_count"][cls] == len(rows)
    assert got["class_correct"][cls] == sum(pred[i] == cls for i in rows)
  jgot = classification.batch_sums(*map(jax.numpy.asarray, (logits, labels, mask)), topk=3,
                                   per_class=True, real=jax.numpy.asarray(real), xp=jax.numpy)
  for key, value in got.items():
    np.testing.assert_allclose(np.asarray(jgot[key]), value, rtol=1e-6, err_msg=key)


def test_the_compiled_eval_step_equals_numpy_on_the_model_logits(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  config = _config(tmp_path)
  setup, params = _params(config)
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 10, 64)
  batch = {"image": rng.uniform(-1, 1, (64, 8, 8, 3)).astype(np.float32),
           "label": np.eye(10, dtype=np.float32)[labels],
           "mask": (rng.random(64) < 0.9).astype(np.float32),
           "real": (rng.random((64, 10)) < 0.2).astype(np.float32)}
  ours = jax.device_get(classification_evaluator.make_eval_step(setup, 3, True)(params, batch))
  logits = _logits(setup, params, batch["image"])
  want = classification.batch_sums(logits, labels, batch["mask"], topk=3, per_class=True,
                                   real=batch["real"])
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want["loss_sum"] = -np.sum(log_probs[np.arange(64), labels] * batch["mask"])
  # An independent formulation of the counts: NumPy loops over the examples.
  order = np.argsort(-logits, axis=-1)
  keep = batch["mask"] > 0
  assert ours["count"] == keep.sum()
  assert ours["correct"] == sum(order[i, 0] == labels[i] for i in np.flatnonzero(keep))
  assert ours["correct_topk"] == sum(labels[i] in order[i, :3] for i in np.flatnonzero(keep))
  assert set(ours) == set(want)
  for key in want:
    np.testing.assert_allclose(ours[key], want[key], rtol=1e-5, err_msg=key)


# --- the registry ----------------------------------------------------------------------------

def test_builtin_types_are_registered_with_their_keys():
  assert {"classification", "fewshot"} <= set(registry.names())
  assert registry.get("classification").run is classification_evaluator.run
  assert registry.get("classification").keys == {"topk", "per_class"}
  assert "shots" in registry.get("fewshot").keys
  assert runner.FEWSHOT_DATASETS["pets"] == ("oxford_iiit_pet", "train", "test")


def test_unknown_types_and_keys_are_one_clear_error(tmp_path):
  config = _config(tmp_path, {"x": dict(type="fewshots")})
  with pytest.raises(ValueError) as err:
    runner.specs(config)
  message = str(err.value)
  assert message.startswith("config.evals.x.type='fewshots' is unknown; use one of [")
  assert "'classification'" in message and "'fewshot'" in message
  assert "@vit_jax.evaluators.registry.register('NAME'" in message and "dotted path" in message
  for entry, match in (
      (dict(type="classification", shots=(1,)), r"unknown keys \['shots'\]; valid: \[.*'topk'"),
      (dict(type="test_mean_confidence", topk=3), r"unknown keys \['topk'\].*'temperature'"),
      (dict(type="no_such_pkg_xyz.evals"), "not an importable module"),
      (dict(type=None), "type=None is unknown")):
    with pytest.raises(ValueError, match=match):
      runner.specs(_config(tmp_path, {"x": entry}))
  with pytest.raises(ValueError, match="already registered by"):
    registry.register("classification")(lambda ctx, spec, params: {})


def test_a_user_type_runs_beside_the_builtins_and_matches_numpy(tmp_path):
  evals = {"conf": dict(type="test_mean_confidence", split="test[:40]", temperature=2.0),
           "val": dict(type="classification", split="test[:40]", topk=2)}
  config = _config(tmp_path, evals)
  setup, params = _params(config)
  out = runner.Runner(setup, config).run(params, step=12, total=12)
  assert {"conf/confidence", "conf/examples", "val/top1", "val/top2"} <= set(out)
  assert out["conf/examples"] == 40
  # Independently: the model on the eval images, softmax at T = 2, mean of the maxima.
  images = np.concatenate([b["image"][b["mask"] > 0]
                           for b in pipeline.create_eval_iterator(common.data_config(
                               config, runner.specs(config)[0]))])
  logits = _logits(setup, params, images) / 2.0
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  assert out["conf/confidence"] == pytest.approx(probs.max(-1).mean(), rel=1e-5)


_MODULE = '''
import numpy as np
from vit_jax.evaluators import registry


@registry.register("user_evals_for_test.head_norm", keys=("ord",))
def head_norm(ctx, spec, params):
  """Norm of the head kernel (no data)."""
  kernel = np.asarray(params["head"]["kernel"])
  return {"norm": float(np.linalg.norm(kernel.ravel(), ord=spec.settings.get("ord") or 2))}
'''

_TWO_TYPES = '''
from vit_jax.evaluators import registry
registry.register("two_a")(lambda ctx, spec, params: {})
registry.register("two_b")(lambda ctx, spec, params: {})
'''


def test_a_type_named_by_its_modules_dotted_path_is_imported(tmp_path, monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top  (imports libtpu)
  package = tmp_path / "pkgs" / "user_evals_for_test"
  package.mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "head_norm.py").write_text(textwrap.dedent(_MODULE))
  (package / "two.py").write_text(_TWO_TYPES)
  monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
  config = _config(tmp_path, {"h": dict(type="user_evals_for_test.head_norm", ord=1, every=0)})
  specs = runner.specs(config)
  assert "user_evals_for_test.head_norm" in sys.modules and specs[0].every == 0
  setup, params = _params(config)
  out = runner.Runner(setup, config).run(params, step=12, total=12)
  kernel = np.asarray(jax.device_get(params["head"]["kernel"]))
  assert out == {"h/norm": pytest.approx(np.abs(kernel).sum(), rel=1e-5)}
  with pytest.raises(ValueError, match="registers 2 evaluator types"):
    runner.specs(_config(tmp_path, {"t": dict(type="user_evals_for_test.two")}))


def test_a_user_type_in_a_training_run_is_logged_and_kept_for_ema(tmp_path):
  from vit_jax.run import loop  # pylint: disable=g-import-not-at-top  (imports jax: libtpu)
  config = _config(tmp_path, {"conf": dict(type="test_mean_confidence", split="test[:32]")},
                   **{"total_steps": 4, "checkpoint_every": 4, "ema.decay": 0.5})
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  ev = result["eval"]
  assert 0.1 <= ev["conf/confidence"] <= 1.0 and ev["conf/examples"] == 32
  assert 0.1 <= ev["conf/ema/confidence"] <= 1.0
