"""Interop with independent implementations: transformers and timm (PyTorch, CPU) as references.

Checkpoints written by those libraries (safetensors, their own key layouts) must give
the same logits through our loader and model, and our vit_models exports must load
back into them. Needs `requirements-interop.txt` (torch CPU, transformers, timm);
skipped when they are absent. timm imports torchvision at import time only for
data/feature-extraction helpers; when torchvision is not installed (it does not
install beside the CPU torch wheel here), a test-only stub module stands in.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

import jax
import numpy as np
import pytest
from flax.linen import meta

from tests import official_layout as ol
from vit_jax import checkpoint, models
from vit_jax.checkpoint import torch_layouts

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

ATOL = 1e-4
X = np.random.default_rng(3).uniform(-1, 1, (2, ol.IMAGE, ol.IMAGE, 3)).astype(np.float32)


def _torch_logits(model, x=X):
  model.eval()
  with torch.no_grad():
    out = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  out = getattr(out, "logits", out)
  return (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()


def _randomize(model, seed=0):
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.3 + (1.0 if "norm" in name and
                                                           name.endswith("weight") else 0.0))
  return model


def _hf_vit(num_labels=ol.CLASSES, cls=None):
  config = transformers.ViTConfig(
      hidden_size=ol.WIDTH, num_hidden_layers=ol.LAYERS, num_attention_heads=ol.HEADS,
      intermediate_size=ol.MLP, image_size=ol.IMAGE, patch_size=ol.PATCH, num_labels=num_labels,
      hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, hidden_dropout_prob=0.0,
      attention_probs_dropout_prob=0.0)
  return _randomize((cls or transformers.ViTForImageClassification)(config))


def _ours(cfg=None, num_classes=ol.CLASSES, path=None, **kw):
  """(model, params): `path` loaded (the init gives names and shapes only: jax.eval_shape), or
  the model's init, compiled once (eager dispatch compiles every primitive on its own)."""
  model = models.VisionTransformer(num_classes=num_classes, **(cfg or ol.tiny_config()), **kw)
  init = lambda: model.init(jax.random.PRNGKey(0), X[:1], train=False)["params"]
  if path:
    return model, checkpoint.load_pretrained(pretrained_path=path, init_params=jax.eval_shape(init),
                                             model_config=cfg)
  return model, jax.device_get(meta.unbox(jax.jit(init)()))  # host arrays: noise adds on host


def _logits(model, params, x=X):
  """Our logits, model.apply compiled once."""
  return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x))


def test_transformers_snapshot_gives_same_logits(tmp_path):
  hf = _hf_vit()
  hf.save_pretrained(tmp_path / "snap")
  model, params = _ours(path=str(tmp_path / "snap"))
  ours = _logits(model, params)
  np.testing.assert_allclose(ours, _torch_logits(hf), atol=ATOL)
  # The in-memory (transformers 5) names, heads from config.json beside the file.
  state = {k: v.numpy() for k, v in hf.state_dict().items()}
  safetensors_numpy.save_file(state, str(tmp_path / "snap" / "model.safetensors"))
  loaded = checkpoint.load(str(tmp_path / "snap" / "model.safetensors"))
  np.testing.assert_allclose(_logits(model, loaded), ours, atol=1e-6)


def test_transformers_pooler_is_pre_logits(tmp_path):
  hf = _hf_vit(cls=transformers.ViTModel)
  hf.save_pretrained(tmp_path / "snap")
  model, params = _ours(ol.tiny_config(representation_size=ol.WIDTH), num_classes=None,
                        path=str(tmp_path / "snap"))
  np.testing.assert_allclose(_logits(model, params),
                             _torch_logits(hf), atol=ATOL)


def test_our_export_loads_into_transformers(tmp_path):
  model, params = _ours()
  params = jax.tree.map(lambda p: p + np.random.default_rng(5).normal(0, 0.3, p.shape), params)
  checkpoint.save(params, str(tmp_path / "ours.npz"))
  snapshot = tmp_path / "snapshot"  # A Hub-style snapshot, read by transformers itself.
  _hf_vit().config.save_pretrained(snapshot)
  # The .npz read back, in transformers' names by the product mapping (--format=transformers).
  flat = ol.flatten(checkpoint.load(str(tmp_path / "ours.npz")))
  safetensors_numpy.save_file(torch_layouts.from_ours(flat, "transformers"),
                              str(snapshot / "model.safetensors"))
  hf, info = transformers.ViTForImageClassification.from_pretrained(snapshot,
                                                                    output_loading_info=True)
  assert not any(info.values()), info  # No missing / unexpected / mismatched keys.
  np.testing.assert_allclose(_torch_logits(hf), _logits(model, params),
                             atol=ATOL)


# ---------------------------------------------------------------- timm ---------------------


class _AnyMeta(type):
  """Classes whose every attribute is another distinct stub class (enum-like members)."""

  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    children = cls.__dict__.get("_children")
    if children is None:
      children = {}
      type.__setattr__(cls, "_children", children)
    return children.setdefault(name, _AnyMeta(name, (_Any,), {}))


class _Any(metaclass=_AnyMeta):
  def __init__(self, *args, **kwargs):
    del args, kwargs


