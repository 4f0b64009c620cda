"""--format=timm: a directory timm loads as a pretrained model (ViT, R+ViT hybrids, Mixer).

  DIR/model.safetensors  the weights in timm's state-dict layout (torch_layouts.from_ours)
  DIR/config.json        what timm's Hub loader reads (timm/models/_hub.py): architecture,
                         num_classes, num_features, global_pool, model_args, label_names,
                         pretrained_cfg (input_size, mean, std, crop_pct, crop_mode, ...)
  DIR/README.md          the model card (model_card.py)

`architecture` is the registered timm name with this structure and resolution
(vit_base_patch16_224, vit_small_r26_s32_384, mixer_b16_224, ...; a ViT with DeiT's
distillation token: deit_small_distilled_patch16_224, ..., timm's VisionTransformerDistilled,
whose eval logits are the mean of its two heads, as ours); what differs from that
name's own arguments goes into `model_args` (e.g. act_layer='gelu_tanh': our MLPs use the
tanh GELU, as Google's, and timm's default is the exact one), which timm.create_model applies
when loading 'local-dir:DIR' or 'hf-hub:org/name'. When no registered name has this
structure the nearest entrypoint is named, every structural argument is in model_args and
the export says so (`Written.notes`). Refused (one error naming the alternatives): a
pre_logits layer (timm's ViT has none), 'first' and unpooled classifiers, sincos posemb,
the ViT-22B block options, ResNet roots timm does not register, and Mixers whose width,
depth or patch size no timm name has (timm's Mixer entrypoints fix them).
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

from vit_jax.export_formats import common

# timm 1.0 entrypoints for Google's architectures (facts from timm's vision_transformer.py,
# vision_transformer_hybrid.py, mlp_mixer.py): name -> the arguments that entrypoint fixes.
_VIT_SIZES = {"tiny": (192, 12, 3, 4.0), "small": (384, 12, 6, 4.0), "base": (768, 12, 12, 4.0),
              "large": (1024, 24, 16, 4.0), "huge": (1280, 32, 16, 4.0),
              "giant": (1408, 40, 16, 48 / 11), "gigantic": (1664, 48, 16, 64 / 13)}
_VIT_NAMES = {("tiny", 16): (224, 384), ("small", 32): (224, 384), ("small", 16): (224, 384),
              ("small", 8): (224,), ("base", 32): (224, 384), ("base", 16): (224, 384),
              ("base", 8): (224,), ("large", 32): (224, 384), ("large", 16): (224, 384),
              ("large", 14): (224,), ("huge", 14): (224,), ("giant", 14): (224,),
              ("gigantic", 14): (224,)}
# Hybrids: the ResNet stages are fixed by the name (timm builds the backbone there).
_HYBRIDS = {(): [("vit_tiny_r_s16_p8", 192, 3, 8, (224, 384))],
            (2, 2, 2, 2): [("vit_small_r26_s32", 384, 6, 1, (224, 384)),
                           ("vit_base_r26_s32", 768, 12, 1, (224,))],
            (3, 4, 9): [("vit_base_r50_s16", 768, 12, 1, (224, 384))],
            (3, 4, 6, 3): [("vit_large_r50_s32", 1024, 16, 1, (224, 384))]}
_HYBRID_DEPTH = {"vit_large_r50_s32": 24}  # The others have 12 blocks.
_MIXERS = {(512, 8): "s", (768, 12): "b", (1024, 24): "l"}  # (width, blocks); patch 16 / 32
# DeiT with the distillation token (timm's deit.py): deit_{size}_distilled_patch16_{res}.
_DEIT_NAMES = {"tiny": (224,), "small": (224,), "base": (224, 384)}
_GLOBAL_POOL = {"token": "token", "gap": "avg", "map": "map"}


def registered_names() -> list[str]:
  """Every timm name the table above uses (tests check that timm registers each)."""
  names = [f"vit_{size}_patch{patch}_{res}" for (size, patch), r in _VIT_NAMES.items()
           for res in r]
  names += [f"{n}_{res}" for entries in _HYBRIDS.values() for n, _, _, _, rs in entries
            for res in rs]
  names += [f"mixer_{s}{p}_224" for s in _MIXERS.values() for p in (16, 32)]
  names += [f"deit_{s}_distilled_patch16_{res}" for s, r in _DEIT_NAMES.items() for res in r]
  return names


def _ratio(hidden: int, width: int) -> float:
  """mlp_ratio with int(width * ratio) == hidden (timm's rounding of the MLP width)."""
  ratio = hidden / width
  return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def _unrepresentable(source: common.Source) -> list[str]:
  f = source.fields
  if source.is_mixer:
    reasons = []
    if (int(f["hidden_dim"]), int(f["num_blocks"])) not in _MIXERS or \
        common.patch_size(f) not in ((16, 16), (32, 32)):
      reasons.append(f"timm's Mixer entrypoints fix width, depth and patch size, and none has "
                     f"width {f['hidden_dim']}, {f['num_blocks']} blocks, patch "
                     f"{common.patch_size(f)} (timm: mixer_{{s,b,l}}{{16,32}}_224)")
    return reasons
  reasons = []
  if f.get("posemb_grid") is not None:
    reasons.append("a FlexiViT position embedding of a fixed grid (posemb_grid), resized per "
                   "patch size: timm's pos_embed has the export's grid")
  classifier = f.get("classifier", "token")
  if classifier not in _GLOBAL_POOL:
    reasons.append(f"classifier {classifier!r} (timm pools by class token, mean or MAP head)")
  if f.get("representation_size"):
    reasons.append("a pre_logits (representation_size) layer: timm's VisionTransformer has none")
  if f.get("posemb", "learn") != "learn":
    reasons.append(f"posemb {f.get('posemb')!r} (timm's ViT learns its position embeddings)")
  for name in ("parallel_block", "qk_norm"):
    if f.get(name):
      reasons.append(f"{name}=True (the ViT-22B block)")
  if f.get("use_bias") is False:
    reasons.append("use_bias=False (timm's LayerNorms have biases)")
  resnet = f.get("resnet")
  if resnet:
    layers = tuple(resnet.get("num_layers") or ())
    if layers not in _HYBRIDS:
      reasons.append(f"ResNet stages {layers} (timm registers R+ViT roots with stages "
                     f"{sorted(_HYBRIDS, key=len)} only)")
    if float(resnet.get("width_factor") or 1) != 1:
      reasons.append(f"ResNet width_factor {resnet.get('width_factor')} (timm's roots have 1)")
    if f.get("distilled"):
      reasons.append("a DeiT distillation token on an R+ViT hybrid (timm's distilled DeiT "
                     "has no ResNet root)")
  return reasons


def check(source: common.Source) -> None:
  """One UserError (nothing written) when timm cannot represent `source`'s architecture."""
  reasons = _unrepresentable(source)
  if reasons:
    raise common.refusal("timm", reasons, "--format=stablehlo, --format=savedmodel or the "
                         "default --format=npz")


def representable(source: common.Source) -> bool:
  return not _unrepresentable(source)


def _vit_choice(source: common.Source) -> tuple[str, dict[str, Any], dict[str, Any]]:
  """(timm name, that name's fixed arguments, our full arguments) for a ViT or hybrid."""
  f, res = source.fields, source.resolution
  t = f["transformer"]
  width, depth, heads = int(f["hidden_size"]), int(t["num_layers"]), int(t["num_heads"])
  patch = common.patch_size(f)
  classifier = f.get("classifier", "token")
  ours = dict(img_size=res, patch_size=patch[0] if patch[0] == patch[1] else list(patch),
              embed_dim=width, depth=depth, num_heads=heads,
              mlp_ratio=_ratio(int(t["mlp_dim"]), width),
              class_token=classifier == "token", global_pool=_GLOBAL_POOL[classifier],
              fc_norm=False if classifier == "gap" else None)
  base = dict(patch_size=16, class_token=True, global_pool="token", fc_norm=None, mlp_ratio=4.0)
  if f.get("distilled"):  # DeiT's distillation token: timm's deit_*_distilled entrypoints.
    size = next((s for s in _DEIT_NAMES if _VIT_SIZES[s][:3] == (width, depth, heads)), None)
    size = size or min(_DEIT_NAMES, key=lambda s: abs(_VIT_SIZES[s][0] - width))
    w, d, h, _ = _VIT_SIZES[size]
    name, resolutions = f"deit_{size}_distilled_patch16", _DEIT_NAMES[size]
    fixed = dict(base, embed_dim=w, depth=d, num_heads=h, patch_size=16)
  elif f.get("resnet"):
    options = _HYBRIDS[tuple(f["resnet"].get("num_layers") or ())]
    name, w, h, p, resolutions = next((o for o in options if o[1] == width), options[0])
    fixed = dict(base, embed_dim=w, num_heads=h, patch_size=p, depth=_HYBRID_DEPTH.get(name, 12))
  else:
    size = next((s for s, (w, d, h, r) in _VIT_SIZES.items()
                 if (w, d, h) == (width, depth, heads) and (patch[0], patch[0]) == patch
                 and (s, patch[0]) in _VIT_NAMES), None)
    if size is None:  # The entrypoint nearest in width, of the same patch size if one has it.
      pool = [s for (s, p) in _VIT_NAMES if (p, p) == patch] or \
          [s for (s, p) in _VIT_NAMES if p == 16]
      size = min(pool, key=lambda s: abs(_VIT_SIZES[s][0] - width))
    p = patch[0] if (size, patch[0]) in _VIT_NAMES else 16
    w, d, h, ratio = _VIT_SIZES[size]
    name, resolutions = f"vit_{size}_patch{p}", _VIT_NAMES[(size, p)]
    fixed = dict(base, embed_dim=w, depth=d, num_heads=h, mlp_ratio=ratio, patch_size=p)
  res_name = res if res in resolutions else 224
  return f"{name}_{res_name}", dict(fixed, img_size=res_name), ours


def _mixer_choice(source: common.Source) -> tuple[str, dict[str, Any], dict[str, Any]]:
  f, res = source.fields, source.resolution
  width = int(f["hidden_dim"])
  name = f"mixer_{_MIXERS[(width, int(f['num_blocks']))]}{common.patch_size(f)[0]}_224"
  ratio = [_ratio(int(f["tokens_mlp_dim"]), width), _ratio(int(f["channels_mlp_dim"]), width)]
  return name, dict(img_size=224, mlp_ratio=[0.5, 4.0]), dict(img_size=res, mlp_ratio=ratio)


def architecture(source: common.Source) -> tuple[str, dict[str, Any], list[str]]:
  """(timm name, model_args, notes) for config.json; `check` first."""
  choose = _mixer_choice if source.is_mixer else _vit_choice
  name, fixed, ours = choose(source)
  model_args = {k: v for k, v in ours.items() if fixed.get(k) != v}
  notes = []
  structural = sorted(set(model_args) - {"img_size", "act_layer"})
  if structural:
    notes.append(f"no registered timm model has this architecture: config.json names {name} "
                 f"with model_args {json.dumps({k: model_args[k] for k in structural})}, which "
                 "timm.create_model applies for 'local-dir:' and 'hf-hub:' loads (pass them "
                 f"yourself to timm.create_model('{name}', ...)).")
  approximate = bool(source.fields.get("approximate_gelu", True))
  if approximate and not source.is_mixer:
    model_args["act_layer"] = "gelu_tanh"  # Ours (and Google's) MLPs use the tanh GELU.
  elif approximate:
    notes.append("timm's MlpMixer takes its activation as a class, not a name, so config.json "
                 "cannot ask for the tanh-approximated GELU this model was trained with: timm "
                 "builds the exact GELU (as for its copies of Google's Mixers; logits move by "
                 "~1e-3). For the exact function pass act_layer=timm.layers.get_act_layer("
                 "'gelu_tanh') to timm.create_model.")
  return name, model_args, notes


def first_conv(source: common.Source) -> str:
  """The name of the input convolution (timm's pretrained_cfg['first_conv'])."""
  if source.is_mixer:
    return "stem.proj"
  resnet = source.fields.get("resnet")
  if resnet:
    return "patch_embed.backbone." + ("stem.conv" if resnet.get("num_layers") else "conv")
  return "patch_embed.proj"


def config(source: common.Source) -> tuple[dict[str, Any], list[str]]:
  """(config.json content, notes)."""
  name, model_args, notes = architecture(source)
  pp = common.preprocessing(source.arch)
  width = int(source.fields["hidden_dim" if source.is_mixer else "hidden_size"])
  classes = source.num_classes
  out: dict[str, Any] = {
      "architecture": name, "num_classes": classes, "num_features": width,
      "global_pool": "avg" if source.is_mixer else
                     _GLOBAL_POOL[source.fields.get("classifier", "token")]}
  if model_args:
    out["model_args"] = model_args
  if source.class_names:
    out["label_names"] = source.class_names
  out["pretrained_cfg"] = {
      "custom_load": False, "input_size": [3, source.resolution, source.resolution],
      "fixed_input_size": True, "interpolation": pp.interpolation, "crop_pct": pp.crop_pct,
      "crop_mode": pp.timm_crop_mode, "mean": list(pp.mean), "std": list(pp.std),
      "num_classes": classes, "pool_size": None, "first_conv": first_conv(source),
      "classifier": ["head", "head_dist"] if source.fields.get("distilled") else "head"}
  return out, notes


def load_code(source: common.Source, location: str, *, hub: bool = False) -> str:
  """Python lines that load the export from `location` (a directory, or a Hub repo id)."""
  prefix = "hf-hub" if hub else "local-dir"
  lines = ["import timm", "",
           f"model = timm.create_model({prefix + ':' + location!r}, pretrained=True).eval()"]
  if source.is_mixer and source.fields.get("approximate_gelu", True):
    lines[-1] = (f"model = timm.create_model({prefix + ':' + location!r}, pretrained=True, "
                 "act_layer=timm.layers.get_act_layer('gelu_tanh')).eval()")
  lines += ["config = timm.data.resolve_data_config({}, model=model)",
            "transform = timm.data.create_transform(**config)  # the eval preprocessing"]
  return "\n".join(lines)


def write(source: common.Source, output: str, *, overwrite: bool = False,
          repo_id: Optional[str] = None) -> common.Written:
  """Writes the timm directory `output` atomically; `repo_id` only shapes the model card."""
  from vit_jax.checkpoint import torch_layouts  # pylint: disable=g-import-not-at-top
  from vit_jax.export_formats import model_card  # pylint: disable=g-import-not-at-top
  check(source)
  cfg, notes = config(source)
  state = torch_layouts.from_ours(source.flat_params(), "timm", source=source.model_name)
  location = repo_id or os.path.abspath(output)
  card = model_card.card(source, library="timm", load=load_code(source, location,
                                                                hub=bool(repo_id)),
                         architecture_lines=[f"timm architecture: `{cfg['architecture']}`" + (
                             f" with `model_args` {json.dumps(cfg['model_args'])}"
                             if cfg.get("model_args") else "")], notes=notes, repo_id=repo_id)

  written = common.write_snapshot(output, state, {"config.json": cfg}, card, overwrite)
  load = f"timm.create_model('local-dir:{os.path.abspath(output)}', pretrained=True)"
  return common.Written(os.path.abspath(output), "timm", written, load, tuple(notes))
