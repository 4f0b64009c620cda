"""Tests for vit_jax.checkpoint: official layout, round trips, load_pretrained, errors."""
import errno
import os
import pickle
import stat

import jax
import numpy as np
import pytest
import scipy.ndimage
from flax.linen import meta

from tests import official_layout as ol
from vit_jax import checkpoint, models
from vit_jax.checkpoint import files as checkpoint_files

IMG = np.random.default_rng(1).uniform(-1, 1, (2, ol.IMAGE, ol.IMAGE, 3)).astype(np.float32)


def _init(cfg=None, size=ol.IMAGE, num_classes=ol.CLASSES, abstract=False, **kw):
  """(model, its boxed init params): compiled once, not op by op; `abstract`: names and shapes
  only (jax.eval_shape), where load_pretrained takes every value from the file."""
  model = models.VisionTransformer(num_classes=num_classes, **(cfg or ol.tiny_config()), **kw)
  x = np.zeros((1, size, size, 3), np.float32)
  init = lambda: model.init(jax.random.PRNGKey(0), x, train=False)["params"]
  return model, (jax.eval_shape(init) if abstract else jax.jit(init)())


def _logits(model, params, x=IMG):
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x))


def _linen_name(official_key):  # Hand-written rename, independent of the library's table.
  for old, new in (("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0"),
                   ("LayerNorm_2", "LayerNorm_1"), ("MlpBlock_3", "MlpBlock_0")):
    official_key = official_key.replace(old, new)
  return official_key


def test_save_writes_exactly_the_official_keys_and_shapes(tmp_path):
  _, params = _init()  # Boxed (nn.Partitioned) params straight from init.
  checkpoint.save(params, tmp_path / "ckpt.npz")
  with np.load(tmp_path / "ckpt.npz", allow_pickle=False) as f:
    saved = {k: (f[k].shape, f[k].dtype) for k in f.files}
  assert {k: s for k, (s, _) in saved.items()} == ol.official_vit_shapes()
  assert all(dt == np.float32 for _, dt in saved.values())


def test_save_load_round_trip_is_bit_exact(tmp_path):
  _, params = _init()
  params = meta.unbox(params)
  params = jax.tree.map(lambda x: x + np.random.default_rng(0).normal(size=x.shape), params)
  checkpoint.save(params, str(tmp_path / "a.npz"))
  loaded = ol.flatten(checkpoint.load(str(tmp_path / "a.npz")))
  expected = ol.flatten(params)
  assert loaded.keys() == expected.keys()
  for k in expected:
    np.testing.assert_array_equal(loaded[k], np.asarray(expected[k], np.float32), err_msg=k)


def test_load_official_file_renames_every_key(tmp_path):
  weights = ol.write_official_npz(str(tmp_path / "official.npz"))
  loaded = ol.flatten(checkpoint.load(str(tmp_path / "official.npz")))
  assert loaded.keys() == {_linen_name(k) for k in weights}
  for k, v in weights.items():
    np.testing.assert_array_equal(loaded[_linen_name(k)], v)
  _, init = _init(abstract=True)
  params = checkpoint.load_pretrained(pretrained_path=str(tmp_path / "official.npz"),
                                      init_params=init, model_config=ol.tiny_config())
  assert ol.flatten(params).keys() == ol.flatten(meta.unbox(init)).keys()


def test_scanned_and_per_layer_give_same_file_and_logits(tmp_path):
  path = str(tmp_path / "official.npz")
  ol.write_official_npz(path)
  model, init = _init(abstract=True)
  scan_model, scan_init = _init(abstract=True, scan_layers=True)
  params = checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=None)
  scan_params = checkpoint.load_pretrained(pretrained_path=path, init_params=scan_init,
                                           model_config=None)
  assert "encoderblock" in scan_params["Transformer"]
  assert scan_params["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"].shape == (
      ol.LAYERS, ol.WIDTH)
  np.testing.assert_allclose(_logits(scan_model, scan_params), _logits(model, params), atol=1e-5)
  checkpoint.save(scan_params, str(tmp_path / "from_scan.npz"))
  with np.load(path) as a, np.load(str(tmp_path / "from_scan.npz")) as b:
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
      np.testing.assert_array_equal(a[k], b[k])