class _TorchvisionStub(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Satisfies timm's import-time `torchvision` imports; nothing in it is ever called here."""

  def find_spec(self, name, path, target=None):
    del path, target
    if name == "torchvision" or name.startswith("torchvision."):
      return importlib.machinery.ModuleSpec(name, self, is_package=True)
    return None

  def create_module(self, spec):
    module = types.ModuleType(spec.name)
    module.__path__ = []
    children = {}

    def getattr_(name):
      if name.startswith("__"):
        raise AttributeError(name)
      return children.setdefault(name, _AnyMeta(name, (_Any,), {}))
    module.__getattr__ = getattr_
    return module

  def exec_module(self, module):
    del module


@pytest.fixture(scope="module")
def timm():
  if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed (pip install --no-deps timm==1.0.31)")
  try:
    import torchvision  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except Exception:  # pylint: disable=broad-except
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]
    sys.meta_path.insert(0, _TorchvisionStub())
  import timm as timm_lib  # pylint: disable=g-import-not-at-top
  return timm_lib


def _timm_vit(timm, **kw):
  return _randomize(timm.create_model(
      "vit_tiny_patch16_224", pretrained=False, act_layer="gelu_tanh", img_size=ol.IMAGE,
      patch_size=ol.PATCH, embed_dim=ol.WIDTH, depth=ol.LAYERS, num_heads=ol.HEADS,
      mlp_ratio=ol.MLP / ol.WIDTH, num_classes=ol.CLASSES, **kw))


def _save_state_dict(model, path):
  safetensors_numpy.save_file({k: v.numpy() for k, v in model.state_dict().items()}, str(path))
  return str(path)


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_timm_vit_state_dict_gives_same_logits(timm, tmp_path, classifier):
  extra = {} if classifier == "token" else dict(class_token=False, global_pool="avg",
                                                fc_norm=False)
  reference = _timm_vit(timm, **extra)
  path = _save_state_dict(reference, tmp_path / "model.safetensors")
  model, params = _ours(ol.tiny_config(classifier=classifier), path=path)
  np.testing.assert_allclose(_logits(model, params),
                             _torch_logits(reference), atol=ATOL)


def test_timm_reads_our_export(timm, tmp_path):
  from timm.models import vision_transformer  # pylint: disable=g-import-not-at-top
  model, params = _ours()
  params = jax.tree.map(lambda p: p + np.random.default_rng(7).normal(0, 0.3, p.shape), params)
  checkpoint.save(params, str(tmp_path / "ours.npz"))
  reference = _timm_vit(timm)
  # timm's own reader of Google's .npz files.
  vision_transformer._load_weights(  # pylint: disable=protected-access
      reference, str(tmp_path / "ours.npz"))
  np.testing.assert_allclose(_torch_logits(reference),
                             _logits(model, params), atol=ATOL)


def test_timm_mixer_state_dict_gives_same_logits(timm, tmp_path):
  from timm.models.mlp_mixer import MlpMixer  # pylint: disable=g-import-not-at-top
  reference = _randomize(MlpMixer(num_classes=3, img_size=ol.IMAGE, patch_size=ol.PATCH,
                                  num_blocks=2, embed_dim=8, mlp_ratio=(0.75, 2.0),
                                  act_layer=timm.layers.get_act_layer("gelu_tanh")))
  path = _save_state_dict(reference, tmp_path / "mixer.safetensors")
  model = models.MlpMixer(num_classes=3, patches={"size": (ol.PATCH, ol.PATCH)}, num_blocks=2,
                          hidden_dim=8, tokens_mlp_dim=6,  # timm: tokens dim = ratio x width.
                          channels_mlp_dim=16)
  # Names and shapes only: every parameter comes from the file.
  init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), X[:1], train=False))["params"]
  params = checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=None)
  np.testing.assert_allclose(_logits(model, params),
                             _torch_logits(reference), atol=ATOL)


@pytest.mark.parametrize("timm_name,config_name,atol", [
    ("vit_tiny_r_s16_p8_224", "R+ViT-Ti_16", ATOL),
    # timm standardises conv weights with sqrt(var + 1e-8), Google (and we) with std + 1e-5:
    # through R26's 26 layers of random weights that moves logits of size ~2 by ~4e-4.
    # A wrong mapping moves them by O(1).
    ("vit_small_r26_s32_224", "R26+ViT-S_32", 2e-3)])
def test_timm_hybrid_state_dict_gives_same_logits(timm, tmp_path, timm_name, config_name, atol):
  from vit_jax.models.registry import MODEL_CONFIGS  # pylint: disable=g-import-not-at-top
  reference = timm.create_model(timm_name, pretrained=False, act_layer="gelu_tanh", img_size=64,
                                depth=1, num_classes=3)
  with torch.no_grad():  # Small weights keep the deep random ResNet in a sane range.
    gen = torch.Generator().manual_seed(0)
    for name, p in reference.named_parameters():
      p.copy_(torch.randn(p.shape, generator=gen) * 0.1 + (1.0 if "norm" in name and
                                                           name.endswith("weight") else 0.0))
  path = _save_state_dict(reference, tmp_path / "hybrid.safetensors")
  cfg = MODEL_CONFIGS[config_name].copy_and_resolve_references()
  cfg.transformer.num_layers = 1
  model = models.VisionTransformer(num_classes=3, **cfg)
  x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
  # Shapes only: load_pretrained validates against them; one compiled forward (op-by-op
  # dispatch of a ResNet stem costs tens of seconds on 2 cores).
  init = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[:1], train=False))["params"]
  params = checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=cfg)
  assert "block1" in params or not cfg.resnet.num_layers
  logits = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, x)
  np.testing.assert_allclose(logits, _torch_logits(reference, x), atol=atol)
