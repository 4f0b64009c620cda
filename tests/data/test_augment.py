"""Tests of the timm / DeiT / big_vision recipe pieces: CutMix, the mixup/CutMix switch, random
erasing, repeated augmentation (vit_jax.datasets.mixing, vit_jax.datasets.pipeline) and the
losses (vit_jax.training.losses, train_step's loss selection), against numpy references.

Process-count independence and resume with all of them on are in test_input_pipeline.py.
"""
import dataclasses

import numpy as np
import pytest
from helpers import id_image_folder

from vit_jax.configs import base
from vit_jax.datasets import mixing, pipeline, preprocess
from vit_jax.training import losses


def _opts(**kw) -> preprocess.PreprocessOptions:
  return dataclasses.replace(preprocess.PreprocessOptions(crop=16, resize=16), **kw)


class _Fixed:
  """A stand-in Generator returning given draws (beta, then integers in order)."""

  def __init__(self, beta, ints):
    self._beta, self._ints = beta, list(ints)

  def beta(self, *_):
    return self._beta

  def integers(self, *_):
    return self._ints.pop(0)


def _distinct_rows(n, h, w, c=3):
  """Row r is the constant r + 1, so a pixel's source row is read back from its value."""
  return np.broadcast_to(np.arange(1, n + 1, dtype=np.float32)[:, None, None, None],
                         (n, h, w, c)).copy()


# --- CutMix ----------------------------------------------------------------------------------

def test_cutmix_box_area_matches_lambda_and_stays_inside():
  rng = np.random.default_rng(0)
  clipped = 0
  for _ in range(3000):
    lam = rng.uniform()
    top, left, h, w = mixing.cutmix_box(48, 64, lam, rng)
    assert 0 <= top and top + h <= 48 and 0 <= left and left + w <= 64
    full_h, full_w = int(48 * np.sqrt(1 - lam)), int(64 * np.sqrt(1 - lam))
    assert h <= full_h and w <= full_w
    if (h, w) == (full_h, full_w):  # Not clipped: area (1-λ)·HW up to the floors.
      assert abs(h * w / (48 * 64) - (1 - lam)) <= (h + w + 1) / (48 * 64)
    else:
      clipped += 1
  assert 0.2 < clipped / 3000 < 0.95  # Centres are uniform, so many boxes cross a border.


def test_cutmix_clipped_box_exact():
  # λ = 0.36 → sides 0.8·10 = 8; centre (0, 0) → rows/cols [-4, 4) clipped to [0, 4).
  assert mixing.cutmix_box(10, 10, 0.36, _Fixed(0.36, [0, 0])) == (0, 0, 4, 4)
  assert mixing.cutmix_box(10, 10, 0.36, _Fixed(0.36, [9, 5])) == (5, 1, 5, 8)
  images = _distinct_rows(2, 10, 10)
  labels = np.eye(2, dtype=np.float32)
  x, y, lam = mixing.cutmix(images, labels, 1.0, _Fixed(0.36, [0, 0]))
  assert lam == 1 - 16 / 100  # The clipped area, not the drawn λ (timm's correct_lam).
  np.testing.assert_array_equal(x[0, :4, :4], 2.0)
  np.testing.assert_array_equal(y, np.float32([[0.84, 0.16], [0.16, 0.84]]))


def test_cutmix_label_weights_are_the_pasted_pixel_fractions():
  rng = np.random.default_rng(1)
  n, h, w, classes = 6, 12, 10, 7
  images = _distinct_rows(n, h, w)
  labels = mixing.one_hot(np.array([0, 3, 5, 5, 6, 1]), classes, 0.1)
  partner = [1, 0, 3, 2, 5, 4]
  for _ in range(300):
    x, y, lam = mixing.cutmix(images, labels, 1.0, rng)
    for r in range(n):
      own = np.mean(x[r] == r + 1)
      assert np.all((x[r] == r + 1) | (x[r] == partner[r] + 1))  # Pixels of the pair only.
      assert abs(own - lam) < 1e-9  # λ' is exactly the kept pixel fraction...
      np.testing.assert_allclose(y[r], own * labels[r] + (1 - own) * labels[partner[r]],
                                 atol=1e-6)  # ...and the label weights follow it.
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="odd batch"):
    mixing.cutmix(images[:3], labels[:3], 1.0, rng)