def test_stack_unstack_layers_are_inverse_and_index_layers():
  _, params = _init()
  params = meta.unbox(params)
  stacked = checkpoint.stack_layers(params)
  assert set(stacked["Transformer"]) == {"encoderblock", "encoder_norm", "posembed_input"}
  np.testing.assert_array_equal(
      stacked["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"][1],
      params["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_0"]["kernel"])
  back = checkpoint.unstack_layers(stacked)
  assert jax.tree.all(jax.tree.map(np.array_equal, back, params))


def _bilinear_reference(grid, new):  # scipy.ndimage.zoom(order=1) as Google's code used.
  zoom = (new[0] / grid.shape[0], new[1] / grid.shape[1], 1)
  out = scipy.ndimage.zoom(grid, zoom, order=1)
  assert out.shape[:2] == tuple(new)
  return out


@pytest.mark.parametrize("old,new", [((4, 4), (6, 6)), ((2, 3), (4, 5)), ((5, 5), (3, 3))])
def test_interpolate_posemb_matches_scipy_zoom(old, new):
  rng = np.random.default_rng(0)
  posemb = rng.normal(size=(1, 1 + old[0] * old[1], 7)).astype(np.float32)
  out = checkpoint.interpolate_posemb(posemb, new, num_prefix_tokens=1, old_grid=old)
  assert out.shape == (1, 1 + new[0] * new[1], 7)
  np.testing.assert_array_equal(out[:, :1], posemb[:, :1])
  ref = _bilinear_reference(posemb[0, 1:].reshape(*old, 7).astype(np.float64), new)
  np.testing.assert_allclose(out[0, 1:], ref.reshape(-1, 7), atol=1e-6)


def test_load_pretrained_resizes_posemb_for_higher_resolution(tmp_path):
  path = str(tmp_path / "official.npz")
  weights = ol.write_official_npz(path)
  model, init = _init(size=24, abstract=True)  # 16x16 (4x4 grid) -> 24x24 (6x6), as 224 -> 384.
  params = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                      model_config=ol.tiny_config())
  posemb = params["Transformer"]["posembed_input"]["pos_embedding"]
  old = weights["Transformer/posembed_input/pos_embedding"]
  assert posemb.shape == (1, 37, ol.WIDTH)
  np.testing.assert_array_equal(posemb[:, :1], old[:, :1])
  ref = _bilinear_reference(old[0, 1:].reshape(4, 4, -1).astype(np.float64), (6, 6))
  np.testing.assert_allclose(posemb[0, 1:], ref.reshape(36, -1), atol=1e-6)
  x = np.zeros((1, 24, 24, 3), np.float32)
  assert _logits(model, params, x).shape == (1, ol.CLASSES)


def test_gap_model_without_class_token_resizes_whole_grid(tmp_path):
  cfg = ol.tiny_config(classifier="gap")
  _, params16 = _init(cfg)
  params16 = jax.tree.map(lambda x: x + 1.0, meta.unbox(params16))
  checkpoint.save(params16, str(tmp_path / "gap.npz"))
  _, init = _init(cfg, size=24, abstract=True)
  params = checkpoint.load_pretrained(pretrained_path=str(tmp_path / "gap.npz"),
                                      init_params=init, model_config=cfg)
  old = np.asarray(params16["Transformer"]["posembed_input"]["pos_embedding"])
  ref = _bilinear_reference(old[0].reshape(4, 4, -1).astype(np.float64), (6, 6))
  np.testing.assert_allclose(params["Transformer"]["posembed_input"]["pos_embedding"][0],
                             ref.reshape(36, -1), atol=1e-6)


def test_non_square_grid_needs_and_uses_new_grid(tmp_path):
  path = str(tmp_path / "official.npz")
  ol.write_official_npz(path)
  model = models.VisionTransformer(num_classes=ol.CLASSES, **ol.tiny_config())
  init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 12, 3),
                                                                         np.float32), train=False))
  with pytest.raises(ValueError, match="not a square grid"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init["params"],
                               model_config=None)
  params = checkpoint.load_pretrained(pretrained_path=path, init_params=init["params"],
                                      model_config=None, new_grid=(2, 3))
  assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 7, ol.WIDTH)


def test_head_is_replaced_when_class_count_differs_and_error_when_forbidden(tmp_path):
  path = str(tmp_path / "official.npz")
  ol.write_official_npz(path, classes=21)
  _, init = _init(num_classes=7)
  params = checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=None)
  np.testing.assert_array_equal(params["head"]["kernel"], meta.unbox(init)["head"]["kernel"])
  with pytest.raises(ValueError, match=r"'head/kernel' has shape \(16, 21\); the model expects "
                     r"\(16, 7\)\. Pass num_classes=21"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=None,
                               replace_head=False)


