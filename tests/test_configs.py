"""Tests for configs/: every preset loads, is locked, carries its published recipe."""
import pytest
from helpers import (
  REPO,  # pylint: disable=g-bad-import-order
  load_config_file,  # pylint: disable=g-bad-import-order
)

from vit_jax import main

VIT_PRESETS = ["b16,cifar10", "l16,imagenet2012", "ti16,digits", "b32,cifar100",
               "s16,oxford_iiit_pet", "r50b16,cifar10", "mixer-b16,cifar10", "h14,imagenet2012",
               "so400m14,cifar100"]


@pytest.mark.parametrize("preset", VIT_PRESETS)
def test_vit_presets_published_finetune_recipe(preset):
  c = load_config_file("vit", preset)
  assert c.optimizer == "sgd" and c.momentum == 0.9
  assert c.decay_type == "cosine" and c.grad_norm_clip == 1.0 and c.weight_decay == 0.0
  assert c.base_lr in (0.001, 0.003, 0.01, 0.03)
  if not preset.endswith("digits"):  # 384 px; /14 models 378 px (27x27 whole patches).
    assert c.batch == 512 and c.pp.crop == (378 if preset.split(",")[0].endswith("14") else 384)
  if preset.endswith("imagenet2012"):
    assert c.total_steps == 20_000 and c.base_lr == 0.03 and c.num_classes == 1000
  if preset.endswith(("cifar10", "cifar100")):
    assert c.total_steps == 10_000 and c.warmup_steps == 500


def test_so400m14_preset_is_the_siglip_image_tower_architecture():
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  c = load_config_file("vit", "so400m14,cifar100")
  arch = registry.run_model_config(c)
  assert (arch.hidden_size, arch.transformer.num_layers, arch.transformer.mlp_dim,
          arch.transformer.num_heads, arch.classifier, tuple(arch.patches.size)) == (
              1152, 27, 4304, 16, "map", (14, 14))
  assert c.pp.crop % 14 == 0 and c.num_classes == 100


def test_model_names_exist():
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  vit = load_config_file("vit", "b16,cifar10")
  names = set(registry.MODEL_CONFIGS)
  for preset in VIT_PRESETS:
    assert load_config_file("vit", preset).model_name in names, preset
  for arg in ["ti16", "s16", "b16", "l16"]:
    assert load_config_file("pretrain_i1k", arg).model_name in names
  assert vit.model_name == "ViT-B_16"


@pytest.mark.parametrize("name,wd", [("pretrain_i1k", 0.1), ("pretrain_i21k", 0.03)])
def test_pretrain_augreg_recipe(name, wd):
  c = load_config_file(name, "b16,medium2")
  assert (c.optimizer, c.base_lr, c.b1, c.b2, c.weight_decay) == ("adamw", 1e-3, 0.9, 0.999, wd)
  assert c.warmup_steps == 10_000 and c.total_epochs == 300 and c.batch == 4096
  assert (c.pp.randaugment_layers, c.pp.randaugment_magnitude, c.pp.mixup_alpha) == (2, 15, 0.5)
  light = load_config_file(name, "s16,light1")
  assert (light.pp.randaugment_magnitude, light.pp.mixup_alpha) == (10, 0.0)
  with pytest.raises(ValueError, match="augmentation"):
    load_config_file(name, "s16,extreme")


