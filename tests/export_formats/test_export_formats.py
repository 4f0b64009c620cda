"""Tests for the export formats (vit_jax/export_formats/, `python -m vit_jax.export --format=...`).

Each format is read back by its own consumer — timm, transformers, jax.export in a process
without vit_jax, TensorFlow — and must give our Flax logits. Tiny random models (tests/
official_layout.py sizes), plus one tiny real run for the CLI, results.json and the model card.
torch / timm / transformers (requirements-interop.txt) and TensorFlow tests are skipped when
those are absent.
"""
import importlib
import importlib.util
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
from flax.linen import meta

from tests import official_layout as ol
from vit_jax import exits, param_tree
from vit_jax.export_formats import (
  common,
  hub,
  model_card,
  npz,
  serving,
  timm as timm_format,
  transformers as hf_format,
  writers,
)
from vit_jax.models import registry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ATOL = 1e-4
X = np.random.default_rng(3).uniform(-1, 1, (3, ol.IMAGE, ol.IMAGE, 3)).astype(np.float32)
NAMES = ["zero", "one", "two", "three", "four"]


def _arch(fields, num_classes=ol.CLASSES, resolution=ol.IMAGE, pp=None, class_names=NAMES,
          dataset="digits"):
  return {"format": npz.ARCHITECTURE_FORMAT, "model_name": fields.get("model_name", "tiny"),
          "model": fields, "num_classes": num_classes, "class_names": list(class_names),
          "resolution": resolution, "dataset": dataset, "step": None, "workdir": None,
          "pp": pp or {"eval": "resize", "crop": resolution, "resize": None, "crop_pct": None}}


def _source(fields, seed=0, **kw):
  """(Source with random non-zero params, the Flax model, images at its resolution)."""
  arch = _arch(dict(fields), **kw)
  model = npz.model_from_architecture(arch)
  r = arch["resolution"]
  x = np.random.default_rng(seed + 1).uniform(-1, 1, (3, r, r, 3)).astype(np.float32)
  shapes = meta.unbox(jax.eval_shape(
      lambda x: model.init(jax.random.PRNGKey(0), x, train=False), x[:1])["params"])
  rng = np.random.default_rng(seed)  # Random values (norm scales near 1): no init compile.
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: (rng.normal(0, 0.3, p.shape) + (path[-1].key == "scale")).astype(
          np.float32), shapes)
  return common.Source(params, arch), model, x


def _logits(model, source, x):
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(
      source.params, x))


def _tiny(**overrides):
  return ol.tiny_config(**overrides).to_dict()


def _hybrid():
  """R+ViT-Ti/16's root (no ResNet stages, 8x8 patches) under a width-16, 1-layer encoder."""
  c = registry.get_model_config("R+ViT-Ti_16").to_dict()
  c.update(hidden_size=16, transformer=dict(c["transformer"], num_layers=1, num_heads=2,
                                            mlp_dim=32))
  return c


def _mixer_s32(approximate_gelu=False):
  """timm's mixer_s32_224 structure (width 512, 8 blocks), used at 64 px: 4 tokens."""
  c = registry.mixer(32, 512, 8, 256, 2048).to_dict()
  c.update(model_name="Mixer-S_32", approximate_gelu=approximate_gelu)
  return c


# ---------------------------------------------------------------- torch consumers ----------


@pytest.fixture(scope="module")
def timm():
  pytest.importorskip("torch")
  if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed (pip install --no-deps timm==1.0.31)")
  try:
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except Exception:  # pylint: disable=broad-except  # timm's import-time use only (see there).
    from tests.checkpoint.test_interop_hub import _TorchvisionStub  # pylint: disable=g-import-not-at-top
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
    sys.meta_path.insert(0, _TorchvisionStub())
  import timm as timm_lib  # pylint: disable=g-import-not-at-top
  return timm_lib


def _torch_logits(model, x):
  import torch  # pylint: disable=g-import-not-at-top
  model.eval()
  with torch.no_grad():
    out = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  return getattr(out, "logits", out).numpy()