def _kind(x, y, images, labels):
  """'none' | 'cutmix' | 'mixup': what mix_batch did to a batch (images of random values)."""
  if np.array_equal(x, images) and np.array_equal(y, labels):
    return "none"
  partner = images.reshape((-1, 2) + images.shape[1:])[:, ::-1].reshape(images.shape)
  return "cutmix" if np.all((x == images) | (x == partner)) else "mixup"


def test_switch_and_apply_probabilities_over_many_seeds():
  images = np.random.default_rng(0).normal(size=(4, 16, 16, 3)).astype(np.float32)
  labels = mixing.one_hot(np.arange(4), 4, 0.1)
  opts = _opts(mixup_alpha=0.8, cutmix_alpha=1.0, mixup_prob=0.8, mixup_switch_prob=0.3)
  kinds = [_kind(*mixing.mix_batch(images, labels, opts, np.random.default_rng(s)),
                 images, labels) for s in range(2000)]
  kinds = np.array(kinds)
  # 4 standard deviations of a 2000-draw frequency are <= 0.045.
  assert abs(np.mean(kinds == "none") - 0.2) < 0.04
  mixed = kinds[kinds != "none"]
  assert abs(np.mean(mixed == "cutmix") - 0.3) < 0.045
  only_cutmix = _opts(cutmix_alpha=1.0)
  assert {_kind(*mixing.mix_batch(images, labels, only_cutmix, np.random.default_rng(s)),
                images, labels) for s in range(50)} <= {"cutmix", "none"}  # none: empty box
  assert mixing.mix_batch(images, labels, _opts(mixup_alpha=1.0, mixup_prob=0.0),
                              np.random.default_rng(0))[0] is images


def test_mixup_only_draws_what_it_drew_before():
  """Defaults (mixup_prob 1, CutMix off) keep the old stream: mix_batch == mixup, bit for bit."""
  images = np.random.default_rng(0).normal(size=(8, 4, 4, 3)).astype(np.float32)
  labels = mixing.one_hot(np.arange(8) % 5, 5, 0.1)
  for seed in range(5):
    x, y = mixing.mix_batch(images, labels, _opts(mixup_alpha=0.5),
                                np.random.default_rng(seed))
    x_ref, y_ref, _ = mixing.mixup(images, labels, 0.5, np.random.default_rng(seed))
    np.testing.assert_array_equal(x, x_ref)
    np.testing.assert_array_equal(y, y_ref)


# --- random erasing --------------------------------------------------------------------------

def test_random_erase_box_statistics():
  opts = _opts(random_erase_prob=0.4)  # area (0.02, 1/3), aspect (0.3, 3.3), one box
  rng = np.random.default_rng(0)
  boxes = np.stack([mixing.sample_erase_boxes(224, 224, opts, rng) for _ in range(4000)])
  assert boxes.shape == (4000, 1, 4) and boxes.dtype == np.int32
  top, left, h, w = boxes[:, 0].T
  erased = h > 0
  assert abs(erased.mean() - 0.4) < 0.035  # 4 sd of 4000 draws: 0.031
  top, left, h, w = top[erased], left[erased], h[erased], w[erased]
  assert np.all((top >= 0) & (top + h <= 224) & (left >= 0) & (left + w <= 224))
  area, aspect = h * w / 224**2, h / w
  # Sides >= 17 px, so rounding them moves area and aspect by < 7%.
  assert area.min() >= 0.02 * 0.93 and area.max() <= 1 / 3 * 1.07
  assert aspect.min() >= 0.3 / 1.07 and aspect.max() <= 3.3 * 1.07
  assert area.min() < 0.03 and area.max() > 0.3  # The whole range is used...
  assert aspect.min() < 0.35 and aspect.max() > 2.8  # ...log-uniformly on both sides of 1.
  assert 0.35 < np.mean(aspect > 1) < 0.65
  several = _opts(random_erase_prob=1.0, random_erase_count=3)
  counts = [np.sum(mixing.sample_erase_boxes(64, 64, several, rng)[:, 2] > 0)
            for _ in range(600)]
  assert set(counts) == {1, 2, 3}  # 1..count boxes, uniformly.
  assert abs(np.mean(counts) - 2.0) < 0.15


