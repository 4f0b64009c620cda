"""The model card (README.md) beside a timm or transformers export.

YAML front matter as the Hugging Face Hub reads it (library_name, pipeline_tag, tags,
datasets, model-index with the run's classification results at the exported step from
<workdir>/results.json, run_state.last_eval), then prose: architecture, resolution,
preprocessing, evaluation, how to load it (exact code). `license` is left out on purpose:
the card says to add one (the weights' terms depend on the data and the starting checkpoint,
which only the user knows). The results shown are those of the exported params: the raw
ones, or with params_kind 'ema' the EMA evaluations ('ema/accuracy', 'val/ema/top1') under
their plain names.
"""
from __future__ import annotations

import json
import re
from typing import Any, Optional, Sequence

from vit_jax.export_formats import common


def _yaml(value: Any) -> str:
  """A YAML scalar: JSON's quoting is valid YAML."""
  return json.dumps(value)


def _evaluation(source: common.Source) -> Optional[dict[str, Any]]:
  """The run's recorded evaluation of the exported params at the exported step, or None."""
  if not source.workdir or source.step is None:
    return None
  from vit_jax.run import run_state  # pylint: disable=g-import-not-at-top
  try:
    recorded = run_state.last_eval(source.workdir, source.step)
  except (OSError, ValueError):  # An unreadable results.json: a card without results.
    return None
  if not recorded:
    return None
  ema = source.params_kind == "ema"
  out = {"step": recorded["step"]}
  for key, value in recorded.items():
    parts = key.split("/")
    if key != "step" and ("ema" in parts) == ema:
      out["/".join(p for p in parts if p != "ema")] = value
  return out if len(out) > 1 else None


def _metric(key: str, prefix: str) -> Optional[tuple[str, str]]:
  """(model-index metric type, name) of a classification result key, else None."""
  rest = key[len(prefix):]
  if prefix:
    table = {"top1": ("accuracy", "Top-1 accuracy"), "real": ("accuracy", "ReaL accuracy")}
    m = re.fullmatch(r"top(\d+)", rest)
  else:
    table = {"accuracy": ("accuracy", "Top-1 accuracy"),
             "real_accuracy": ("accuracy", "ReaL accuracy")}
    m = re.fullmatch(r"top(\d+)_accuracy", rest)
  if rest in table:
    return table[rest]
  if m and m.group(1) != "1":
    return (f"top_{m.group(1)}_accuracy", f"Top-{m.group(1)} accuracy")
  return None


def model_index(source: common.Source, evaluation: dict[str, Any], name: str) -> list[dict]:
  """model-index results: one entry per classification evaluator of the run config."""
  if source.config is None:
    groups = [("", source.arch.get("dataset"), None)]
  else:
    from vit_jax.evaluators import runner  # pylint: disable=g-import-not-at-top
    groups = []
    for spec in runner.specs(source.config):
      if spec.type == "classification":
        data = runner.data_config(source.config, spec)
        groups.append((spec.name + "/" if spec.name else "", data.dataset, data.eval_split))
  results = []
  for prefix, dataset, split in groups:
    metrics = []
    for key, value in sorted(evaluation.items()):
      if key.startswith(prefix) and "/" not in key[len(prefix):]:
        found = _metric(key, prefix)
        if found:
          metrics.append({"type": found[0], "name": found[1], "value": round(float(value), 6)})
    if metrics:
      data = {"name": str(dataset), "type": str(dataset)}
      if split:
        data["split"] = str(split)
      results.append({"task": {"type": "image-classification", "name": "Image Classification"},
                      "dataset": data, "metrics": metrics})
  return [{"name": name, "results": results}] if results else []