@pytest.mark.parametrize("kind", ["token", "gap", "map", "hybrid", "mixer"])
def test_timm_loads_the_export_with_our_logits(timm, tmp_path, kind):
  fields = {"token": _tiny(), "gap": _tiny(classifier="gap"), "map": _tiny(classifier="map"),
            "hybrid": _hybrid(), "mixer": _mixer_s32()}[kind]
  resolution = 64 if kind in ("hybrid", "mixer") else ol.IMAGE
  source, model, x = _source(fields, resolution=resolution)
  out = tmp_path / "timm"
  written = timm_format.write(source, str(out))
  assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors"]
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["num_classes"] == ol.CLASSES and cfg["label_names"] == NAMES
  pcfg = cfg["pretrained_cfg"]
  assert pcfg["input_size"] == [3, resolution, resolution]
  assert pcfg["mean"] == pcfg["std"] == [0.5, 0.5, 0.5]
  assert (pcfg["crop_pct"], pcfg["crop_mode"], pcfg["interpolation"]) == (1.0, "squash",
                                                                          "bilinear")
  ours = _logits(model, source, x)
  # timm's Hub loader path: config.json's architecture + model_args, weights strictly loaded.
  loaded = timm.create_model(f"local-dir:{out}", pretrained=True)
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
  assert set(loaded.state_dict()) == set(st.load_file(str(out / "model.safetensors")))
  np.testing.assert_allclose(_torch_logits(loaded, x), ours, atol=ATOL)
  # The explicit form: the registered name, the file, the classes and model_args by hand.
  explicit = timm.create_model(
      cfg["architecture"], pretrained=True, num_classes=ol.CLASSES,
      pretrained_cfg_overlay=dict(file=str(out / "model.safetensors"), num_classes=ol.CLASSES),
      **cfg.get("model_args", {}))
  np.testing.assert_allclose(_torch_logits(explicit, x), ours, atol=ATOL)
  if kind == "mixer":  # A registered name fits exactly: no structural model_args, no note.
    assert cfg["architecture"] == "mixer_s32_224" and set(cfg["model_args"]) == {"img_size"}
    assert not written.notes
  else:
    assert cfg["model_args"]["act_layer"] == "gelu_tanh" and written.notes


def test_timm_names_are_registered_and_exact_architectures_get_them(timm):
  import torch  # pylint: disable=g-import-not-at-top

  from vit_jax.checkpoint import torch_layouts  # pylint: disable=g-import-not-at-top
  for name in timm_format.registered_names():
    assert timm.is_model(name), name
  expected = {("ViT-B_16", 224): "vit_base_patch16_224", ("ViT-B_16", 384): "vit_base_patch16_384",
              ("ViT-L_32", 384): "vit_large_patch32_384", ("ViT-H_14", 224): "vit_huge_patch14_224",
              ("R50+ViT-B_16", 384): "vit_base_r50_s16_384",
              ("R26+ViT-S_32", 224): "vit_small_r26_s32_224",
              ("R+ViT-Ti_16", 224): "vit_tiny_r_s16_p8_224", ("Mixer-B_16", 224): "mixer_b16_224",
              ("ViT-Ti_16", 224): "vit_tiny_patch16_224"}
  for (name, res), timm_name in expected.items():
    arch = _arch(registry.get_model_config(name).to_dict(), resolution=res)
    got, args, notes = timm_format.architecture(common.Source({}, arch))
    assert got == timm_name, (name, got)
    assert set(args) <= {"act_layer"} and all("no registered" not in n for n in notes), args
  # Exact names hold our full-size trees: same keys and shapes as timm's own module.
  for name, timm_name in (("ViT-Ti_16", "vit_tiny_patch16_224"),
                          ("R+ViT-Ti_16", "vit_tiny_r_s16_p8_224")):
    model = registry.create_model(name, 10)
    shapes = jax.eval_shape(lambda m=model: m.init(jax.random.PRNGKey(0),
                                                   np.zeros((1, 224, 224, 3), np.float32),
                                                   train=False))["params"]
    flat = {k: np.zeros(v.shape, np.float32)
            for k, v in param_tree.flat_view(meta.unbox(shapes)).items()}
    state = torch_layouts.from_ours(flat, "timm")
    with torch.device("meta"):
      reference = timm.create_model(timm_name, num_classes=10)
    assert {k: tuple(v.shape) for k, v in reference.state_dict().items()} == \
        {k: v.shape for k, v in state.items()}, name


