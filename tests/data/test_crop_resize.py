"""image_ops.crop_resize (the train inception crop's decode + crop + resize) and jpeg_size,
against independent references: Pillow's decoder for the pixels and sizes, TensorFlow's
tf.image.resize (bilinear, half-pixel, no antialiasing) for the resize."""
import io

import numpy as np
import pytest
from PIL import Image

from vit_jax.datasets import image_ops


def _photo(width: int, height: int, seed: int = 0, block: int = 8) -> np.ndarray:
  """Smooth random RGB content (compresses like a photo; detail about `block` px)."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, (max(height // block, 2), max(width // block, 2), 3), np.uint8)
  return np.asarray(Image.fromarray(small).resize((width, height), Image.BICUBIC))


def _encode(arr: np.ndarray, fmt: str = "JPEG", **kw) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, fmt, **kw)
  return buf.getvalue()


def _tf_resize(arr: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out = tf.image.resize(arr.astype(np.float32), (out_h, out_w), method="bilinear",
                        antialias=False).numpy()
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kw", [dict(quality=90), dict(quality=75, progressive=True),
                                dict(quality=95, subsampling=0)])
def test_jpeg_size_reads_the_frame_header_as_pillow(kw):
  data = _encode(_photo(123, 77), **kw, exif=Image.Exif().tobytes(), comment=b"x" * 300)
  assert image_ops.jpeg_size(data) == Image.open(io.BytesIO(data)).size == (123, 77)
  grey = _encode(_photo(40, 64)[..., 0])
  assert image_ops.jpeg_size(grey) == (40, 64)
  assert image_ops.jpeg_size(_encode(_photo(8, 8), "PNG")) is None
  assert image_ops.jpeg_size(b"\xff\xd8\xff\xe0\x00") is None  # cut inside the header
  assert image_ops.jpeg_size(b"not an image") is None


def test_crop_resize_equals_pillow_decode_then_tf_resize():
  """A box below 2x the output (no DCT reduction): Pillow's pixels, tf.image.resize's weights
  (cv2's fixed-point bilinear: within 1 level)."""
  arr = _photo(200, 150)
  data = _encode(arr, quality=92)
  decoded = np.asarray(Image.open(io.BytesIO(data)))
  for box, out in (((13, 7, 150, 120), 96), ((0, 0, 200, 150), (120, 90)), ((40, 30, 20, 25), 64)):
    out_wh = out if isinstance(out, tuple) else (out, out)
    got = image_ops.crop_resize(data, lambda *_, b=box: b,
                                (lambda *_, o=out_wh: o) if isinstance(out, tuple) else out)
    left, top, w, h = box
    want = _tf_resize(decoded[top:top + h, left:left + w], out_wh[1], out_wh[0])
    assert got.shape == want.shape and got.dtype == np.uint8
    assert np.abs(got.astype(int) - want).max() <= 1, box


def test_crop_resize_at_a_dct_scale_matches_the_full_resolution_result():
  """A box >= 2x (4x, 8x) the output is decoded at 1/2 (1/4, 1/8) scale: the result stays
  close to the antialiased full-resolution resize (Pillow's), and equals the crop of Pillow's
  own DCT-scaled decode resized by tf.image.resize."""
  arr = _photo(512, 384, seed=1, block=32)  # detail the 40 px output still holds
  data = _encode(arr, quality=92)
  for reduction, out in ((2, 160), (4, 80), (8, 40)):
    got = image_ops.crop_resize(data, lambda *_: (32, 0, 384, 384), out)
    assert image_ops._dct_reduction(out / 384) == reduction  # pylint: disable=protected-access
    img = Image.open(io.BytesIO(data))
    img.draft("RGB", (512 // reduction, 384 // reduction))
    assert img.size == (512 // reduction, 384 // reduction)
    small = np.asarray(img)
    s = 32 // reduction, 384 // reduction
    want = _tf_resize(small[:s[1], s[0]:s[0] + s[1]], out, out)
    assert np.abs(got.astype(int) - want).max() <= 1, reduction
    full = np.asarray(Image.fromarray(arr).resize((out, out), Image.BILINEAR,
                                                  box=(32, 0, 416, 384)))
    assert np.abs(got.astype(float) - full).mean() < 4, reduction


def test_crop_resize_takes_pngs_arrays_and_lazy_pil_images_alike():
  arr = _photo(90, 60, seed=2)
  box, out = (5, 3, 70, 50), 32
  want = _tf_resize(arr[3:53, 5:75], out, out)
  for data in (_encode(arr, "PNG"), arr, Image.fromarray(arr)):
    got = image_ops.crop_resize(data, lambda *_: box, out)
    assert np.abs(got.astype(int) - want).max() <= 1
  jpeg = _encode(arr, quality=95)
  lazy = image_ops.open_image(jpeg)  # not decoded yet: its bytes take the JPEG path
  np.testing.assert_array_equal(image_ops.crop_resize(lazy, lambda *_: box, out),
                                image_ops.crop_resize(jpeg, lambda *_: box, out))
  grey = _encode(arr[..., 0])
  assert image_ops.crop_resize(grey, lambda *_: box, out).shape == (32, 32, 3)


def test_crop_resize_ignores_exif_orientation_as_pillow_and_tf():
  arr = _photo(64, 40, seed=3)
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90": Pillow and tf.io.decode_jpeg do not apply it either
  data = _encode(arr, quality=95, exif=exif.tobytes())
  got = image_ops.crop_resize(data, image_ops.whole_image, lambda *_: (64, 40))
  np.testing.assert_array_equal(got, np.asarray(Image.open(io.BytesIO(data))))


def test_corrupt_and_truncated_jpegs_raise_one_clear_error():
  data = _encode(_photo(64, 64), quality=90)
  for bad in (data[:len(data) // 3], data[:200] + b"\x00" * 50):
    with pytest.raises(ValueError, match="not a decodable JPEG"):
      image_ops.crop_resize(bad, image_ops.whole_image, 32)


def test_the_inception_box_is_drawn_from_the_header_before_decoding():
  """The element RNG draws the same box as from the decoded image (resume and the pp-string
  twin depend on the draw order)."""
  data = _encode(_photo(300, 200), quality=90)
  boxes = []
  def box_fn(w, h, rng):
    boxes.append((w, h))
    return image_ops.sample_inception_box(w, h, rng)
  a = image_ops.crop_resize(data, box_fn, 64, np.random.default_rng(5))
  rng = np.random.default_rng(5)
  left, top, w, h = image_ops.sample_inception_box(300, 200, rng)
  want = image_ops.crop_resize(np.asarray(Image.open(io.BytesIO(data))),
                               lambda *_: (left, top, w, h), 64)
  assert boxes == [(300, 200)]
  if image_ops._dct_reduction(64 / min(w, h)) == 1:  # pylint: disable=protected-access
    np.testing.assert_array_equal(a, want)


def test_an_opencv_without_rgb_decoding_gives_the_same_pixels():
  """OpenCV < 4.10 (a notebook's preinstalled cv2) has no IMREAD_COLOR_RGB: BGR, swapped."""
  data = _encode(_photo(96, 64, seed=4), quality=90)
  for reduction in (1, 2, 4):
    rgb = image_ops.decode_jpeg(data, reduction)
    np.testing.assert_array_equal(image_ops.decode_jpeg(data, reduction, rgb_flag=None), rgb)
    assert rgb.shape == (64 // reduction, 96 // reduction, 3)
  img = Image.open(io.BytesIO(data))
  np.testing.assert_array_equal(image_ops.decode_jpeg(data), np.asarray(img))
