"""big_vision pp strings in config.pp.train / config.pp.eval: the parser, byte-identity with the
named recipes, each op against Pillow / NumPy directly, the label no-ops, the errors, and an op
registered by this module (also inside spawned data workers)."""
import io
import os

import numpy as np
import pytest
from PIL import Image

from vit_jax.configs import base
from vit_jax.datasets import (
  image_ops,
  pipeline,
  pp_pipeline,
  pp_registry,
  pp_spec,
  preprocess,
  randaugment,
  sources,
)


# An op of the user's own, registered by this test module (the registry is not edited).
@pp_registry.register_op("test_swap_rb")
def swap_rb(scale=1.0):
  """Channels reversed (RGB -> BGR) and multiplied by `scale` (uint8, saturating)."""
  def op(image, rng):
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return np.clip(arr[..., ::-1].astype(np.float32) * scale, 0, 255).astype(np.uint8)
  return op


def _encode(arr: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
  return buf.getvalue()


def _inputs():
  """A few JPEG and PNG inputs: landscape, portrait, grey and palette images."""
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:375, 0:500]
  smooth = np.stack([xx * 255 // 499, yy * 255 // 374, (xx + yy) * 255 // 873], -1)
  out = [_encode(smooth.astype(np.uint8), "JPEG"),
         _encode(rng.integers(0, 256, (300, 257, 3), np.uint8), "JPEG"),
         _encode(rng.integers(0, 256, (260, 240, 3), np.uint8), "PNG"),
         _encode(rng.integers(0, 256, (230, 250), np.uint8), "PNG")]
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (240, 260, 3), np.uint8)).quantize(16).save(buf, "PNG")
  return out + [buf.getvalue()]


INPUTS = _inputs()


def _opts(**pp):
  c = base.defaults().pp
  for key, value in pp.items():
    c[key] = value
  return preprocess.options_from_config(c)


# --- the parser ------------------------------------------------------------------------------

def test_parse_ops_args_and_kwargs_as_literals():
  calls = pp_spec.parse('decode|resize_small(256)|central_crop((224, 200))|value_range(-1, 1)|'
                        'onehot(1000, key="label", key_result="labels")|keep("image", "labels")|'
                        '|copy(inkey="a|b", outkey=\'c)\')')
  assert [c.name for c in calls] == ["decode", "resize_small", "central_crop", "value_range",
                                     "onehot", "keep", "copy"]  # The empty section is skipped.
  assert calls[0].args == () and calls[1].args == (256,) and calls[2].args == ((224, 200),)
  assert calls[3].args == (-1, 1)
  assert calls[4].args == (1000,) and calls[4].kwargs_dict == {"key": "label",
                                                               "key_result": "labels"}
  assert calls[6].kwargs_dict == {"inkey": "a|b", "outkey": "c)"}  # | and ) inside quotes
  assert pp_spec.split_ops("a([1, 2]|3)|b") == ["a([1, 2]|3)", "b"]


@pytest.mark.parametrize("spec,match", [
    ("decode|resize(2 * 112)", "must be Python literals"),
    ("decode|resize(224", "not valid syntax"),
    ("decode|x.y(1)", "not NAME or NAME"),
    ("decode|resize(*sizes)", "not allowed"),
    ("||", "has no ops"),
])
def test_parse_errors_name_the_op(spec, match):
  with pytest.raises(ValueError, match=match):
    pp_spec.parse(spec)


# --- byte-identity with the named recipes ----------------------------------------------------

