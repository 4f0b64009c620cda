"""Logical axis names of the model parameters (docs/architecture.md, "Sharding rules").

Owns the helper that wraps a parameter initializer so the created parameter is
an `nn.Partitioned` box carrying logical axis names. `vit_jax.sharding` maps the
names to mesh axes; the models never see a mesh.

Names: 'embed' (hidden dim), 'mlp' (MLP hidden), 'heads', 'kv' (head dim),
'classes', 'layers' (scan axis), 'patch' (conv spatial / patch input dims),
'conv_in' / 'conv_out' (ResNet channels), 'tokens' (Mixer token dim),
'repr' (pre_logits out), 'posemb' (token-position axis).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn

Initializer = Callable[..., Any]


def logical(init: Initializer, *names: Optional[str]) -> Initializer:
  """`init` whose parameters are annotated with the logical axis `names`."""
  return nn.with_logical_partitioning(init, tuple(names))