def test_abstract_init_params_give_the_same_weights_and_a_zero_head(tmp_path):
  path = str(tmp_path / "official.npz")
  ol.write_official_npz(path, classes=21)
  model, init = _init(num_classes=7)
  x = np.zeros((1, ol.IMAGE, ol.IMAGE, 3), np.float32)
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))["params"]
  concrete = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                        model_config=None)
  from_abstract = checkpoint.load_pretrained(pretrained_path=path, init_params=abstract,
                                             model_config=None)
  flat_c, flat_a = ol.flatten(concrete), ol.flatten(from_abstract)
  assert set(flat_c) == set(flat_a)
  for key in flat_c:
    if not key.startswith("head/"):
      np.testing.assert_array_equal(flat_a[key], flat_c[key], err_msg=key)
  assert flat_a["head/kernel"].shape == (ol.WIDTH, 7) and not np.any(flat_a["head/kernel"])


def test_zero_head_warns(tmp_path):
  weights = ol.random_official_weights()
  weights["head/kernel"][:] = 0
  np.savez(tmp_path / "i21k.npz", **weights)
  _, init = _init(abstract=True)
  with pytest.warns(UserWarning, match="all zeros"):
    checkpoint.load_pretrained(pretrained_path=str(tmp_path / "i21k.npz"), init_params=init,
                               model_config=None)


def test_pre_logits_dropped_when_model_has_none(tmp_path):
  path = str(tmp_path / "repr.npz")
  ol.write_official_npz(path, representation_size=8)
  _, init = _init(num_classes=3, abstract=True)
  params = checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=None)
  assert "pre_logits" not in params and params["head"]["kernel"].shape == (ol.WIDTH, 3)


def test_truncated_file_is_a_clear_error(tmp_path):
  path = tmp_path / "full.npz"
  ol.write_official_npz(str(path))
  data = path.read_bytes()
  (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="truncated or corrupt"):
    checkpoint.load(str(tmp_path / "cut.npz"))


def test_pickled_content_is_refused(tmp_path):
  np.savez(tmp_path / "obj.npz", **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
  with pytest.raises(ValueError, match="pickled"):
    checkpoint.load(str(tmp_path / "obj.npz"))
  (tmp_path / "p.npz").write_bytes(pickle.dumps({"embedding/kernel": np.zeros(3)}))
  with pytest.raises(ValueError, match="pickle"):
    checkpoint.load(str(tmp_path / "p.npz"))
  (tmp_path / "model.bin").write_bytes(b"\x80\x02}q\x00.")
  with pytest.raises(ValueError, match="never loaded"):
    checkpoint.load(str(tmp_path / "model.bin"))


def test_pytorch_pickles_are_judged_by_their_bytes_not_their_extension(tmp_path):
  import zipfile  # pylint: disable=g-import-not-at-top
  with zipfile.ZipFile(tmp_path / "weights.npz", "w") as z:  # torch.save's zip layout.
    z.writestr("archive/data.pkl", pickle.dumps({}))
    z.writestr("archive/version", "3")
  with pytest.raises(ValueError, match="PyTorch pickle"):
    checkpoint.load(str(tmp_path / "weights.npz"))
  (tmp_path / "random.bin").write_bytes(b"GARBAGE!" * 32)
  with pytest.raises(ValueError) as info:
    checkpoint.load(str(tmp_path / "random.bin"))
  assert "is a PyTorch pickle" not in str(info.value) and "bytes are not one" in str(info.value)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
  np.savez(tmp_path / "data.npz", images=np.zeros((2, 3)), labels=np.zeros(2))
  with pytest.raises(ValueError, match="does not look like a ViT/Mixer checkpoint"):
    checkpoint.load(str(tmp_path / "data.npz"))
  (tmp_path / "notes.txt").write_text("hello")
  with pytest.raises(ValueError, match="neither an .npz"):
    checkpoint.load(str(tmp_path / "notes.txt"))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpoint.load(str(tmp_path / "missing.npz"))


def test_wrong_model_for_checkpoint_names_key_and_shapes(tmp_path):
  path = str(tmp_path / "official.npz")
  ol.write_official_npz(path)
  _, init = _init(ol.tiny_config(hidden_size=8), abstract=True)
  with pytest.raises(ValueError, match=r"'[^']+' has shape \(.*16.*\); the model expects \(.*8.*"
                     r"different architecture"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=None)
  cfg = ol.tiny_config()
  cfg.transformer.num_layers = 3
  _, init = _init(cfg, abstract=True)
  with pytest.raises(ValueError, match=r"missing keys .*encoderblock_2"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=None)


def _mixer(size, abstract=False):
  model = models.MlpMixer(num_classes=3, patches={"size": (4, 4)}, num_blocks=1, hidden_dim=8,
                          tokens_mlp_dim=6, channels_mlp_dim=10)
  init = lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, size, size, 3)), train=False)
  return model, (jax.eval_shape(init) if abstract else jax.jit(init)())


