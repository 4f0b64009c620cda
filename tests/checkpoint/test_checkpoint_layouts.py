"""Tests for the layout canonicalisation: big_vision, legacy GroupNorm, hybrids, timm naming."""
import jax
import numpy as np
import pytest
from flax.linen import meta

from tests import official_layout as ol
from vit_jax import checkpoint, models, param_tree
from vit_jax.checkpoint import torch_layouts

X = np.random.default_rng(2).uniform(-1, 1, (2, ol.IMAGE, ol.IMAGE, 3)).astype(np.float32)


def _random_params(model, seed=0, x=X[:1]):
  """Random values (norm scales near 1) for `model`'s tree; shapes from eval_shape, so no init
  is compiled or run op by op."""
  shapes = meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(seed), x, train=False))["params"])
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, p: (rng.normal(0, 0.2, p.shape) + (path[-1].key == "scale")).astype(
          np.float32), shapes)


def _logits(model, params, x=X):
  """model.apply compiled once (eager dispatch compiles every primitive on its own)."""
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x))


def test_big_vision_scanned_map_head_with_params_prefix(tmp_path):
  cfg = ol.tiny_config(classifier="map")
  scanned = models.VisionTransformer(num_classes=3, scan_layers=True, **cfg)
  params = _random_params(scanned)
  flat = ol.flatten(params)
  flat["pos_embedding"] = flat.pop("Transformer/posembed_input/pos_embedding")  # big_vision.
  np.savez(tmp_path / "bv.npz", **{"params/" + k: v for k, v in flat.items()})
  per_layer = models.VisionTransformer(num_classes=3, **cfg)
  # Names and shapes only: every parameter comes from the file.
  init = jax.eval_shape(
      lambda: per_layer.init(jax.random.PRNGKey(0), X[:1], train=False))["params"]
  loaded = checkpoint.load_pretrained(pretrained_path=str(tmp_path / "bv.npz"), init_params=init,
                                      model_config=cfg)
  assert "MAPHead_0" in loaded and "encoderblock_1" in loaded["Transformer"]
  np.testing.assert_allclose(_logits(per_layer, loaded), _logits(scanned, params), atol=1e-5)


def test_big_vision_token_posemb_gets_an_empty_class_slot(tmp_path):
  weights = {_linen(k): v for k, v in ol.random_official_weights().items()}
  posemb = weights.pop("Transformer/posembed_input/pos_embedding")[:, 1:]
  np.savez(tmp_path / "bv.npz", pos_embedding=posemb,
           **{"opt/target/" + k: v for k, v in weights.items()})
  loaded = checkpoint.load(str(tmp_path / "bv.npz"))
  got = loaded["Transformer"]["posembed_input"]["pos_embedding"]
  np.testing.assert_array_equal(got[:, 0], 0.0)  # The class token gets no position embedding.
  np.testing.assert_array_equal(got[:, 1:], posemb)
  np.testing.assert_array_equal(loaded["cls"], weights["cls"])


def _linen(key):
  return (key.replace("MultiHeadDotProductAttention_1", "MultiHeadDotProductAttention_0")
          .replace("LayerNorm_2", "LayerNorm_1").replace("MlpBlock_3", "MlpBlock_0"))


def test_scanned_files_load_as_the_canonical_per_layer_tree(tmp_path):
  cfg = ol.tiny_config()
  scanned = models.VisionTransformer(num_classes=3, scan_layers=True, **cfg)
  params = _random_params(scanned)
  np.savez(tmp_path / "scan.npz", **ol.flatten(params))
  loaded = checkpoint.load(str(tmp_path / "scan.npz"))
  assert "encoderblock" not in loaded["Transformer"]
  stacked = params["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"]
  for i in range(stacked.shape[0]):
    np.testing.assert_array_equal(
        loaded["Transformer"][f"encoderblock_{i}"]["LayerNorm_0"]["scale"], stacked[i])
  per_layer = models.VisionTransformer(num_classes=3, **cfg)  # The default model applies it.
  np.testing.assert_allclose(_logits(per_layer, loaded), _logits(scanned, params), atol=1e-5)