def _deit_tiny():
  """A width-32, 2-block ViT with DeiT's distillation token on 32 px images (8x8 patches)."""
  return dict(_tiny(patches=dict(size=(8, 8)), hidden_size=32), distilled=True,
              transformer=dict(mlp_dim=64, num_heads=2, num_layers=2, attention_dropout_rate=0.0,
                               dropout_rate=0.0))


def _torch_train_heads(model, x):
  """timm's two heads' logits: VisionTransformerDistilled in distilled training mode."""
  import torch  # pylint: disable=g-import-not-at-top
  model.set_distilled_training(True)
  model.train()
  with torch.no_grad():
    out = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  model.set_distilled_training(False)
  return tuple(o.numpy() for o in out)


def _our_train_heads(model, params, x):
  return tuple(np.asarray(o) for o in jax.jit(lambda p, x: model.apply(
      {"params": p}, x, train=True, rngs={"dropout": jax.random.PRNGKey(0)}))(params, x))


def test_timm_loads_a_distilled_export_with_both_heads(timm, tmp_path):
  """timm's VisionTransformerDistilled (deit_*_distilled) loads the export strictly: its eval
  logits are ours (the mean of the heads) and its two training heads are our two heads."""
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top
  source, model, x = _source(_deit_tiny(), resolution=32)
  out = tmp_path / "deit"
  timm_format.write(source, str(out))
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["architecture"] == "deit_tiny_distilled_patch16_224"
  assert cfg["global_pool"] == "token" and cfg["pretrained_cfg"]["classifier"] == ["head",
                                                                                  "head_dist"]
  ours, heads = _logits(model, source, x), _our_train_heads(model, source.params, x)
  loaded = timm.create_model(f"local-dir:{out}", pretrained=True)
  assert type(loaded).__name__ == "VisionTransformerDistilled"
  np.testing.assert_allclose(_torch_logits(loaded, x), ours, atol=1e-5)
  # The architecture by hand, the state dict strictly: the same logits and heads.
  import torch  # pylint: disable=g-import-not-at-top
  reference = timm.create_model(cfg["architecture"], pretrained=False, num_classes=ol.CLASSES,
                                **cfg["model_args"])
  state = {k: torch.from_numpy(v) for k, v in st.load_file(str(out / "model.safetensors")).items()}
  reference.load_state_dict(state, strict=True)
  assert reference.num_prefix_tokens == 2
  np.testing.assert_allclose(_torch_logits(reference, x), ours, atol=1e-5)
  for got, want in zip(_torch_train_heads(reference, x), heads):
    np.testing.assert_allclose(got, want, atol=1e-5)
  np.testing.assert_allclose((heads[0] + heads[1]) / 2, ours, atol=1e-6)


