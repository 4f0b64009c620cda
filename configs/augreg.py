r"""Fine-tune an AugReg checkpoint ("How to train your ViT?", Steiner et al. 2021) by name.

Preset: `augreg.py:<name>[,<dataset>]` where <name> is an AugReg checkpoint name, e.g.
`B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0` (resolved via
vit_jax.augreg.resolve to gs://vit_models/augreg/<name>.npz or a Hugging Face copy).
Same fine-tune recipe as configs/vit.py (SGD-m, batch 512, cosine, warmup 500, clip 1,
384px; lr 0.03 / 0.01), plus config.model_or_filename = <name>.

  python -m vit_jax.main --workdir=/tmp/augreg-$(date +%s) \
      --config='configs/augreg.py:B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0,cifar100'

Expected result: the AugReg paper reports the i21k-pretrained B/16 (medium1) fine-tuned
to imagenet2012 at 384px at about 85.5% top-1 and to cifar100 above 90%.
"""
import os

from vit_jax.configs import base

_HERE = os.path.dirname(os.path.abspath(__file__))

DEFAULT = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"


def get_config(arg: str = DEFAULT):
  """`arg` = '<augreg name>[,<dataset>]' (dataset default cifar10)."""
  name, _, dataset = (arg or DEFAULT).partition(",")
  name, dataset = name.strip(), (dataset.strip() or "cifar10")
  from vit_jax.models import registry  # pylint: disable=g-import-not-at-top
  model_name = registry.canonical_name(name)  # Raises listing the known names.
  vit = base.load_config_file(os.path.join(_HERE, "vit.py"))
  c = vit.get_config(f"b16,{dataset}")
  with c.unlocked():
    c.model_name = model_name
    c.model_or_filename = name
  return c
