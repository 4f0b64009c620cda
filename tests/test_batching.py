"""batching: the one home of the batch geometry checks (processes, shards, micro-batches)."""
import pytest

from vit_jax import batching
from vit_jax.configs import base


def _config(**kw):
  c = base.defaults()
  c.update(kw)
  return c


def test_local_batch_size():
  assert batching.local_batch_size(64, 4) == 16
  with pytest.raises(ValueError, match=r"config.batch_eval=10 must be a positive multiple of the 4 "
                                       r"processes; set --config.batch_eval to e.g. 8"):
    batching.local_batch_size(10, 4, "batch_eval")
  with pytest.raises(ValueError, match="positive"):
    batching.local_batch_size(0, 1)


def test_accum_steps():
  batching.check_accum_steps(64, 4, 8)  # 16-row micro-batches over 8 shards
  with pytest.raises(ValueError, match="not divisible by accum_steps=3"):
    batching.check_accum_steps(64, 3, 1)
  with pytest.raises(ValueError, match="micro-batch 8 .* divisible by the 16 batch shards"):
    batching.check_accum_steps(64, 8, 16)
  with pytest.raises(ValueError, match="accum_steps=0"):
    batching.check_accum_steps(64, 0, 1)


def test_check_batches_names_the_key_to_change():
  batching.check_batches(_config(batch=64, batch_eval=32, accum_steps=2), 2, 8)
  with pytest.raises(ValueError, match="config.batch=63"):
    batching.check_batches(_config(batch=63, batch_eval=32), 4, 1)
  with pytest.raises(ValueError, match="batch_eval=12 must be divisible by the 8 batch shards"):
    batching.check_batches(_config(batch=64, batch_eval=12), 2, 8)


def test_sharding_and_input_pipeline_use_this_check():
  from vit_jax import sharding
  from vit_jax.datasets import pipeline  # pylint: disable=g-import-not-at-top
  from vit_jax.training import train_step
  assert pipeline.local_batch_size is batching.local_batch_size
  assert train_step.check_accum_steps is batching.check_accum_steps
  with pytest.raises(ValueError, match="batch_eval=12 must be divisible by the 8 batch shards"):
    sharding.mesh_for_config(_config(batch=64, batch_eval=12))
