"""Tests of vit_jax.datasets.preprocess and vit_jax.datasets.randaugment against independent
numpy references."""
import io
import math

import numpy as np
import pytest
from PIL import Image

from vit_jax.datasets import image_ops, mixing, preprocess, randaugment


def _png(arr: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "PNG")
  return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, "JPEG", quality=95)
  return buf.getvalue()


def _opts(**kw):
  base = dict(crop=16, resize=16, train="vit_finetune", eval="resize", flip=False)
  base.update(kw)
  return preprocess.PreprocessOptions(**base)


def test_inception_box_ranges():
  rng = np.random.default_rng(0)
  areas, aspects = [], []
  for _ in range(2000):
    left, top, w, h = image_ops.sample_inception_box(500, 375, rng)
    assert 0 <= left and left + w <= 500 and 0 <= top and top + h <= 375
    areas.append(w * h / (500 * 375))
    aspects.append(w / h)
  areas, aspects = np.array(areas), np.array(aspects)
  full = areas == 1.0  # Fallback to the whole image after 10 failed tries.
  assert full.mean() < 0.05
  assert areas[~full].min() >= 0.04 and areas[~full].max() <= 1.0
  assert aspects[~full].min() >= 0.74 and aspects[~full].max() <= 1.35
  assert 0.4 < np.median(areas) < 0.6  # Uniform area in [0.05, 1] → median ≈ 0.525.


def test_vit_finetune_crop_is_a_window_of_the_image():
  """resize == stored size → the crop must equal a numpy slice at rng's position."""
  arr = np.random.default_rng(1).integers(0, 256, (24, 24, 3), np.uint8)
  opts = _opts(crop=16, resize=24)
  out = preprocess.train_image(_png(arr), opts, np.random.default_rng(5))
  ref_rng = np.random.default_rng(5)
  left, top = ref_rng.integers(0, 9), ref_rng.integers(0, 9)
  np.testing.assert_array_equal(out, arr[top:top + 16, left:left + 16])


def test_flip_happens_half_the_time():
  arr = np.random.default_rng(2).integers(0, 256, (16, 16, 3), np.uint8)
  opts = _opts(flip=True)
  flips = 0
  for s in range(200):
    out = preprocess.train_image(_png(arr), opts, np.random.default_rng(s))
    if np.array_equal(out, arr[:, ::-1]):
      flips += 1
    else:
      np.testing.assert_array_equal(out, arr)
  assert 70 < flips < 130