@pytest.mark.parametrize("named,spec", [
    (dict(eval="resize_small", resize=256, crop=224),
     "decode|resize_small(256)|central_crop(224)|value_range(-1,1)"),
    (dict(eval="resize", crop=224), "decode|resize(224)|value_range(-1,1)"),
    (dict(eval="resize_crop", resize=256, crop=224),
     "decode|resize(256)|central_crop(224)|value_range(-1, 1)"),
    (dict(eval="resize_small", crop_pct=0.875, crop=96),  # resize = floor(96 / 0.875) = 109
     'decode|resize_small(109)|central_crop(96)|value_range(-1, 1)|onehot(10, key="label", '
     'key_result="labels")|keep("image", "labels")'),
])
def test_eval_pp_strings_equal_the_named_recipes_bytewise(named, spec):
  a, b = _opts(**named), _opts(eval=spec, crop=named["crop"])
  assert b.eval == spec and b.crop == a.crop
  assert preprocess.named_eval(spec) == (a.eval, a.resize if a.eval != "resize" else a.crop,
                                         a.crop)
  for data in INPUTS:
    want, got = preprocess.eval_image(data, a), preprocess.eval_image(data, b)
    assert got.dtype == np.uint8 and got.tobytes() == want.tobytes()
    assert (preprocess.eval_values(got[None], b).tobytes()
            == image_ops.to_float(want[None]).tobytes())


@pytest.mark.parametrize("named,spec", [
    (dict(train="vit_finetune", resize=256, crop=224, flip=True),
     "decode|resize(256)|random_crop(224)|flip_lr|value_range(-1, 1)"),
    (dict(train="inception_crop", crop=160, flip=True),
     "decode_jpeg_and_inception_crop(160)|flip_lr|value_range(-1, 1)"),
    (dict(train="inception_crop", crop=160, flip=True),
     "decode|inception_crop(160)|flip_lr|value_range(-1, 1)"),
    (dict(train="inception_crop", crop=128, flip=True, randaugment_layers=2,
          randaugment_magnitude=15),
     'decode_jpeg_and_inception_crop(128)|flip_lr|randaug(2, 15)|value_range(-1, 1)|'
     'onehot(1000, key="label", key_result="labels")|keep("image", "labels")'),
])
def test_train_pp_strings_equal_the_named_recipes_bytewise(named, spec):
  a, b = _opts(**named), _opts(train=spec, crop=named["crop"])
  for data in INPUTS:
    for seed in range(4):
      want = preprocess.train_image(data, a, np.random.default_rng(seed))
      got = preprocess.train_image(data, b, np.random.default_rng(seed))
      assert got.tobytes() == want.tobytes(), seed
  assert (preprocess.train_values(got[None], b).tobytes()
          == image_ops.to_float(want[None]).tobytes())


def test_a_pp_string_run_equals_the_named_run_through_the_pipeline(tmp_path):
  """Whole train and eval batches (workers off): the same arrays, bit for bit."""
  root = tmp_path / "jpegs"
  rng = np.random.default_rng(1)
  for split in ("train", "test"):
    for k in range(8):
      folder = root / split / f"c{k % 2}"
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (41, 37, 3), np.uint8)).save(folder / f"{k}.jpg")
  sources.clear_cache()

  def config(**pp):
    c = base.defaults()
    c.update_from_flattened_dict({"dataset": str(root), "batch": 4, "batch_eval": 4,
                                  "input.num_workers": 0, "pp.crop": 16, "pp.resize": 20,
                                  "pp.mixup_alpha": 0.5, "pp.label_smoothing": 0.1,
                                  **{f"pp.{k}": v for k, v in pp.items()}})
    return c

  named = config(train="vit_finetune", eval="resize_small")
  strings = config(train="decode|resize(20)|random_crop(16)|flip_lr|value_range(-1,1)",
                   eval="decode|resize_small(20)|central_crop(16)|value_range(-1,1)|"
                        "onehot(1000)")  # eval: not checked (few-shot sets differ in classes)
  for make in (lambda c: pipeline.create_train_iterator(c, process_index=0, process_count=1),
               lambda c: iter(pipeline.create_eval_iterator(c, process_index=0,
                                                            process_count=1))):
    a, b = make(named), make(strings)
    for _ in range(2):
      x, y = next(a), next(b)
      assert set(x) == set(y)
      for key in x:
        assert x[key].dtype == y[key].dtype and x[key].tobytes() == y[key].tobytes(), key
  with pytest.raises(ValueError, match="one-hot encodes 5 classes .* the dataset has 2"):
    pipeline.create_train_iterator(config(train="decode|resize(16)|value_range(-1,1)|onehot(5)"),
                                   process_index=0, process_count=1)


