"""Google's `vit_jax.input_pipeline` path: its functions (pmap-shaped batches), defined in
vit_jax/google_compat/data.py. Our input pipeline is vit_jax.datasets.pipeline."""
from vit_jax.google_compat.data import (  # noqa: F401
    get_data_from_directory,
    get_data_from_tfds,
    get_dataset_info,
    get_datasets,
    get_directory_info,
    get_tfds_info,
    prefetch,
)

__all__ = ["get_dataset_info", "get_datasets", "get_data_from_tfds", "get_data_from_directory",
           "get_tfds_info", "get_directory_info", "prefetch"]
