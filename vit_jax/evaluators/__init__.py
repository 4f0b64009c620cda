"""Evaluators: the metrics a ViT is measured by (classification top-k / ReaL, few-shot linear
probes on frozen features). `classification.py` and `fewshot.py` hold the maths (NumPy, no
JAX, no data loading) so every figure can be checked against an independent computation.
"""