def test_deit_preset_is_the_published_recipe():
  c = load_config_file("deit", "s16")
  assert c.model_name == "ViT-S_16" and c.dataset == "imagenet2012" and c.num_classes == 1000
  assert (c.optimizer, c.b1, c.b2, c.weight_decay, c.grad_norm_clip) == (
      "adamw", 0.9, 0.999, 0.05, 0.0)
  assert c.batch == 1024 and c.base_lr == pytest.approx(5e-4 * 1024 / 512)
  assert c.total_epochs == 300 and c.warmup_steps == 5 * (1_281_167 // 1024)
  assert (c.decay_type, c.end_lr) == ("cosine", 1e-5)
  pp = c.pp
  assert (pp.randaugment_layers, pp.randaugment_magnitude) == (2, 9)
  assert (pp.mixup_alpha, pp.cutmix_alpha, pp.mixup_switch_prob, pp.mixup_prob) == (
      0.8, 1.0, 0.5, 1.0)
  assert (pp.random_erase_prob, pp.label_smoothing, pp.train) == (0.25, 0.1, "inception_crop")
  assert (pp.eval, pp.crop_pct, pp.crop) == ("resize_small", 0.875, 224)
  assert c.input.repeated_aug == 3 and c.model.stochastic_depth == 0.1
  assert (c.ema.decay, c.ema.every) == (0.99996, 1)
  assert load_config_file("deit", "b16,cifar100").num_classes == 100
  with pytest.raises(ValueError, match="unknown model"):
    load_config_file("deit", "l16")


@pytest.mark.parametrize("arg,decay,lr,epochs,drop_path", [
    ("b16", 0.65, 2e-3, 100, 0.1), ("l16", 0.75, 4e-3, 50, 0.2), ("h14", 0.75, 4e-3, 50, 0.3)])
def test_finetune_llrd_preset_is_maes_recipe(arg, decay, lr, epochs, drop_path):
  c = load_config_file("finetune_llrd", arg)
  assert c.layer_decay == decay and c.base_lr == pytest.approx(lr) and c.total_epochs == epochs
  assert c.model.stochastic_depth == drop_path and c.batch == 1024
  assert (c.optimizer, c.weight_decay, c.end_lr, c.grad_norm_clip) == ("adamw", 0.05, 1e-6, 0.0)
  assert (c.pp.mixup_alpha, c.pp.cutmix_alpha, c.pp.label_smoothing) == (0.8, 1.0, 0.1)
  assert c.pp.random_erase_prob == 0.25 and c.ema.decay == 0.0
  assert c.require_pretrained
  from vit_jax import exits  # pylint: disable=g-import-not-at-top
  from vit_jax.run import preflight
  with pytest.raises(exits.UserError, match="--config.pretrained_path"):
    preflight.check(c, info=None)  # Refused before any data is read or anything compiled.


def test_augreg_and_quickstart():
  c = load_config_file("augreg",
                       "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0,cifar100")
  assert c.model_name == "ViT-S_16" and c.dataset == "cifar100"
  assert c.model_or_filename.startswith("S_16-i21k")
  q = load_config_file("quickstart")
  assert q.dataset == "digits" and q.total_steps > 0
  assert load_config_file("vit", "quickstart").to_dict() == q.to_dict()


def test_configs_are_locked_and_unknown_overrides_list_valid_keys(capsys):
  c = load_config_file("vit", "b16,cifar10")
  with pytest.raises(AttributeError):
    c.bogus_key = 1
  main.check_config_overrides(["--config=configs/vit.py:b16,cifar10", "--config.base_lr=0.01",
                               "--config.model.transformer.dropout_rate=0.1"])
  with pytest.raises(SystemExit) as err:
    main.check_config_overrides(["--config=configs/vit.py:b16,cifar10", "--config.base_lrr=0.01"])
  assert err.value.code == 2
  message = capsys.readouterr().err.strip()
  assert message.startswith("error: Unknown config key(s) ['base_lrr']") and "\n" not in message
  assert "Did you mean base_lr?" in message and "Valid keys" in message and " base_lr," in message
  with pytest.raises(ValueError, match="model"):
    load_config_file("vit", "b17,cifar10")
  # A bad preset or a missing file: one line, status 2, no traceback.
  for spec, want in (("configs/vit.py:b17,cifar10", "unknown model 'b17'"),
                     ("configs/nope.py", "config file 'configs/nope.py'")):
    with pytest.raises(SystemExit) as err:
      main.check_config_overrides([f"--config={spec}"])
    line = capsys.readouterr().err.strip()
    assert err.value.code == 2 and line.startswith("error: ") and want in line, line
    assert "\n" not in line


# Config files in Google's layout, for its README command lines (vit_jax/configs/).
GOOGLE_LAYOUT_FILES = ("vit.py", "augreg.py", "mixer_base16_cifar10.py")


def _keys_read_by_product_code():
  """(file:line, dotted key) of every `config.<key>` / `config.pp.<key>` / `inp.<key>` read."""
  import ast  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  methods = {"get", "to_dict", "unlocked", "copy_and_resolve_references", "lock", "items", "keys",
             "update", "ignore_type", "values"}
  found = []
  for path in sorted((pathlib.Path(__file__).parent.parent / "vit_jax").rglob("*.py")):
    if "/models/" in str(path) or "/checkpoint/" in str(path) or path.name in (
        "registry.py", "param_tree.py"):
      continue  # Those read model configs and Hugging Face configs, other dicts.
    if "/google_compat/" in str(path) or path.name in GOOGLE_LAYOUT_FILES:
      continue  # Google's config layout (google_compat/schema.py translates it into ours).
    for node in ast.walk(ast.parse(path.read_text())):
      if not isinstance(node, ast.Attribute) or node.attr in methods or node.attr.startswith("_"):
        continue
      chain, base = [node.attr], node.value
      while isinstance(base, ast.Attribute):
        chain.insert(0, base.attr)
        base = base.value
      if isinstance(base, ast.Name) and base.id in ("config", "c"):
        found.append((f"{path.name}:{node.lineno}", ".".join(chain)))
  return found


def test_every_key_the_code_reads_has_its_default_in_defaults():
  from vit_jax.configs import base  # pylint: disable=g-import-not-at-top
  defaults = base.defaults()
  reads = _keys_read_by_product_code()
  assert len(reads) > 40  # The scan sees the trainer, optimizer, pipeline and dry run.
  missing = []
  for where, key in reads:
    node = defaults
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node.keys():
        missing.append((where, key))
        break
      node = node[part]
  assert not missing, f"keys read without a default in configs/base.defaults(): {missing}"


def test_no_second_defaults_in_product_code():
  """`config.get(key, default)` would shadow defaults(); the trainer reads keys directly."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  pattern = re.compile(r"\b(config|pp|inp)\.get\(")
  offenders = []
  for path in sorted((pathlib.Path(__file__).parent.parent / "vit_jax").rglob("*.py")):
    if "/models/" in str(path) or "/checkpoint/" in str(path) or path.name in (
        "registry.py", "param_tree.py"):  # Those read model / Hugging Face configs.
      continue
    for i, line in enumerate(path.read_text().splitlines(), 1):
      if pattern.search(line):
        offenders.append(f"{path.name}:{i}: {line.strip()}")
  assert not offenders, offenders


# --- every preset's train view against its eval view -----------------------------------------

NATIVE_SIDE = {"digits": 32, "cifar10": 32, "cifar100": 32}  # Stored image side [px], if fixed.


def _every_preset():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("vit_presets", REPO / "configs" / "vit.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  presets = [("vit", f"{m},{d}") for m in module.MODELS for d in module.DATASETS]
  presets += [("augreg", ""),
              ("augreg", "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0,digits")]
  presets += [(name, m) for name in ("pretrain_i1k", "pretrain_i21k") for m in ("ti16", "b16")]
  presets += [("quickstart", ""), ("finetune_quickstart", "")]
  presets += [("deit", m) for m in ("ti16", "s16", "b16,cifar100", "s16_distilled")]
  presets += [("finetune_llrd", m) for m in ("b16", "l16", "h14,cifar10")]
  return presets


def view_problems(config) -> list[str]:
  """What is wrong with a config's train view relative to its eval view (empty: fine).

  * vit_finetune's random crop must cover >= 60% of the resized image's area;
  * train and eval must see objects at the same scale (train resize / eval scale <= 8/7);
  * an eval view that leaves a stored image unresampled (eval 'resize' to the stored side)
    must not meet train views that are all resampled (another resize).
  """
  from vit_jax.datasets import preprocess  # pylint: disable=g-import-not-at-top
  opts = preprocess.options_from_config(config.pp)
  problems = []
  eval_scale = opts.crop if opts.eval == "resize" else opts.resize
  if opts.eval in ("resize_crop", "resize_small") and (opts.crop / opts.resize) ** 2 < 0.6:
    problems.append(f"eval central crop keeps {(opts.crop / opts.resize) ** 2:.0%} of the image")
  if opts.train == "vit_finetune":
    share = (opts.crop / opts.resize) ** 2
    if share < 0.6:
      problems.append(f"train crop {opts.crop} of {opts.resize} covers {share:.0%} of the image")
    if not 1.0 <= opts.resize / eval_scale <= 8 / 7 + 0.01:  # + rounding of the side
      problems.append(f"train scale {opts.resize} px vs eval {eval_scale} px")
    native = NATIVE_SIDE.get(str(config.dataset))
    if native == opts.crop and opts.eval == "resize" and opts.resize != native:
      problems.append(f"eval leaves {native} px images untouched, train resamples to {opts.resize}")
  return problems


@pytest.mark.parametrize("name,arg", _every_preset())
def test_every_preset_trains_on_views_like_its_eval(name, arg):
  config = load_config_file(name, arg) if arg else load_config_file(name)
  assert view_problems(config) == [], (name, arg)


def test_view_check_catches_the_old_fixed_margin():
  from vit_jax.datasets import preprocess  # pylint: disable=g-import-not-at-top
  config = load_config_file("vit", "ti16,digits")
  with config.unlocked():
    config.pp.resize, config.pp.eval = config.pp.crop + 32, "resize"  # The old default.
  assert len(view_problems(config)) == 3
  assert preprocess.default_resize(32) == 37 and preprocess.default_resize(224) == 256
  assert preprocess.default_resize(384) == 439