# --- each op against Pillow / NumPy directly -------------------------------------------------

def _png(arr):
  return _encode(arr, "PNG")


def test_resize_resize_small_and_central_crop_against_pillow():
  arr = np.random.default_rng(2).integers(0, 256, (20, 30, 3), np.uint8)
  opts = _opts(eval="decode|resize_small(10)|central_crop((8, 6))|value_range(0, 1)", crop=8)
  pipe = pp_pipeline.get(opts.eval)
  out = pipe.image(_png(arr), np.random.default_rng(0))
  small = np.asarray(Image.fromarray(arr).resize((15, 10), Image.BILINEAR))
  np.testing.assert_array_equal(out, small[1:9, 4:10])  # (10 - 8) // 2, (15 - 6) // 2
  np.testing.assert_array_equal(pipe.values(out), out.astype(np.float32) / np.float32(255))
  pipe = pp_pipeline.get("decode|resize((12, 16), method='bicubic')|central_crop")
  out = pipe.image(_png(arr), None)
  want = np.asarray(Image.fromarray(arr).resize((16, 12), Image.BICUBIC))[:, 2:14]
  np.testing.assert_array_equal(out, want)  # central_crop(): the largest central square


def test_random_crop_and_flip_lr_against_numpy_and_the_rng():
  arr = np.random.default_rng(3).integers(0, 256, (12, 14, 3), np.uint8)
  pipe = pp_pipeline.get("decode|random_crop((6, 8))|flip_lr")
  flips = 0
  for seed in range(40):
    out = pipe.image(_png(arr), np.random.default_rng(seed))
    ref = np.random.default_rng(seed)
    left, top = int(ref.integers(0, 7)), int(ref.integers(0, 7))  # x first, as random_crop
    window = arr[top:top + 6, left:left + 8]
    flipped = ref.random() < 0.5
    flips += flipped
    np.testing.assert_array_equal(out, window[:, ::-1] if flipped else window)
  assert 5 < flips < 35


def test_value_range_arguments_against_numpy():
  arr = np.random.default_rng(4).integers(0, 256, (2, 4, 4, 3), np.uint8)
  x = arr.astype(np.float64)
  cases = {"value_range(0, 1)": x / 255,
           "value_range(-2, 3, 10, 200, clip_values=True)":
               np.clip(-2 + (x - 10) / 190 * 5, -2, 3),
           "value_range(0, 1, in_min=[0, 10, 20], in_max=[255, 245, 235])":
               (x - [0, 10, 20]) / np.array([255, 235, 215])}
  for spec, want in cases.items():
    got = pp_pipeline.get(f"decode|{spec}").values(arr)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  no_range = pp_pipeline.get("decode|resize(4)")
  np.testing.assert_array_equal(no_range.values(arr), x.astype(np.float32))  # [0, 255]


def test_a_trailing_value_range_runs_on_the_batch_and_a_middle_one_per_image():
  arr = np.random.default_rng(5).integers(0, 256, (8, 8, 3), np.uint8)
  tail = pp_pipeline.get("decode|value_range(-1, 1)|onehot(3)|keep('image')")
  assert tail.value_range is not None and tail.ops[-1][0] == "decode" and tail.num_classes == 3
  assert tail.image(_png(arr), None).dtype == np.uint8  # workers pass uint8
  middle = pp_pipeline.get("decode|value_range(0, 1)|flip_lr")
  out = middle.image(_png(arr), np.random.default_rng(0))
  assert middle.value_range is None and out.dtype == np.float32
  want = arr / np.float32(255)
  assert np.allclose(out, want) or np.allclose(out, want[:, ::-1])
  with pytest.raises(ValueError, match="put value_range"):
    pp_pipeline.get("decode|value_range(0, 1)|resize(4)").image(_png(arr), None)


