"""The layering rules of docs/architecture.md, held against the code's imports (read with ast)."""
import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("import_graph", REPO / "scripts" / "import_graph.py")
import_graph_lib = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(import_graph_lib)
GRAPH = import_graph_lib.import_graph(REPO)


def _all_imports(module: str) -> set[str]:
  top, lazy = GRAPH[module]
  return top | lazy


def test_graph_sees_every_module_and_known_edges():
  assert "vit_jax.run.loop" in GRAPH and "vit_jax.checkpoint.adapt" in GRAPH
  assert "vit_jax.run.run_state" in GRAPH["vit_jax.run.loop"][0]
  assert "vit_jax.checkpoint.sources" in GRAPH["vit_jax.checkpoint"][1]  # lazy


def test_models_import_only_models_and_the_bottom_layer():
  allowed = {"vit_jax.param_tree", "vit_jax.runtime_defaults"}
  for module in GRAPH:
    if module.startswith("vit_jax.models"):
      bad = {m for m in _all_imports(module) if not m.startswith("vit_jax.models") and m not in allowed}
      if module == "vit_jax.models":  # Google's models.get_model(name) reads the registry, lazily.
        assert GRAPH[module][0].isdisjoint({"vit_jax.models.registry"})
        bad -= {"vit_jax.models.registry"}
      assert not bad, f"{module} imports {bad}"


def test_platform_policy_has_one_home():
  assert "vit_jax.models.attention" not in _all_imports("vit_jax.models.cpu_ops")
  for module in ("vit_jax.models.attention", "vit_jax.models.cpu_ops",
                 "vit_jax.models.transformer", "vit_jax.models.vit"):
    assert "vit_jax.models.platform" in _all_imports(module), module


def test_checkpoint_package_knows_nothing_of_training():
  forbidden = ("vit_jax.run.loop", "vit_jax.run.run_state", "vit_jax.datasets.pipeline", "vit_jax.sharding",
               "vit_jax.models", "vit_jax.training.optim")
  for module in GRAPH:
    if module.startswith("vit_jax.checkpoint"):
      bad = {m for m in _all_imports(module) if m.startswith(forbidden)}
      assert not bad, f"{module} imports {bad}"


def test_nothing_imports_the_loop_or_the_cli():
  for module in GRAPH:
    imports = _all_imports(module)
    assert "vit_jax.main" not in imports, module
    if module != "vit_jax.main":
      assert "vit_jax.run.loop" not in imports, f"{module} reaches up into the train loop"
  assert "vit_jax.datasets.pipeline" not in _all_imports("vit_jax.main")


def test_bottom_layer_imports_no_vit_jax_module():
  for module in ("vit_jax.batching", "vit_jax.param_tree", "vit_jax.runtime_defaults",
                 "vit_jax.configs.common"):
    assert not GRAPH[module][0], f"{module} imports {GRAPH[module][0]} at top level"


def _bench_private_uses(path: pathlib.Path) -> list[str]:
  tree = ast.parse(path.read_text(encoding="utf-8"))
  library_names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vit_jax"):
      library_names.update(a.asname or a.name for a in node.names)
  return [f"{path.name}:{node.lineno} {node.value.id}.{node.attr}" for node in ast.walk(tree)
          if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in library_names and node.attr.startswith("_")
          and not node.attr.startswith("__")]


def test_bench_uses_public_names_and_not_the_loop():
  for path in sorted((REPO / "bench").glob("*.py")):
    assert not _bench_private_uses(path), _bench_private_uses(path)
    assert "from vit_jax import train," not in path.read_text() and \
        "vit_jax.run.loop " not in path.read_text(), path


@pytest.mark.parametrize("modules", [
    "vit_jax.datasets.pipeline, vit_jax.datasets, vit_jax.datasets.sources, vit_jax.datasets.preprocess",
    "vit_jax.run.loop, vit_jax.planning.dry_run, vit_jax.export, vit_jax.inference, vit_jax.checkpoint",
])
def test_importing_the_data_layer_does_not_import_tensorflow(modules):
  code = (f"import sys, {modules}; from vit_jax.datasets import ImageFolderSource; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert proc.returncode == 0, proc.stderr[-2000:]