def test_mixer_round_trip_and_resolution_change_is_refused(tmp_path):
  _, variables = _mixer(16)
  checkpoint.save(variables["params"], str(tmp_path / "mixer.npz"))
  with pytest.warns(UserWarning, match="head .* is all zeros"):  # Mixer heads init to zeros
    restored = checkpoint.load_pretrained(pretrained_path=str(tmp_path / "mixer.npz"),
                                          init_params=variables["params"], model_config=None)
  assert ol.flatten(restored).keys() == ol.flatten(meta.unbox(variables["params"])).keys()
  _, bigger = _mixer(24, abstract=True)  # Shapes only: refused before any value is read.
  with pytest.raises(ValueError, match="Mixer.*resolution cannot change"):
    checkpoint.load_pretrained(pretrained_path=str(tmp_path / "mixer.npz"),
                               init_params=bigger["params"], model_config=None)


def test_failed_save_keeps_the_old_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
  path = tmp_path / "model.npz"
  _, params = _init()
  checkpoint.save(params, str(path))
  good = path.read_bytes()

  def disk_full(fileobj, flat):
    fileobj.write(b"PK partial bytes")
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(checkpoint_files, "_write_npz", disk_full)
  with pytest.raises(OSError, match="disk full"):
    checkpoint.save(params, str(path))
  assert path.read_bytes() == good
  assert os.listdir(tmp_path) == ["model.npz"]
  with pytest.raises(OSError, match="disk full"):
    checkpoint.save(params, str(tmp_path / "new.npz"))
  assert not (tmp_path / "new.npz").exists()


def test_directory_writes_are_atomic(tmp_path):
  """write_dir_atomic (the export formats): all or nothing, an existing output kept unless
  overwrite, then replaced whole; the usual directory permissions; no temp names left."""
  target = tmp_path / "export"

  def fill(files):
    def write(directory):
      for name, text in files.items():
        (tmp_path / directory / name).write_text(text)
    return write
  old = os.umask(0o022)
  try:
    checkpoint_files.write_dir_atomic(str(target), fill({"a.json": "1", "b.bin": "2"}))
  finally:
    os.umask(old)
  assert sorted(os.listdir(target)) == ["a.json", "b.bin"]
  assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
  with pytest.raises(FileExistsError, match="--overwrite"):
    checkpoint_files.write_dir_atomic(str(target), fill({"c": "3"}))

  def fails(directory):
    (tmp_path / directory / "half").write_text("x")
    raise OSError(errno.ENOSPC, "No space left on device")
  with pytest.raises(OSError, match="disk full"):
    checkpoint_files.write_dir_atomic(str(target), fails, overwrite=True)
  assert sorted(os.listdir(target)) == ["a.json", "b.bin"]  # The previous output, intact.
  checkpoint_files.write_dir_atomic(str(target), fill({"c": "3"}), overwrite=True)
  assert os.listdir(target) == ["c"] and os.listdir(tmp_path) == ["export"]
  with pytest.raises(FileNotFoundError, match="create it first"):
    checkpoint_files.write_dir_atomic(str(tmp_path / "missing" / "x"), fill({}))


