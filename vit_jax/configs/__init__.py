"""Google-compatible config package: `from vit_jax.configs import models as models_config`."""