def _front_matter(source: common.Source, library: str, evaluation, name: str) -> list[str]:
  family = "mlp-mixer" if source.is_mixer else "vision-transformer"
  lines = ["---", f"library_name: {library}", "pipeline_tag: image-classification", "tags:"]
  lines += [f"- {t}" for t in ("image-classification", family, library, "vit_jax")]
  dataset = str(source.arch.get("dataset") or "")
  if dataset and "/" not in dataset and not dataset.startswith("."):  # A name, not a folder.
    lines += ["datasets:", f"- {_yaml(dataset)}"]
  for entry in (model_index(source, evaluation, name) if evaluation else []):
    lines += ["model-index:", f"- name: {_yaml(entry['name'])}", "  results:"]
    for r in entry["results"]:
      lines += ["  - task:", f"      type: {r['task']['type']}", f"      name: {r['task']['name']}",
                "    dataset:"]
      lines += [f"      {k}: {_yaml(v)}" for k, v in r["dataset"].items()]
      lines += ["    metrics:"]
      for m in r["metrics"]:
        lines += [f"    - type: {m['type']}", f"      name: {_yaml(m['name'])}",
                  f"      value: {m['value']}"]
  return lines + ["---", ""]


def _architecture(source: common.Source) -> list[str]:
  f = source.fields
  ph, pw = common.patch_size(f)
  if source.is_mixer:
    what = (f"MLP-Mixer: width {f['hidden_dim']}, {f['num_blocks']} blocks, token-mixing MLP "
            f"{f['tokens_mlp_dim']}, channel-mixing MLP {f['channels_mlp_dim']}, {ph}x{pw} patches")
  else:
    t = f["transformer"]
    what = (f"Vision Transformer: width {f['hidden_size']}, {t['num_layers']} layers, "
            f"{t['num_heads']} heads, MLP {t['mlp_dim']}, {ph}x{pw} patches, classifier "
            f"'{f.get('classifier', 'token')}'")
    if f.get("representation_size"):
      what += f", pre_logits {f['representation_size']}"
    resnet = f.get("resnet")
    if resnet:
      what = (f"R+ViT hybrid (ResNet-v2 root with stages {tuple(resnet.get('num_layers') or ())}"
              f") + {what}")
  return [f"- {what}.", f"- vit_jax config `{source.model_name}` with the run's model fields; "
          f"{source.num_classes} classes; input {source.resolution}x{source.resolution}."]


def card(source: common.Source, *, library: str, load: str,
         architecture_lines: Sequence[str] = (), notes: Sequence[str] = (),
         repo_id: Optional[str] = None) -> str:
  """README.md text for an export read by `library` ('timm' | 'transformers')."""
  evaluation = _evaluation(source)
  name = repo_id.split("/")[-1] if repo_id else f"{source.model_name}-{source.arch.get('dataset')}"
  pp = common.preprocessing(source.arch)
  lines = _front_matter(source, library, evaluation, name)
  trained = f" on `{source.arch.get('dataset')}`" if source.arch.get("dataset") else ""
  at_step = f" (step {source.step})" if source.step is not None else ""
  lines += [f"# {name}", "",
            f"A `{source.model_name}` model trained with vit_jax{trained}{at_step}, exported "
            f"for {library}" + (" (the exponential moving average of its params)."
                                if source.params_kind == "ema" else "."),
            "", "## Architecture", ""]
  lines += _architecture(source) + [f"- {line}." for line in architecture_lines]
  lines += ["", "## Preprocessing", "", pp.describe()]
  if source.class_names:
    shown = ", ".join(source.class_names[:10]) + (" ..." if len(source.class_names) > 10 else "")
    lines += ["", f"Classes: {shown}"]
  if evaluation:
    lines += ["", "## Evaluation", "", f"Recorded by the run at step {evaluation['step']}:", "",
              "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {float(v):.6g} |" for k, v in sorted(evaluation.items()) if k != "step"]
  lines += ["", "## How to load it", "", "```python", load, "```"]
  if notes:
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
  lines += ["", "## License", "",
            "Not set. Add a `license:` line to the front matter above (for example "
            "`license: apache-2.0`) that fits the training data and the starting checkpoint "
            "before publishing.", ""]
  return "\n".join(lines)
