"""Export formats, one module each, and the dispatch between them (vit_jax.export is the CLI).

  writers       export_files / export: a run's params (run_state.read_params) in one format
  npz           --format=npz: the official vit_models .npz + its architecture sidecar
                (model.json), read back by vit_jax.artifacts
  common        the run being exported (`Source`), what a format wrote (`Written`), the eval
                preprocessing in other libraries' terms, the refusal of an architecture a
                format cannot hold
  timm          --format=timm: model.safetensors in timm's layout + timm's Hub config.json
  transformers  --format=transformers: a ViTForImageClassification snapshot
  model_card    README.md with the Hugging Face Hub's front matter, beside timm / transformers
  hub           --push_to_hub: the written folder to a Hub repo
  serving       --format=stablehlo (jax.export) and --format=savedmodel (jax2tf)
  big_vision    --format=big_vision: an image-text run's two towers as big_vision's
                two_towers .npz (the image tower's names: checkpoint/layouts.to_big_vision)

Key names of the timm / transformers state dicts live in checkpoint/torch_layouts.py (read
in one direction there and inverted by `from_ours`), not here. torch, timm, transformers
and TensorFlow are never imported by the timm / transformers writers; TensorFlow only by
the SavedModel writer.
"""
