"""Google's vit_jax API beside ours: the names and signatures its Colab, README and tests use.

`schema` (Google's config layout and its one translation into a run config), `data`
(`get_data_from_tfds` & co.: pmap-shaped batches from our input pipeline), `update`
(`make_update_fn`, `create_learning_rate_schedule`, `accumulate_gradient`), `inference_time`
(Google's benchmark and its config, on planning/timing.py). The public
modules re-export them under Google's module paths (vit_jax.datasets.pipeline, vit_jax.utils,
vit_jax.run.loop, vit_jax.models, vit_jax.configs.common / .models); ours stays the documented way.
"""
