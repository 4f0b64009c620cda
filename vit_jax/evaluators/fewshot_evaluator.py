"""The 'fewshot' evaluator type: linear probes on frozen pre-logits (fewshot.py's maths).

Entry keys (beside common.COMMON_KEYS), read by fewshot.evaluate:
  datasets              {short name: (dataset, train split, test split)} (default: big_vision's
                        set, default_fewshot_datasets)
  shots                 shot counts per class (default (1, 5, 10, 25))
  l2_reg                a fixed ridge strength (big_vision's fewshot_lsr: 2**10); None (the
                        default): chosen from l2_regs on a held-out train sample
  l2_regs               the strengths the held-out choice tries (default 2**-10 ... 2**20)
  validation_per_class  held-out examples per class for that choice (default 5)
  seed, num_seeds       the shots (and held-out sample) of seeds seed ... seed + num_seeds - 1
                        (defaults 0 and 1); the result is the mean over them
Results: '<short name>_<k>shot' (the mean over the seeds) and, with num_seeds > 1,
'<short name>_<k>shot_std' (their standard deviation, ddof 0).
"""
from __future__ import annotations

from typing import Any, Optional

from vit_jax.evaluators import common, fewshot, registry

# big_vision's configs/common_fewshot.py datasets (name: dataset, train split, test split).
FEWSHOT_DATASETS = {
    "caltech": ("caltech101", "train", "test"), "cars": ("cars196", "train", "test"),
    "cifar100": ("cifar100", "train", "test"), "dtd": ("dtd", "train", "test"),
    "pets": ("oxford_iiit_pet", "train", "test"),
    "uc_merced": ("uc_merced", "train[:1000]", "train[1000:]"),
    "imagenet": ("imagenet2012", "train[:65000]", "validation"),  # when prepared (manual)
}


@registry.register("fewshot", keys=("datasets", "shots", "l2_reg", "l2_regs", "seed",
                                    "num_seeds", "validation_per_class"))
def run(ctx: common.Context, spec: common.Spec, params: Any) -> dict[str, float]:
  """Few-shot accuracy per dataset and shot count (module docstring)."""
  s = spec.settings
  datasets = s.get("datasets") or default_fewshot_datasets(ctx.config.tfds_data_dir)
  shots = tuple(int(k) for k in (s.get("shots") or fewshot.DEFAULT_SHOTS))
  out = {}
  for short, (dataset, train_split, test_split) in sorted(dict(datasets).items()):
    feats = {}
    for which, split in (("train", train_split), ("test", test_split)):
      feats[which] = common.extract_features(ctx.feature_step(), params,
                                             ctx.data_config(spec, dataset, split))
    num_seeds = int(s.get("num_seeds") or 1)
    l2_reg = s.get("l2_reg")
    result = fewshot.evaluate(*feats["train"], *feats["test"], shots=shots,
                              l2_regs=tuple(s.get("l2_regs") or fewshot.DEFAULT_L2_REGS),
                              l2_reg=None if l2_reg is None else float(l2_reg),
                              validation_per_class=int(s.get("validation_per_class") or 5),
                              seed=int(s.get("seed") or 0), num_seeds=num_seeds)
    for k in shots:
      out[f"{short}_{k}shot"] = result.accuracy[k]
      if num_seeds > 1:
        out[f"{short}_{k}shot_std"] = result.accuracy_std[k]
  return out


def default_fewshot_datasets(data_dir: Optional[str]) -> dict[str, tuple[str, str, str]]:
  """big_vision's few-shot set: caltech, cars, cifar100, dtd, pets, uc_merced, and imagenet
  when imagenet2012 is prepared in `data_dir` (it needs a manual download)."""
  out = {k: v for k, v in FEWSHOT_DATASETS.items() if k != "imagenet"}
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (TensorFlow)
    if tfds.builder("imagenet2012", data_dir=data_dir).is_prepared():
      out["imagenet"] = FEWSHOT_DATASETS["imagenet"]
  except Exception:  # pylint: disable=broad-except  # Not registered / not readable: leave out.
    pass
  return out