def test_inception_crop_arguments_and_randaug_against_the_primitives():
  data = INPUTS[1]
  full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
  pipe = pp_pipeline.get("decode|inception_crop(area_min=50, area_max=60)")
  for seed in range(5):
    out = pipe.image(data, np.random.default_rng(seed))
    left, top, w, h = image_ops.sample_inception_box(257, 300, np.random.default_rng(seed),
                                                      (0.5, 0.6), (3 / 4, 4 / 3))
    np.testing.assert_array_equal(out, full[top:top + h, left:left + w])  # not resized
    assert 0.49 <= w * h / (257 * 300) <= 0.61 or (w, h) == (257, 300)
  pipe = pp_pipeline.get("decode|resize(32)|randaug(2, 9)")
  img = Image.open(io.BytesIO(INPUTS[2])).convert("RGB").resize((32, 32), Image.BILINEAR)
  want = randaugment.randaugment(img, 2, 9, np.random.default_rng(7))
  np.testing.assert_array_equal(pipe.image(INPUTS[2], np.random.default_rng(7)),
                                np.asarray(want))


def test_named_eval_only_for_strings_that_spell_a_named_recipe():
  for spec in ("decode|resize(224, method='bicubic')|value_range(-1, 1)",
               "decode|resize(224)|value_range(0, 1)",
               "decode|resize((224, 200))|value_range(-1,1)",
               "decode|resize_small(256)|central_crop(224)", "decode|flip_lr|resize(224)|"
               "value_range(-1, 1)", "decode|inception_crop(224)|value_range(-1, 1)", "resize",
               "decode|nope(3)"):
    assert preprocess.named_eval(spec) is None, spec


def test_eval_strings_with_random_ops_are_deterministic():
  opts = _opts(eval="decode|resize(40)|random_crop(32)|flip_lr|value_range(-1, 1)", crop=32)
  a = [preprocess.eval_image(d, opts) for d in INPUTS]
  b = [preprocess.eval_image(d, opts) for d in INPUTS]
  assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b))


# --- label ops and errors --------------------------------------------------------------------

def test_label_ops_are_accepted_and_checked():
  opts = _opts(train='decode|inception_crop(8)|value_range(-1, 1)|copy("label", "labels")|'
                     'onehot(10, key="labels")|keep("image", "labels")|drop("segmentation")',
               crop=8)
  preprocess.check_label_classes(opts, 10)
  with pytest.raises(ValueError, match="one-hot encodes 10 classes .* the dataset has 3"):
    preprocess.check_label_classes(opts, 3)
  for spec, match in (("decode|onehot(10, on=0.9, off=0.01)", "label_smoothing"),
                      ("decode|keep('labels')", "drops 'image'"),
                      ("decode|drop('image')", "always hold the image"),
                      ("decode|resize(8, key='mask')", "key must be 'image'"),
                      ("decode(channels=1)", "only channels=3"),
                      ("decode|resize(8, method='gaussian')", "not one of"),
                      ("decode|resize()", "missing a required argument: 'size'.*resize\\(size")):
    with pytest.raises(ValueError, match=match):
      _opts(eval=spec, crop=8)


def test_unknown_ops_and_modes_are_one_clear_error():
  with pytest.raises(ValueError) as err:
    _opts(eval="decode|resize_long(256)|central_crop(224)|value_range(-1, 1)")
  message = str(err.value)
  assert message.startswith("config.pp.eval='decode|resize_long(256)|")
  assert "pp op 'resize_long' is unknown" in message
  assert "central_crop, copy, decode" in message and "register_op('NAME')" in message
  assert "config.pp.modules" in message
  with pytest.raises(ValueError, match=r"config.pp.train='vit_finetun' is unknown; use one of "
                                       r"\('vit_finetune', 'inception_crop'\) or a pp string"):
    _opts(train="vit_finetun")
  with pytest.raises(ValueError, match="write randaug\\(2, 15\\) into it"):
    _opts(train="decode|inception_crop(224)|value_range(-1,1)", randaugment_layers=2,
          randaugment_magnitude=15)
  opts = _opts(eval="decode|resize(30)|value_range(-1, 1)", crop=32)
  with pytest.raises(ValueError, match=r"shape \(30, 30, 3\); the model takes \(32, 32, 3\)"):
    preprocess.eval_image(INPUTS[0], opts)
  with pytest.raises(ValueError, match="larger than the"):
    preprocess.train_image(INPUTS[2], _opts(train="decode|random_crop(512)", crop=512),
                           np.random.default_rng(0))