def test_colab_snippet_runs_on_a_tiny_fixture(tmp_path, monkeypatch):
  from vit_jax.configs import models as models_config  # The official import path.
  cfg = models_config.MODEL_CONFIGS["testing"]
  fixture_model = models.VisionTransformer(num_classes=21, **cfg)
  x = np.zeros((1, 32, 32, 3), np.float32)
  fixture_init = jax.jit(lambda x: fixture_model.init(jax.random.PRNGKey(1), x, train=False))
  checkpoint.save(fixture_init(x)["params"], str(tmp_path / "ViT-B_16.npz"))
  monkeypatch.chdir(tmp_path)
  # --- the snippet, unchanged apart from the config name ---
  model = models.VisionTransformer(num_classes=10, **cfg)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  params = checkpoint.load_pretrained(pretrained_path="ViT-B_16.npz",
                                      init_params=variables["params"], model_config=cfg)
  logits = model.apply({"params": params}, x, train=False)
  assert logits.shape == (1, 10)


def test_saved_file_gets_the_usual_permissions(tmp_path):
  old = os.umask(0o022)
  try:
    _, params = _init()
    checkpoint.save(params, tmp_path / "ckpt.npz")
  finally:
    os.umask(old)
  assert stat.S_IMODE(os.stat(tmp_path / "ckpt.npz").st_mode) == 0o644


def test_load_first_falls_back_only_on_fetch_errors():
  from vit_jax.checkpoint import sources  # pylint: disable=g-import-not-at-top
  calls = []
  def loader(location):
    calls.append(location)
    if location == "unreachable":
      raise sources.FetchError("cannot reach it")
    if location == "corrupt":
      raise checkpoint.CheckpointFormatError("not a checkpoint")
    return location.upper()
  assert checkpoint.load_first(["unreachable", "good"], loader) == ("good", "GOOD")
  with pytest.raises(checkpoint.CheckpointFormatError):  # a bad file is not skipped over
    checkpoint.load_first(["corrupt", "good"], loader)
  with pytest.raises(FileNotFoundError, match=r"unreachable: cannot reach it\n  unreachable"):
    checkpoint.load_first(["unreachable", "unreachable"], loader)
  with pytest.raises(sources.FetchError, match="cannot reach it"):  # one copy: its own error
    checkpoint.load_first(["unreachable"], loader)


def test_candidate_locations(tmp_path):
  local = tmp_path / "w.npz"
  local.write_bytes(b"")
  assert checkpoint.candidate_locations(str(local)) == (str(local),)
  assert checkpoint.candidate_locations("gs://b/x.npz") == ("gs://b/x.npz",)
  assert checkpoint.candidate_locations("missing.npz") == ("missing.npz",)  # loader says so
  name = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
  assert checkpoint.candidate_locations(name + ".npz") == (
      "hf://timm/vit_base_patch16_224.augreg_in21k", f"gs://vit_models/augreg/{name}.npz")


def test_load_report_says_what_was_adapted(tmp_path):
  # A 21-class file with pre_logits at 16 px (4x4 grid) into a 7-class model without
  # pre_logits at 24 px (6x6 grid): head replaced, pre_logits dropped, posemb resized.
  path = str(tmp_path / "official.npz")
  ol.write_official_npz(path, classes=21, representation_size=ol.WIDTH)
  _, init = _init(num_classes=7, size=24, abstract=True)
  params, report = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                              model_config=None, report=True)
  assert isinstance(report, checkpoint.LoadReport)
  assert report.head == "replaced" and report.head_classes == (21, 7)
  assert report.pre_logits_dropped and report.posemb_grid == ((4, 4), (6, 6))
  total = len(ol.official_vit_shapes())  # The model's arrays (no pre_logits).
  assert report.arrays_loaded == total - 3  # All but head kernel/bias and the posemb.
  text = "\n".join(report.lines())
  assert "head: replaced (21 -> 7 classes)" in text and "pre_logits: dropped" in text
  assert "resized from the 4x4 to the 6x6 patch grid" in text
  assert set(params) == set(meta.unbox(init))

  # The same grid and class count: everything kept; replace_head=True forces a new head.
  same = str(tmp_path / "same.npz")
  ol.write_official_npz(same)
  _, init16 = _init(abstract=True)
  _, kept = checkpoint.load_pretrained(pretrained_path=same, init_params=init16,
                                       model_config=None, report=True)
  assert (kept.head, kept.pre_logits_dropped, kept.posemb_grid) == ("kept", False, None)
  assert kept.arrays_loaded == total and "position embeddings: kept" in "\n".join(kept.lines())
  _, forced = checkpoint.load_pretrained(pretrained_path=same, init_params=init16,
                                         model_config=None, replace_head=True, report=True)
  assert forced.head == "replaced" and forced.head_classes == (ol.CLASSES, ol.CLASSES)
