"""Datasets beyond the TFDS catalogue: the embedded offline 'digits' builder and image folders.

Importing this package registers the TFDS builder 'digits' (vit_jax.datasets.digits).
"""
from vit_jax.datasets import digits  # noqa: F401  (registers the 'digits' TFDS builder)
from vit_jax.datasets.image_folder import ImageFolderSource, class_names

__all__ = ["ImageFolderSource", "class_names", "digits"]