@pytest.mark.parametrize("mode", mixing.ERASE_MODES)
def test_random_erase_changes_the_box_only(mode):
  rng = np.random.default_rng(3)
  image = rng.uniform(-1, 1, (32, 24, 3)).astype(np.float32)
  boxes = np.array([[4, 2, 10, 6], [20, 10, 5, 12], [0, 0, 0, 0]], np.int32)
  out = mixing.random_erase(image, boxes, 1234, mode)
  inside = np.zeros((32, 24), bool)
  inside[4:14, 2:8] = inside[20:25, 10:22] = True
  np.testing.assert_array_equal(out[~inside], image[~inside])
  filled = out[4:14, 2:8]
  if mode == "const":
    np.testing.assert_array_equal(out[inside], 0.0)
  elif mode == "rand":  # One N(0, 1) value per channel and box.
    assert np.all(filled == filled[:1, :1]) and not np.all(filled == filled[..., :1])
  else:
    assert abs(filled.std() - 1.0) < 0.3 and len(np.unique(filled)) == filled.size
  np.testing.assert_array_equal(out, mixing.random_erase(image, boxes, 1234, mode))
  assert mixing.random_erase(image, np.zeros((1, 4), np.int32), 1, mode) is image


# --- repeated augmentation -------------------------------------------------------------------