def test_hybrid_legacy_group_norm_shapes_are_accepted(tmp_path):
  cfg = ol.tiny_config(resnet=dict(num_layers=(1,), width_factor=0.5), patches=dict(size=(1, 1)))
  model = models.VisionTransformer(num_classes=3, **cfg)
  params = _random_params(model)
  checkpoint.save(params, str(tmp_path / "hybrid.npz"))
  with np.load(tmp_path / "hybrid.npz") as f:
    files = {k: f[k] for k in f.files}
  assert {"conv_root/kernel", "gn_root/scale", "block1/unit1/conv_proj/kernel",
          "block1/unit1/gn_proj/bias", "block1/unit1/gn3/scale"} <= files.keys()
  legacy = {k: v.reshape(1, 1, 1, -1) if "/gn" in "/" + k and "conv" not in k else v
            for k, v in files.items()}
  assert legacy["gn_root/scale"].shape == (1, 1, 1, 32)
  np.savez(tmp_path / "legacy.npz", **legacy)
  loaded = checkpoint.load_pretrained(pretrained_path=str(tmp_path / "legacy.npz"),
                                      init_params=params, model_config=cfg)
  np.testing.assert_allclose(_logits(model, loaded), _logits(model, params), atol=1e-6)


def _to_timm(flat, layers):
  """Test-local mapping: our flat keys -> timm ViT state dict (fused qkv, OIHW, (out, in))."""
  d = flat["embedding/bias"].shape[0]
  out = {"cls_token": flat["cls"], "pos_embed": flat["Transformer/posembed_input/pos_embedding"],
         "patch_embed.proj.weight": flat["embedding/kernel"].transpose(3, 2, 0, 1),
         "patch_embed.proj.bias": flat["embedding/bias"],
         "norm.weight": flat["Transformer/encoder_norm/scale"],
         "norm.bias": flat["Transformer/encoder_norm/bias"],
         "head.weight": flat["head/kernel"].T, "head.bias": flat["head/bias"]}
  for i in range(layers):
    b, t = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
    att = b + "MultiHeadDotProductAttention_0/"
    out[t + "attn.qkv.weight"] = np.concatenate(
        [flat[att + n + "/kernel"].reshape(d, d).T for n in ("query", "key", "value")])
    out[t + "attn.qkv.bias"] = np.concatenate(
        [flat[att + n + "/bias"].reshape(d) for n in ("query", "key", "value")])
    out[t + "attn.proj.weight"] = flat[att + "out/kernel"].reshape(d, d).T
    out[t + "attn.proj.bias"] = flat[att + "out/bias"]
    for n, ln in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_1")):
      out[t + n + ".weight"], out[t + n + ".bias"] = flat[b + ln + "/scale"], flat[b + ln + "/bias"]
    for n, dense in (("fc1", "Dense_0"), ("fc2", "Dense_1")):
      out[t + f"mlp.{n}.weight"] = flat[b + f"MlpBlock_0/{dense}/kernel"].T
      out[t + f"mlp.{n}.bias"] = flat[b + f"MlpBlock_0/{dense}/bias"]
  return {k: np.ascontiguousarray(v) for k, v in out.items()}  # save_file ignores strides.


def test_timm_layout_is_canonicalised_exactly(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  model = models.VisionTransformer(num_classes=3, **ol.tiny_config())
  flat = ol.flatten(_random_params(model))
  save_file(_to_timm(flat, ol.LAYERS), str(tmp_path / "model.safetensors"))
  loaded = ol.flatten(checkpoint.load(str(tmp_path / "model.safetensors"), num_heads=ol.HEADS))
  assert loaded.keys() == flat.keys()
  for k in flat:
    np.testing.assert_allclose(loaded[k], flat[k], atol=1e-7, err_msg=k)
  with pytest.raises(ValueError, match="not divisible by num_heads=3"):
    checkpoint.load(str(tmp_path / "model.safetensors"), num_heads=3)


def _random_flat(model, x=X[:1], seed=0):
  """Random values for `model`'s flat tree (shapes from eval_shape: no init compile)."""
  shapes = meta.unbox(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False)))
  rng = np.random.default_rng(seed)
  return {k: rng.normal(0, 0.3, v.shape).astype(np.float32)
          for k, v in param_tree.flat_view(shapes["params"]).items()}