# --- ops registered by the user --------------------------------------------------------------

def test_a_user_op_registered_in_its_own_module():
  arr = np.random.default_rng(6).integers(0, 200, (20, 20, 3), np.uint8)
  opts = _opts(eval="decode|resize(16)|test_swap_rb(scale=1.25)|value_range(-1, 1)", crop=16)
  assert opts.pp_modules == ((__name__, __file__),)  # so that spawned workers import it
  got = preprocess.eval_values(preprocess.eval_image(_png(arr), opts)[None], opts)[0]
  resized = np.asarray(Image.fromarray(arr).resize((16, 16), Image.BILINEAR), np.float32)
  want = np.clip(resized[..., ::-1] * np.float32(1.25), 0, 255).astype(np.uint8)
  np.testing.assert_allclose(got, want / 127.5 - 1, atol=1e-6)
  assert "test_swap_rb" in pp_registry.op_names()
  with pytest.raises(ValueError, match="already registered by"):
    pp_registry.register_op("test_swap_rb")(lambda: None)
  with pytest.raises(ValueError, match="must be a Python identifier"):
    pp_registry.register_op("my-op")


_MODULE_OP = '''
import numpy as np
from vit_jax.datasets import pp_registry


@pp_registry.register_op("test_invert_from_file")
def invert():
  def op(image, rng):
    return 255 - np.asarray(image.convert("RGB"))
  return op
'''


def test_user_ops_reach_spawned_workers(tmp_path):
  """num_workers=2 (spawned processes): this module's op and one from a file named in
  config.pp.modules are imported there; the batches equal those made in this process."""
  root = tmp_path / "pngs"
  rng = np.random.default_rng(7)
  for split in ("train", "test"):
    for k in range(6):
      folder = root / split / f"c{k % 2}"
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(rng.integers(0, 256, (10, 12, 3), np.uint8)).save(folder / f"{k}.png")
  ops_file = tmp_path / "my_pp_ops.py"
  ops_file.write_text(_MODULE_OP)
  sources.clear_cache()
  batches = []
  for workers in (0, 2):
    c = base.defaults()
    c.update_from_flattened_dict({
        "dataset": str(root), "batch": 4, "batch_eval": 4, "pp.crop": 8,
        "input.num_workers": workers, "pp.modules": (str(ops_file),),
        "pp.train": "decode|resize(8)|test_swap_rb|flip_lr|value_range(0, 1)",
        "pp.eval": "decode|resize(8)|test_invert_from_file|value_range(-1, 1)"})
    train = pipeline.create_train_iterator(c, process_index=0, process_count=1)
    batches.append([next(train)["image"] for _ in range(2)]
                   + [b["image"] for b in pipeline.create_eval_iterator(
                       c, process_index=0, process_count=1)])
    train.close()
  for a, b in zip(*batches):
    np.testing.assert_array_equal(a, b)
  # The eval op, independently: 255 - the resized pixels, then [-1, 1].
  path = sorted((root / "test" / "c0").iterdir())[0]
  want = 255 - np.asarray(Image.open(path).convert("RGB").resize((8, 8), Image.BILINEAR))
  assert any(np.array_equal(row, image_ops.to_float(want)) for row in batches[1][2])
  assert float(batches[0][0].min()) >= 0.0 and float(batches[0][0].max()) <= 1.0