def test_timm_distilled_state_dict_loads_into_ours(timm, tmp_path):
  """timm's own (randomly initialised) deit_*_distilled weights through checkpoint.load give
  timm's logits and heads in our distilled ViT."""
  import torch  # pylint: disable=g-import-not-at-top
  from safetensors import numpy as st  # pylint: disable=g-import-not-at-top

  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  reference = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32,
                                patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                                num_classes=ol.CLASSES, act_layer="gelu_tanh")
  with torch.no_grad():  # timm zero-inits neither head nor token; biases and LN get noise too.
    for p in reference.parameters():
      p.add_(0.1 * torch.randn_like(p))
  path = tmp_path / "deit.safetensors"
  st.save_file({k: v.numpy() for k, v in reference.state_dict().items()}, str(path))
  params = checkpoint.load(str(path), num_heads=2)
  assert params["dist_token"].shape == (1, 1, 32) and "head_dist" in params
  model = registry.model_from_fields(_deit_tiny(), ol.CLASSES)
  x = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(_logits(model, common.Source(params, {}), x),
                             _torch_logits(reference, x), atol=1e-5)
  for got, want in zip(_our_train_heads(model, params, x), _torch_train_heads(reference, x)):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_timm_distilled_names_and_full_size_trees(timm):
  import torch  # pylint: disable=g-import-not-at-top

  from vit_jax.checkpoint import torch_layouts  # pylint: disable=g-import-not-at-top
  for (name, res), timm_name in {
      ("ViT-Ti_16", 224): "deit_tiny_distilled_patch16_224",
      ("ViT-S_16", 224): "deit_small_distilled_patch16_224",
      ("ViT-B_16", 224): "deit_base_distilled_patch16_224",
      ("ViT-B_16", 384): "deit_base_distilled_patch16_384"}.items():
    fields = dict(registry.get_model_config(name).to_dict(), distilled=True)
    got, args, notes = timm_format.architecture(common.Source({}, _arch(fields, resolution=res)))
    assert got == timm_name and set(args) <= {"act_layer"}, (name, got, args)
    assert all("no registered" not in n for n in notes)
  # Our full-size DeiT-S tree has exactly the keys and shapes of timm's own module.
  model = registry.create_model("ViT-S_16", 10, distilled=True)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             np.zeros((1, 224, 224, 3), np.float32),
                                             train=False))["params"]
  flat = {k: np.zeros(v.shape, np.float32)
          for k, v in param_tree.flat_view(meta.unbox(shapes)).items()}
  with torch.device("meta"):
    reference = timm.create_model("deit_small_distilled_patch16_224", num_classes=10)
  assert {k: tuple(v.shape) for k, v in reference.state_dict().items()} == \
      {k: v.shape for k, v in torch_layouts.from_ours(flat, "timm").items()}