def test_inception_crop_jpeg_shape_and_determinism():
  arr = np.random.default_rng(3).integers(0, 256, (375, 500, 3), np.uint8)
  data = _jpeg(arr)
  opts = _opts(crop=32, train="inception_crop", flip=True)
  a = preprocess.train_image(data, opts, np.random.default_rng(7))
  b = preprocess.train_image(data, opts, np.random.default_rng(7))
  c = preprocess.train_image(data, opts, np.random.default_rng(8))
  assert a.shape == (32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_draft_decoding_matches_full_decoding_closely():
  """Reduced-DCT decoding of a smooth JPEG must agree with a full decode + resize."""
  yy, xx = np.mgrid[0:375, 0:500]
  arr = np.stack([xx * 255 // 499, yy * 255 // 374, (xx + yy) * 255 // 873], -1).astype(np.uint8)
  fast = preprocess.eval_image(_jpeg(arr), _opts(crop=32))
  ref = np.asarray(Image.fromarray(arr).resize((32, 32), Image.BILINEAR), np.int16)
  assert np.abs(fast.astype(np.int16) - ref).mean() < 3.0


def test_eval_resize_crop_is_central():
  arr = np.random.default_rng(4).integers(0, 256, (20, 20, 3), np.uint8)
  out = preprocess.eval_image(_png(arr), _opts(crop=16, resize=20, eval="resize_crop"))
  np.testing.assert_array_equal(out, arr[2:18, 2:18])


def test_eval_resize_small_keeps_the_aspect_and_crops_the_centre():
  wide = np.zeros((20, 60, 3), np.uint8)
  wide[:, 20:40] = 255                      # the central square is white
  small = image_ops.resize_small(_png(wide), 10)
  assert small.size == (30, 10)             # shorter side 10, aspect 3:1 kept
  assert image_ops.resize_small(_png(wide.transpose(1, 0, 2)), 10).size == (10, 30)
  out = preprocess.eval_image(_png(wide), _opts(crop=10, resize=10, eval="resize_small"))
  assert out.shape == (10, 10, 3) and out[:, 1:-1].min() >= 250  # the white square only
  squashed = preprocess.eval_image(_png(wide), _opts(crop=10, resize=10, eval="resize_crop"))
  assert squashed[:, 1].max() < 50 and squashed[:, 4:6].min() == 255  # square resize squashes


@pytest.mark.parametrize("crop,crop_pct,resize", [(224, 0.875, 256), (224, 0.9, 248),
                                                  (384, 1.0, 384), (32, 0.875, 36)])
def test_crop_pct_sets_the_resize_as_timm(crop, crop_pct, resize):
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  c = base.defaults()
  c.pp.crop, c.pp.crop_pct, c.pp.eval = crop, crop_pct, "resize_small"
  assert preprocess.options_from_config(c.pp).resize == resize  # floor(crop / crop_pct)


def test_crop_pct_errors():
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  c = base.defaults()
  c.pp.crop_pct = 1.5
  with pytest.raises(ValueError, match="crop_pct=1.5 must be in"):
    preprocess.options_from_config(c.pp)
  c.pp.crop_pct, c.pp.resize = 0.875, 256
  with pytest.raises(ValueError, match="set one of them"):
    preprocess.options_from_config(c.pp)


def test_grey_and_array_inputs_become_rgb():
  grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
  out = preprocess.eval_image(_png(grey), _opts(crop=8))
  np.testing.assert_array_equal(out, np.repeat(grey[..., None], 3, -1))
  np.testing.assert_array_equal(preprocess.eval_image(grey, _opts(crop=8)), out)


def test_to_float_range():
  x = image_ops.to_float(np.array([0, 127, 255], np.uint8))
  assert x.dtype == np.float32
  np.testing.assert_allclose(x, [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-6)


def test_one_hot_label_smoothing():
  y = mixing.one_hot(np.array([2, 0]), 4, smoothing=0.1)
  ref = np.full((2, 4), 0.025, np.float32)
  ref[0, 2] = ref[1, 0] = 0.9 + 0.025
  np.testing.assert_allclose(y, ref, atol=1e-7)
  np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-6)
  with pytest.raises(ValueError, match="outside"):
    mixing.one_hot(np.array([4]), 4)


def test_mixup_statistics():
  rng = np.random.default_rng(0)
  images = rng.normal(size=(8, 4, 4, 3)).astype(np.float32)
  labels = mixing.one_hot(rng.integers(0, 5, 8), 5, 0.1)
  lams = []
  for _ in range(400):
    x, y, lam = mixing.mixup(images, labels, 1.0, rng)
    lams.append(lam)
    np.testing.assert_allclose(y.sum(-1), 1.0, atol=1e-6)
    i = 3  # Rows 2 and 3 are partners.
    np.testing.assert_allclose(x[i], lam * images[i] + (1 - lam) * images[i - 1], atol=1e-6)
    np.testing.assert_allclose(x[i - 1], lam * images[i - 1] + (1 - lam) * images[i], atol=1e-6)
  lams = np.array(lams)  # Beta(1, 1) = uniform: mean 1/2, variance 1/12.
  assert 0 <= lams.min() and lams.max() <= 1
  assert abs(lams.mean() - 0.5) < 0.05 and abs(lams.var() - 1 / 12) < 0.02


def test_randaugment_ops_and_statistics():
  arr = np.random.default_rng(5).integers(0, 256, (32, 32, 3), np.uint8)
  img = Image.fromarray(arr)
  for name, op in randaugment.OPS.items():
    out = op(img, 1.0, np.random.default_rng(0))
    assert out.size == (32, 32) and out.mode == "RGB", name
  unchanged = randaugment.randaugment(img, 0, 10, np.random.default_rng(0))
  assert np.array_equal(np.asarray(unchanged), arr)
  a = np.asarray(randaugment.randaugment(img, 2, 10, np.random.default_rng(1)))
  b = np.asarray(randaugment.randaugment(img, 2, 10, np.random.default_rng(1)))
  np.testing.assert_array_equal(a, b)
  changed = [not np.array_equal(np.asarray(randaugment.randaugment(img, 2, 10,
                                                                   np.random.default_rng(s))), arr)
             for s in range(50)]
  assert np.mean(changed) > 0.8
  inverted = randaugment.OPS["Invert"](img, 0.0, None)
  np.testing.assert_array_equal(np.asarray(inverted), 255 - arr)
  solar = np.asarray(randaugment.OPS["Solarize"](img, 0.5, None))
  np.testing.assert_array_equal(solar, np.where(arr >= 128, 255 - arr, arr))


def test_options_validation():
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  pp = base.defaults().pp
  assert preprocess.options_from_config(pp).resize == 256
  pp.train = "nope"
  with pytest.raises(ValueError, match="vit_finetune"):
    preprocess.options_from_config(pp)
  assert math.isclose(image_ops.to_float(np.uint8(255)), 1.0)
