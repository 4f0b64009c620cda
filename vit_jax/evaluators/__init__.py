"""Evaluators: the metrics a ViT is measured by (classification top-k / ReaL, few-shot linear
probes on frozen features, zero-shot classification by an image-text model).
`classification.py`, `fewshot.py` and `zeroshot.py` hold the maths (NumPy, no data loading)
so every figure can be checked against an independent computation; `registry.py` names the
evaluator types (one module each: `classification_evaluator.py`, `fewshot_evaluator.py`,
`zeroshot_evaluator.py`, or a user's own), `common.py` what they share, `runner.py` which
config.evals entry runs when, `command_line.py` entries from the `--evals` flag, `offline.py`
the eval-only evaluation (`python -m vit_jax.evaluate`) with a run's own settings.
"""
