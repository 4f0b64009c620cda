"""Google's `vit_jax.configs.common` path: `get_config()`, `with_dataset`, `DATASET_PRESETS` and
`flatten` (vit_jax/google_compat/schema.py), and our run config's `defaults()` for config files
written against this path (its home is vit_jax/configs/base.py)."""
from vit_jax.configs.base import (  # noqa: F401
    DEFAULT_MESH,
    NUM_CLASSES,
    defaults,
    load_config_file,
    model_overrides,
    set_dataset,
)
from vit_jax.google_compat.schema import DATASET_PRESETS, flatten, get_config, with_dataset  # noqa: F401

GOOGLE_NAMES = ("get_config", "with_dataset", "DATASET_PRESETS", "flatten")