def test_from_ours_is_the_inverse_of_the_torch_layouts():
  """torch_layouts.from_ours (the timm / transformers exports): the test-local timm mapping
  above for a ViT, and to_ours(from_ours(tree)) == tree for every family and head."""
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  vit = _random_flat(models.VisionTransformer(num_classes=3, **ol.tiny_config()))
  expected = _to_timm(vit, ol.LAYERS)
  got = torch_layouts.from_ours(vit, "timm")
  assert got.keys() == expected.keys()
  for k in expected:
    np.testing.assert_array_equal(got[k], expected[k], err_msg=k)
  hybrid = dict(registry.get_model_config("R26+ViT-S_32").to_dict(), hidden_size=16,
                transformer=dict(num_layers=1, num_heads=2, mlp_dim=32, dropout_rate=0.0,
                                 attention_dropout_rate=0.0))
  map_vit = _random_flat(models.VisionTransformer(num_classes=3,
                                                  **ol.tiny_config(classifier="map")))
  cases = [
      (vit, ("timm", "transformers")), (map_vit, ("timm",)),
      (_random_flat(models.VisionTransformer(num_classes=3, **ol.tiny_config(classifier="gap"))),
       ("timm",)),
      (_random_flat(models.MlpMixer(num_classes=3, patches={"size": (4, 4)}, num_blocks=2,
                                    hidden_dim=8, tokens_mlp_dim=6, channels_mlp_dim=16)),
       ("timm",)),
      (_random_flat(models.VisionTransformer(num_classes=3, **hybrid),
                    x=np.zeros((1, 64, 64, 3), np.float32)), ("timm",)),
  ]
  for flat, layouts in cases:
    for layout in layouts:
      state = torch_layouts.from_ours(flat, layout)
      back = torch_layouts.to_ours(state, num_heads=None if "stem/kernel" in flat else 2,
                                   source="test")
      assert back.keys() == flat.keys(), (layout, set(back) ^ set(flat))
      for k in flat:
        np.testing.assert_array_equal(back[k], flat[k], err_msg=f"{layout} {k}")
  with pytest.raises(ValueError, match="no transformers name for .*MAPHead_0"):
    torch_layouts.from_ours(map_vit, "transformers")


def test_timm_extra_modules_are_a_clear_error(tmp_path):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  state = {"patch_embed.proj.weight": np.zeros((8, 3, 2, 2), np.float32),
           "patch_embed.proj.bias": np.zeros(8, np.float32),
           "fc_norm.weight": np.ones(8, np.float32)}
  save_file(state, str(tmp_path / "model.safetensors"))
  with pytest.raises(ValueError, match="unsupported keys .*fc_norm.weight"):
    checkpoint.load(str(tmp_path / "model.safetensors"), num_heads=2)


def test_bfloat16_safetensors_are_read_as_float32(tmp_path):
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  flat = ol.flatten(_random_params(models.VisionTransformer(num_classes=3, **ol.tiny_config())))
  timm = {k: v.astype(ml_dtypes.bfloat16) for k, v in _to_timm(flat, ol.LAYERS).items()}
  try:
    save_file(timm, str(tmp_path / "bf16.safetensors"))
  except Exception as e:  # pylint: disable=broad-except
    pytest.skip(f"this safetensors cannot write bfloat16 from numpy: {e}")
  loaded = ol.flatten(checkpoint.load(str(tmp_path / "bf16.safetensors"), num_heads=ol.HEADS))
  np.testing.assert_array_equal(loaded["cls"], flat["cls"].astype(ml_dtypes.bfloat16)
                                .astype(np.float32))
  assert loaded["embedding/kernel"].dtype == np.float32


@pytest.mark.parametrize("width,heads", [(192, 3), (384, 6), (768, 12), (1024, 16), (1280, 16),
                                         (512, 8)])
def test_num_heads_heuristic(width, heads):
  assert torch_layouts.guess_num_heads(width) == heads


def test_num_heads_heuristic_refuses_odd_widths():
  with pytest.raises(ValueError, match="pass num_heads"):
    torch_layouts.guess_num_heads(100)


def test_remote_uris_go_through_checkpoint_sources(tmp_path, monkeypatch):
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  from vit_jax.checkpoint import sources  # pylint: disable=g-import-not-at-top
  flat = ol.flatten(_random_params(models.VisionTransformer(num_classes=3, **ol.tiny_config())))
  local = tmp_path / "blob"
  local.mkdir()
  save_file(_to_timm(flat, ol.LAYERS), str(local / "model.safetensors"))
  np.savez(tmp_path / "official.npz", **ol.random_official_weights())
  calls = []

  def fake_fetch(uri, *, cache_dir=None, sha256=None, progress=True):
    del progress
    calls.append((uri, cache_dir, sha256))
    return str(tmp_path / "official.npz") if uri.endswith(".npz") else str(
        local / "model.safetensors")
  monkeypatch.setattr(sources, "fetch", fake_fetch)
  # Width 16 has no published head count: num_heads must come from the repo's config.json.
  monkeypatch.setattr(sources, "fetch_hf_config",
                      lambda uri, cache_dir=None: {"num_attention_heads": ol.HEADS})
  loaded = ol.flatten(checkpoint.load("hf://org/tiny-vit", cache_dir=str(tmp_path / "cache")))
  for k in flat:
    np.testing.assert_allclose(loaded[k], flat[k], atol=1e-7, err_msg=k)
  assert "cls" in checkpoint.load("gs://vit_models/imagenet21k/ViT-B_16.npz", sha256="ab")
  assert calls == [("hf://org/tiny-vit", str(tmp_path / "cache"), None),
                   ("gs://vit_models/imagenet21k/ViT-B_16.npz", None, "ab")]