@pytest.mark.parametrize("batch,k", [(12, 3), (10, 3), (16, 2), (9, 4), (24, 4)])
def test_repeated_stream_slots_copies_and_pairs(batch, k):
  ra = pipeline.RepeatedStream(list(range(10**4)), batch, k)
  windows = 7
  slots = np.array([ra.slot(t) for t in range(windows * batch)]).reshape(windows, batch)
  for i, window in enumerate(slots):  # Each window is a permutation of its slots.
    assert sorted(window) == list(range(i * batch, (i + 1) * batch))
  images = slots // k
  values, counts = np.unique(images, return_counts=True)
  assert np.all(counts[1:-1] == k)  # Every image k times (the ends may straddle the range).
  for i, window in enumerate(images):
    if batch % k == 0:  # Then each batch holds batch/k images, k copies each, batch/k apart.
      assert np.all(np.unique(window, return_counts=True)[1] == k)
      assert np.all(window.reshape(k, batch // k) == window[:batch // k])
    if batch >= 3 * k and batch % 2 == 0:  # Mixup pairs are never two copies of one image.
      assert np.all(window[0::2] != window[1::2])
  if batch % k == 0:  # P = k processes: each process holds exactly one copy of each image.
    local = images.reshape(windows, k, batch // k)
    assert all(len(set(local[i, p])) == batch // k for i in range(windows) for p in range(k))
  assert ra(5) == ra.slot(5) // k


@pytest.fixture(scope="module")
def id_folder(tmp_path_factory):
  """train: ids 0..29, test: 3 images; 8x8 PNGs of constant grey = id."""
  return id_image_folder(tmp_path_factory.mktemp("aug_ids"), range(30), range(100, 103))


def _config(dataset, **kw):
  c = base.defaults()
  c.update_from_flattened_dict(dict(
      dataset=dataset, batch=12, **{"pp.crop": 8, "pp.resize": 8, "pp.flip": False,
                                    "input.num_workers": 0}))
  c.update_from_flattened_dict(kw)
  return c


def test_repeated_aug_pipeline_copies_are_independently_augmented(id_folder):
  # Erase every image with zeros ('const' = float 0.0, a level no uint8 grey maps to), so a
  # copy's id is read from its unerased pixels and copies differ by their boxes.
  c = _config(id_folder, **{"input.repeated_aug": 3, "pp.random_erase_prob": 1.0,
                            "pp.random_erase_mode": "const"})
  it = pipeline.create_train_iterator(c, process_index=0, process_count=1)
  ids, differ = [], 0
  for _ in range(15):  # 180 stream elements = 2 shuffled passes over 30 images, 3 copies each.
    images = next(it)["image"]
    levels = (images + 1.0) * 127.5
    kept = levels[images != 0.0].reshape(-1)
    assert np.abs(kept - np.round(kept)).max() < 1e-3  # Unerased pixels: the grey level.
    batch_ids = [int(np.round(levels[r][images[r] != 0.0][0])) for r in range(12)]
    assert np.all(np.unique(batch_ids, return_counts=True)[1] == 3)  # 4 images, 3 copies.
    for u in set(batch_ids):
      rows = [images[r] for r in range(12) if batch_ids[r] == u]
      differ += not np.array_equal(rows[0], rows[1])
    ids += batch_ids
  # 180 slots = 2 shuffled passes: every image 3 times in each (copies of a pass's last images
  # may sit in the next batch, so count over both).
  assert np.all(np.unique(ids, return_counts=True)[1] == 6) and len(set(ids)) == 30
  assert differ >= 0.9 * 60
  state = it.get_state()
  assert (state["epoch"], state["position"], state["repeated_aug"]) == (2, 0, 3)


def test_repeated_aug_and_pairing_validation(id_folder):
  for bad in (0, -2):
    with pytest.raises(ValueError, match="repeated_aug=.* must be an integer >= 1"):
      pipeline.create_train_iterator(_config(id_folder, **{"input.repeated_aug": bad}),
                                           process_index=0, process_count=1)
  with pytest.raises(ValueError, match="needs config.batch >= 12"):
    pipeline.create_train_iterator(
        _config(id_folder, batch=8, **{"input.repeated_aug": 4, "pp.cutmix_alpha": 1.0}),
        process_index=0, process_count=1)
  with pytest.raises(ValueError, match="must be even"):
    pipeline.create_train_iterator(_config(id_folder, batch=9, **{"pp.cutmix_alpha": 1.0}),
                                         process_index=0, process_count=3)


@pytest.mark.parametrize("key,value,match", [
    ("cutmix_alpha", -0.1, "cutmix_alpha=-0.1 must be >= 0"),
    ("mixup_prob", 1.5, "mixup_prob=1.5 is a probability"),
    ("mixup_switch_prob", -0.1, "mixup_switch_prob=-0.1 is a probability"),
    ("random_erase_prob", 2.0, "random_erase_prob=2.0 is a probability"),
    ("random_erase_area", (0.5, 0.1), "random_erase_area=.* 0 < min <= max <= 1"),
    ("random_erase_area", (0.0, 0.3), "random_erase_area=.* 0 < min <= max <= 1"),
    ("random_erase_area", (0.1,), "random_erase_area=.* pair of numbers"),
    ("random_erase_aspect", (2.0, 1.0), "random_erase_aspect=.* 0 < min <= max"),
    ("random_erase_mode", "blur", "random_erase_mode='blur' is unknown"),
    ("random_erase_count", 0, "random_erase_count=0 must be an integer >= 1"),
])
def test_options_validation(key, value, match):
  pp = base.defaults().pp
  pp[key] = value
  with pytest.raises(ValueError, match=match):
    preprocess.options_from_config(pp)


def test_defaults_are_off_and_timm_values():
  c = base.defaults()
  opts = preprocess.options_from_config(c.pp)
  assert not opts.pairs_rows and opts.random_erase_prob == 0 and c.input.repeated_aug == 1
  assert (opts.mixup_prob, opts.mixup_switch_prob, opts.random_erase_mode) == (1.0, 0.5, "pixel")
  assert opts.random_erase_area == (0.02, 1 / 3) and opts.random_erase_aspect == (0.3, 3.3)
  assert c.loss == "softmax_xent"


# --- losses ----------------------------------------------------------------------------------

def _np_log_sigmoid(z):
  return -np.logaddexp(0.0, -z)


def test_sigmoid_xent_against_numpy_and_big_vision_and_timm_scale():
  import optax  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 5)).astype(np.float32) * 3
  logits[0, :2] = (60.0, -60.0)  # Saturated logits stay finite.
  labels = rng.uniform(size=(6, 5)).astype(np.float32)
  labels[1] = (0, 1, 0, 1, 1)  # Multi-hot.
  z = logits.astype(np.float64)
  ref = -(labels * _np_log_sigmoid(z) + (1 - labels) * _np_log_sigmoid(-z)).sum(-1)
  got = np.asarray(losses.get("sigmoid_xent")(logits, labels))
  assert got.shape == (6,) and np.all(np.isfinite(got))
  np.testing.assert_allclose(got, ref, rtol=1e-5)
  # big_vision's sigmoid_xent: -Σ_c [y log_sigmoid(z) + (1-y) log_sigmoid(-z)] per example.
  # timm's BinaryCrossEntropy (mean over classes) is 1/C of it; optax's is per element.
  timm_like = np.asarray(optax.sigmoid_binary_cross_entropy(logits, labels)).mean(-1)
  np.testing.assert_allclose(got, 5 * timm_like, rtol=1e-5)


def test_softmax_xent_on_mixed_soft_targets_against_numpy():
  from vit_jax.training import train_step  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(8, 6)).astype(np.float32)
  y = mixing.one_hot(rng.integers(0, 6, 8), 6, 0.1)
  images = rng.normal(size=(8, 4, 4, 3)).astype(np.float32)
  _, mixed, lam = mixing.cutmix(images, y, 1.0, rng)
  logp = logits - np.log(np.exp(logits.astype(np.float64)).sum(-1, keepdims=True))
  got = np.asarray(losses.get("softmax_xent")(logits, mixed))
  np.testing.assert_allclose(got, -(mixed * logp).sum(-1), rtol=1e-5)
  partner = y.reshape(4, 2, 6)[:, ::-1].reshape(8, 6)
  # Linear in the target: λ·CE(y) + (1-λ)·CE(y_partner), the timm/DeiT mixup loss.
  per_target = lambda t: -(t * logp).sum(-1)
  np.testing.assert_allclose(got, lam * per_target(y) + (1 - lam) * per_target(partner), rtol=1e-5)
  np.testing.assert_allclose(got, np.asarray(train_step.cross_entropy(logits, mixed)), rtol=1e-6)


def test_unknown_loss_is_one_clear_error():
  names = r"\('softmax_xent', 'sigmoid_xent'\)"
  with pytest.raises(ValueError, match=r"config.loss='nope' is unknown; use one of " + names):
    losses.get("nope")


def test_train_step_uses_config_loss(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  from helpers import setup_for, synthetic_batches, tiny_config  # pylint: disable=g-import-not-at-top

  from vit_jax import sharding  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train_state, train_step
  config = tiny_config(tmp_path, **{"model.transformer.dropout_rate": 0.0})
  setup = setup_for(config, sharding.make_mesh((("data", -1),)))
  state = train_state.create_train_state(setup, 0)
  batch = next(synthetic_batches(1, 8, 8))
  logits = setup.model.apply({"params": state.params}, batch["image"], train=True,
                             rngs={"dropout": state.rng})
  for name in ("sigmoid_xent", "softmax_xent"):
    loss, _, _ = jax.jit(train_step.make_loss_and_grad(setup, 1, name))(state.params, batch,
                                                                         state.rng)
    want = losses.get(name)(logits, batch["label"]).mean()
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)
  config.loss = "nope"
  with pytest.raises(ValueError, match="config.loss='nope' is unknown"):
    train_step.compile_train_step(setup, config, 10)