def test_transformers_loads_the_export_with_our_logits(tmp_path):
  transformers = pytest.importorskip("transformers")
  pytest.importorskip("torch")
  source, model, x = _source(_tiny())
  out = tmp_path / "hf"
  hf_format.write(source, str(out))
  assert sorted(os.listdir(out)) == ["README.md", "config.json", "model.safetensors",
                                     "preprocessor_config.json"]
  hf, info = transformers.ViTForImageClassification.from_pretrained(out, output_loading_info=True)
  assert not any(info.values()), info  # No missing / unexpected / mismatched keys.
  assert hf.config.id2label == dict(enumerate(NAMES)) and hf.config.layer_norm_eps == 1e-6
  np.testing.assert_allclose(_torch_logits(hf, x), _logits(model, source, x), atol=ATOL)
  # The image processor does our eval preprocessing (pp.eval='resize': bilinear squash).
  import io  # pylint: disable=g-import-not-at-top

  from PIL import Image  # pylint: disable=g-import-not-at-top

  from vit_jax.configs import base as config_common  # pylint: disable=g-import-not-at-top
  from vit_jax.datasets import image_ops, preprocess  # pylint: disable=g-import-not-at-top
  image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 30, 3), np.uint8))
  png = io.BytesIO()
  image.save(png, format="PNG")
  pp = config_common.defaults().pp
  pp.crop = ol.IMAGE
  ours = image_ops.to_float(preprocess.eval_image(png.getvalue(),
                                                   preprocess.options_from_config(pp)))
  processor = transformers.AutoImageProcessor.from_pretrained(out)
  theirs = processor(images=image, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
  np.testing.assert_allclose(theirs, ours, atol=1e-5)


# ---------------------------------------------------------------- refusals -----------------


@pytest.mark.parametrize("fields,fmt,says", [
    (_tiny(classifier="gap"), "transformers", "--format=timm"),
    (_hybrid(), "transformers", "--format=timm"),
    (_mixer_s32(), "transformers", "--format=timm"),
    (_tiny(representation_size=8), "transformers", "--format=stablehlo"),
    (_tiny(representation_size=8), "timm", "pre_logits"),
    (_tiny(classifier="unpooled"), "timm", "classifier 'unpooled'"),
    (registry.mixer(4, 8, 2, 6, 16).to_dict(), "timm", "mixer_{s,b,l}{16,32}_224"),
    (_tiny(distilled=True), "transformers", "a DeiT distillation token"),
    (dict(_hybrid(), distilled=True), "timm", "distilled DeiT has no ResNet root"),
])
def test_a_format_refuses_what_it_cannot_represent(tmp_path, fields, fmt, says):
  source = common.Source({}, _arch(fields))
  module = {"timm": timm_format, "transformers": hf_format}[fmt]
  with pytest.raises(exits.UserError, match="cannot represent") as e:
    module.write(source, str(tmp_path / "out"))
  assert says in str(e.value) and exits.status_for(e.value) == exits.BAD_INPUT
  assert "\n" not in exits.one_line(e.value) and not (tmp_path / "out").exists()


def test_timm_notes_the_mixer_activation_and_preprocessing_modes():
  source = common.Source({}, _arch(_mixer_s32(approximate_gelu=True), resolution=64))
  _, args, notes = timm_format.architecture(source)
  assert "act_layer" not in args and any("gelu_tanh" in n for n in notes)
  for pp, crop_pct, mode, resize in (
      ({"eval": "resize_small", "crop": 224, "resize": None, "crop_pct": 0.875}, 0.875, "center",
       256),
      ({"eval": "resize_crop", "crop": 384, "resize": None, "crop_pct": None}, None, "squash",
       439)):
    arch = _arch(_tiny(), pp=pp, resolution=pp["crop"])
    cfg = timm_format.config(common.Source({}, arch))[0]["pretrained_cfg"]
    assert cfg["crop_mode"] == mode and int(pp["crop"] / cfg["crop_pct"]) == resize
    assert crop_pct is None or cfg["crop_pct"] == crop_pct
    processor = hf_format.preprocessor_config(common.Source({}, arch))
    size = processor["size"]
    assert size.get("shortest_edge", size.get("height")) == resize
    assert processor["crop_size"] == {"height": pp["crop"], "width": pp["crop"]}


# ---------------------------------------------------------------- model card, hub ----------


def _front_matter(text):
  yaml = pytest.importorskip("yaml")
  assert text.startswith("---\n")
  return yaml.safe_load(text.split("---\n")[1])


def test_model_card_front_matter_with_the_runs_results(tmp_path):
  from vit_jax.configs import base as config_common  # pylint: disable=g-import-not-at-top
  (tmp_path / "results.json").write_text(json.dumps({"evals": [
      {"step": 2, "accuracy": 0.1},
      {"step": 7, "accuracy": 0.5, "top5_accuracy": 0.9, "loss": 1.25, "examples": 10,
       "ema/accuracy": 0.625, "val/top1": 0.75}]}))
  config = config_common.defaults()
  config.dataset, config.eval_split = "digits", "test"
  config.evals = ml_collections.ConfigDict({"val": {"type": "classification",
                                                    "split": "test[:50%]"}})
  source = common.Source({}, _arch(_tiny()), config, 7, str(tmp_path))
  load = hf_format.load_code("org/tiny")
  text = model_card.card(source, library="transformers", load=load, repo_id="org/tiny")
  meta_ = _front_matter(text)
  assert meta_["library_name"] == "transformers" and "license" not in meta_
  assert {"image-classification", "vision-transformer"} <= set(meta_["tags"])
  assert meta_["datasets"] == ["digits"]
  [entry] = meta_["model-index"]
  assert entry["name"] == "tiny"
  [result] = entry["results"]  # The named evaluator; the default one is not in config.evals.
  assert result["dataset"] == {"name": "digits", "type": "digits", "split": "test[:50%]"}
  assert result["metrics"] == [{"type": "accuracy", "name": "Top-1 accuracy", "value": 0.75}]
  assert load in text and "resized to 16x16" in text and "license:" in text
  # Without config.evals the default evaluator's names; EMA params get the EMA results.
  config.evals = ml_collections.ConfigDict()
  ema = common.Source({}, _arch(_tiny()), config, 7, str(tmp_path), "ema")
  [result] = _front_matter(model_card.card(ema, library="timm", load=""))["model-index"][0][
      "results"]
  assert result["metrics"] == [{"type": "accuracy", "name": "Top-1 accuracy", "value": 0.625}]
  raw = common.Source({}, _arch(_tiny()), config, 7, str(tmp_path))
  metrics = _front_matter(model_card.card(raw, library="timm", load=""))["model-index"][0][
      "results"][0]["metrics"]
  assert [m["value"] for m in metrics] == [0.5, 0.9]
  # No results at the exported step: no model-index.
  assert "model-index" not in _front_matter(model_card.card(
      common.Source({}, _arch(_tiny()), config, 5, str(tmp_path)), library="timm", load=""))


class _FakeApi:
  calls = []
  error = None

  def create_repo(self, repo_id, **kw):
    self.calls.append(("create_repo", repo_id, kw))
    if self.error is not None:
      raise self.error  # pylint: disable=raising-bad-type
    return f"https://huggingface.co/{repo_id}"

  def upload_folder(self, **kw):
    self.calls.append(("upload_folder", kw))


def test_push_to_hub_uploads_the_folder_and_reports_failures(tmp_path, monkeypatch):
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  from huggingface_hub import errors  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "export"
  folder.mkdir()
  (folder / "model.safetensors").write_bytes(b"x")
  monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
  _FakeApi.calls, _FakeApi.error = [], None
  assert hub.push(str(folder), "org/name") == "https://huggingface.co/org/name"
  assert _FakeApi.calls[0] == ("create_repo", "org/name", {"exist_ok": True, "private": False})
  assert _FakeApi.calls[1][1]["folder_path"] == str(folder)
  assert _FakeApi.calls[1][1]["repo_id"] == "org/name"
  request = errors.HTTPError.__module__  # httpx2, the Hub client's HTTP library.
  httpx = importlib.import_module(request.split(".")[0])
  unauthorised = errors.HfHubHTTPError("401 Client Error: Unauthorized", response=httpx.Response(
      401, request=httpx.Request("POST", "https://huggingface.co/api/repos/create")))
  for error, says in ((unauthorised, "hf auth login"),
                      (errors.OfflineModeIsEnabled("HF_HUB_OFFLINE=1"), "network"),
                      (ConnectionError("[Errno 111] Connection refused"), "network")):
    _FakeApi.error = error
    with pytest.raises(hub.HubPushError) as e:
      hub.push(str(folder), "org/name")
    line = exits.one_line(e.value)
    assert "\n" not in line and says in line and "is kept" in line and "hf upload" in line
    assert (folder / "model.safetensors").read_bytes() == b"x"
  for bad in ("name-only", "a/b c", "x/y..z"):
    with pytest.raises(ValueError, match="push_to_hub"):
      hub.check_repo_id(bad)


# ---------------------------------------------------------------- serving ------------------


def test_stablehlo_runs_for_any_batch_without_vit_jax(tmp_path):
  source, model, x = _source(_tiny())
  written = serving.write_stablehlo(source, str(tmp_path / "hlo"), platforms=("cpu", "cuda"))
  sig = json.loads((tmp_path / "hlo" / "signature.json").read_text())
  assert sig["inputs"][0]["shape"] == ["b", ol.IMAGE, ol.IMAGE, 3]
  assert sig["inputs"][0]["range"] == [-1.0, 1.0] and sig["outputs"][0]["shape"] == ["b", 5]
  assert sig["class_names"] == NAMES and sig["platforms"] == ["cpu", "cuda"]
  np.save(tmp_path / "x.npy", x)
  code = ("import sys, numpy as np, jax\n"
          f"e = jax.export.deserialize(open({written.path + '/model.stablehlo'!r}, 'rb').read())\n"
          f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
          f"np.savez({str(tmp_path / 'out.npz')!r}, one=e.call(x[:1]), three=e.call(x))\n"
          "assert not [m for m in sys.modules if m.startswith('vit_jax')]\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  ours = _logits(model, source, x)
  with np.load(tmp_path / "out.npz") as out:
    np.testing.assert_allclose(out["one"], ours[:1], atol=1e-5)
    np.testing.assert_allclose(out["three"], ours, atol=1e-5)


@pytest.mark.parametrize("input_kind", ["float", "uint8"])
def test_savedmodel_serving_default_gives_our_logits(tmp_path, input_kind):
  tf = pytest.importorskip("tensorflow")
  from vit_jax.datasets import image_ops  # pylint: disable=g-import-not-at-top
  source, model, _ = _source(_hybrid(), resolution=32)
  rng = np.random.default_rng(4)
  images = rng.integers(0, 256, (3, 32, 32, 3), np.uint8)
  x = image_ops.to_float(images)
  serving.write_savedmodel(source, str(tmp_path / "sm"), input_kind=input_kind,
                           platforms=("cpu",))
  serve = tf.saved_model.load(str(tmp_path / "sm" / "1")).signatures["serving_default"]
  ours = _logits(model, source, x)
  for n in (1, 3):
    out = serve(images=tf.constant(images[:n] if input_kind == "uint8" else x[:n]))
    np.testing.assert_allclose(out["logits"].numpy(), ours[:n], atol=1e-5)
    np.testing.assert_allclose(out["probabilities"].numpy(), jax.nn.softmax(ours[:n]), atol=1e-6)
  sig = json.loads((tmp_path / "sm" / "1" / "vit_jax.json").read_text())
  assert sig["inputs"][0]["dtype"] == ("uint8" if input_kind == "uint8" else "float32")


# ---------------------------------------------------------------- a real run, the CLI -------


@pytest.fixture(scope="module")
def run_workdir(trained_workdir):
  """The session's trained tiny run (read only: every export goes to tmp_path)."""
  return trained_workdir


def test_formats_of_a_real_run_atomic_and_not_overwritten(run_workdir, tmp_path, monkeypatch):
  out = tmp_path / "timm"
  written = writers.export_files(str(run_workdir), str(out), fmt="timm")
  cfg = json.loads((out / "config.json").read_text())
  assert cfg["num_classes"] == 10 and len(cfg["label_names"]) == 10
  meta_ = _front_matter((out / "README.md").read_text())
  assert meta_["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
  assert "local-dir:" in written.load
  before = {p: (out / p).read_bytes() for p in written.files}
  with pytest.raises(FileExistsError, match="--overwrite"):
    writers.export_files(str(run_workdir), str(out), fmt="timm")
  assert {p: (out / p).read_bytes() for p in written.files} == before
  assert writers.export(str(run_workdir), str(out), overwrite=True, fmt="timm") == str(out)
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # No temp dirs left.
  # A failed push keeps the export and says what to do.
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
  _FakeApi.calls, _FakeApi.error = [], ConnectionError("no network")
  with pytest.raises(hub.HubPushError, match="is kept"):
    writers.export_files(str(run_workdir), str(tmp_path / "hf"), fmt="transformers",
                        push_to_hub="org/name")
  assert (tmp_path / "hf" / "model.safetensors").exists()


def test_cli_format_flag(run_workdir, tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
             JAX_PLATFORMS="cpu")
  cli = [sys.executable, "-m", "vit_jax.export", f"--workdir={run_workdir}"]
  proc = subprocess.run(cli + ["--format=onnx", f"--output={tmp_path}/x"], capture_output=True,
                        text=True, timeout=120, cwd=REPO, env=env)
  assert proc.returncode == exits.BAD_INPUT, proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines()[-1].startswith("error: --format='onnx' is unknown")
  assert not (tmp_path / "x").exists()
  proc = subprocess.run(cli + ["--format=stablehlo", f"--output={tmp_path}/hlo",
                               "--platforms=cpu"], capture_output=True, text=True, timeout=120,
                        cwd=REPO, env=env)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "model.stablehlo, signature.json" in proc.stdout and "Load it: jax.export" in proc.stdout
