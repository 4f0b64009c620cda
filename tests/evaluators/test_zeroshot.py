"""Zero-shot maths (evaluators/zeroshot.py) against hand-computed cases."""
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.evaluators import zeroshot


def test_prompts_are_class_major_and_bad_templates_are_refused():
  assert zeroshot.prompts(["cat", "dog"], ["a {}", "the {}!"]) == [
      "a cat", "the cat!", "a dog", "the dog!"]
  with pytest.raises(ValueError, match="no '{}'"):
    zeroshot.prompts(["cat"], ["a photo"])
  with pytest.raises(ValueError, match="class names"):
    zeroshot.prompts([], ["a {}"])


def test_class_embedding_is_the_renormalised_mean_of_unit_prompt_embeddings():
  table = {"a cat": [3.0, 4.0, 0.0], "the cat": [0.0, 0.0, 2.0],
           "a dog": [1.0, 0.0, 0.0], "the dog": [0.0, 5.0, 0.0]}
  seen = []

  def embed(texts):
    seen.append(list(texts))
    return np.array([table[t] for t in texts])
  z = zeroshot.class_embeddings(embed, ["cat", "dog"], ["a {}", "the {}"])
  assert seen == [["a cat", "the cat", "a dog", "the dog"]]  # One call for every prompt.
  # cat: mean of (0.6, 0.8, 0) and (0, 0, 1) = (0.3, 0.4, 0.5), norm sqrt(0.5).
  np.testing.assert_allclose(z[0], np.array([0.3, 0.4, 0.5]) / np.sqrt(0.5), rtol=1e-6)
  np.testing.assert_allclose(z[1], np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0), rtol=1e-6)
  assert z.dtype == np.float32


def test_logits_are_temperature_times_cosine_in_numpy_and_jax():
  zimg = np.array([[2.0, 0.0], [1.0, 1.0]])
  zcls = np.array([[1.0, 0.0], [0.0, 1.0]])
  expected = 10.0 * np.array([[1.0, 0.0], [np.sqrt(0.5), np.sqrt(0.5)]])
  np.testing.assert_allclose(zeroshot.logits(zimg, zcls, 10.0), expected, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(zeroshot.logits(jnp.asarray(zimg), zcls,
                                                        jnp.array([10.0]), xp=jnp)),
                             expected, rtol=1e-5)


def test_a_synthetic_two_class_problem_is_solved():
  """Images near one of two text directions are classified as that class, every time."""
  rng = np.random.default_rng(0)
  directions = {"zebra": rng.normal(size=16), "teapot": rng.normal(size=16)}
  labels = rng.integers(0, 2, size=200)
  names = ["zebra", "teapot"]
  zimg = np.stack([directions[names[y]] for y in labels]) + 0.3 * rng.normal(size=(200, 16))
  zcls = zeroshot.class_embeddings(
      lambda texts: np.stack([directions[t.split()[-1].rstrip(".")] for t in texts]), names,
      ["a photo of a {}.", "a {}"])
  idx, probs = zeroshot.top_k(zeroshot.logits(zimg, zcls, 100.0), 2)
  assert (idx[:, 0] == labels).all()
  assert idx.shape == (200, 2) and (probs[:, 0] >= probs[:, 1]).all()
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-9)  # k = C: all the mass.


def test_top_k_matches_a_sort_and_softmax():
  scores = np.array([[0.1, 2.0, -1.0, 2.0]])
  idx, probs = zeroshot.top_k(scores, 3)
  assert idx.tolist() == [[1, 3, 0]]  # Ties keep the lower index first.
  e = np.exp(scores[0] - 2.0)
  np.testing.assert_allclose(probs[0], e[[1, 3, 0]] / e.sum())


def test_shipped_prompt_sets_and_wordnet_class_names():
  from vit_jax.evaluators import zeroshot, zeroshot_evaluator  # pylint: disable=g-import-not-at-top
  clip = zeroshot.templates("clip_paper")
  assert len(clip) == 81 and clip[-1] == "{}" and all("{}" in t for t in clip)
  assert "itap of a {}." in zeroshot.templates("clip_best")
  assert zeroshot.templates(None) == zeroshot.DEFAULT_TEMPLATES
  assert zeroshot.templates(["x {}"]) == ("x {}",)
  with pytest.raises(ValueError, match="clip_paper"):
    zeroshot.templates("clip")
  assert zeroshot_evaluator.wordnet_names(["n01440764", "n02119789", "n99999999"]) == [
      "tench", "kit fox", "n99999999"]
