"""Re-export of vit_jax.model_configs under Google's module path (vit_jax.configs.models)."""
from vit_jax.model_configs import *  # noqa: F401,F403  pylint: disable=wildcard-import
from vit_jax.model_configs import (AUGREG_CONFIGS, AUGREG_NAMES, MODEL_CONFIGS,  # noqa: F401
                                   canonical_name, create_model, get_model_config, is_mixer)
