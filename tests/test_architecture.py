"""The layering rules of docs/architecture.md, held against the code's imports (read with ast).

Function-level imports count as imports everywhere here: a lazy import hides a cost, not an
arrow.
"""
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

# The command lines users call (python -m vit_jax.X / console scripts): parsing and printing.
CLIS = {"vit_jax.main", "vit_jax.export", "vit_jax.inference", "vit_jax.evaluate",
        "vit_jax.visualize"}
# Google's vit_jax import paths: re-exports of google_compat/ (and our registry / defaults).
GOOGLE_PATHS = {"vit_jax.train", "vit_jax.input_pipeline", "vit_jax.utils", "vit_jax.test_utils",
                "vit_jax.configs.common", "vit_jax.configs.models", "vit_jax.configs.vit",
                "vit_jax.configs.augreg", "vit_jax.configs.mixer_base16_cifar10",
                "vit_jax.inference_time", "vit_jax.configs.inference_time",
                "vit_jax.preprocess"}
# The bottom layer: imported by anything, imports no vit_jax module.
BOTTOM = {"vit_jax.exits", "vit_jax.batching", "vit_jax.param_tree", "vit_jax.runtime_defaults",
          "vit_jax.configs.base"}
# Packages by role, lowest first: a module may import only its own package, lower layers and
# the bottom layer (docs/architecture.md, "Packages").
LAYERS = [
    ("vit_jax.models",),
    ("vit_jax.checkpoint",),
    ("vit_jax.sharding",),
    ("vit_jax.datasets",),
    ("vit_jax.training",),
    ("vit_jax.evaluators",),
    ("vit_jax.planning",),
    ("vit_jax.run",),
    ("vit_jax.export_formats",),
    ("vit_jax.analysis", "vit_jax.artifacts", "vit_jax.predict"),
    ("vit_jax.google_compat",),
]


# The one documented upward reference (docs/architecture.md, "Packages"): Google's
# `vit_jax.models.LitModel / get_model / model_configs` are looked up on first use by the
# package's module __getattr__, from Google's API layer (LiT's loading and tokenizer methods
# need the checkpoint layer and TensorFlow). Nothing else may point up.
GOOGLE_MODELS_FACE = {("vit_jax.models", "vit_jax.google_compat.lit"),
                      ("vit_jax.models", "vit_jax.configs.models")}


def _all_imports(module: str) -> set[str]:
  top, lazy = GRAPH[module]
  return {dep for dep in top | lazy if (module, dep) not in GOOGLE_MODELS_FACE}


def test_the_models_face_reaches_up_only_lazily_from_its_getattr():
  top, lazy = GRAPH["vit_jax.models"]
  assert not top & {dep for _, dep in GOOGLE_MODELS_FACE}
  assert {dep for _, dep in GOOGLE_MODELS_FACE} <= lazy
  tree = ast.parse((REPO / "vit_jax" / "models" / "__init__.py").read_text(encoding="utf-8"))
  getattr_fn = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
  assert [f.name for f in getattr_fn] == ["__getattr__"]
  inside = {node.module for node in ast.walk(getattr_fn[0]) if isinstance(node, ast.ImportFrom)}
  assert inside == {"vit_jax.google_compat", "vit_jax.configs"}
  assert not GRAPH["vit_jax.google_compat.lit"][0] & {"vit_jax.models"}  # No cycle back.


def _layer(module: str):
  if module in BOTTOM:
    return -1
  for i, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return i
  return None


def test_graph_sees_every_module_and_known_edges():
  assert "vit_jax.run.loop" in GRAPH and "vit_jax.checkpoint.adapt" in GRAPH
  assert "vit_jax.run.run_state" in GRAPH["vit_jax.run.loop"][0]
  assert "vit_jax.checkpoint.sources" in _all_imports("vit_jax.checkpoint")


def test_import_graph_has_no_cycles():
  assert import_graph_lib.cycles(GRAPH) == []


def test_cycle_finder_finds_a_cycle():
  fake = {"a": ({"b"}, set()), "b": (set(), {"c"}), "c": ({"a"}, set()), "d": ({"a"}, set())}
  assert import_graph_lib.cycles(fake) == [["a", "b", "c"]]
  assert import_graph_lib.depth({"a": ({"b"}, set()), "b": (set(), set())})[0] == 2


def test_every_module_has_a_room():
  """Each module is a command line, a Google path, the bottom layer or in a layer's package."""
  homeless = [m for m in GRAPH if m != "vit_jax" and m not in CLIS | GOOGLE_PATHS
              and _layer(m) is None and m not in ("vit_jax.configs",)]
  assert not homeless, homeless


def test_packages_import_only_downwards():
  bad = []
  for module in GRAPH:
    mine = _layer(module)
    if mine is None:
      continue
    for dep in _all_imports(module):
      theirs = _layer(dep)
      if dep in CLIS | GOOGLE_PATHS or (theirs is not None and theirs > mine):
        bad.append(f"{module} -> {dep}")
  assert not bad, "imports that point up a layer:\n" + "\n".join(sorted(bad))


def test_command_lines_import_no_command_line():
  for module in CLIS:
    assert not _all_imports(module) & CLIS, f"{module} imports {_all_imports(module) & CLIS}"


def test_no_core_module_imports_google_compat():
  allowed = GOOGLE_PATHS | {"vit_jax.main"}  # main takes Google's config files too
  for module in GRAPH:
    if module.startswith("vit_jax.google_compat") or module in allowed:
      continue
    bad = {m for m in _all_imports(module) if m.startswith("vit_jax.google_compat")}
    assert not bad, f"{module} imports {bad}"


def test_google_paths_only_re_export():
  """Google's paths define no behaviour of their own: only imports, __all__ and constants."""
  for module in GOOGLE_PATHS - {"vit_jax.configs.vit", "vit_jax.configs.augreg",
                                "vit_jax.configs.mixer_base16_cifar10", "vit_jax.configs.models",
                                "vit_jax.test_utils"}:
    path = REPO / (module.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert not defs, f"{module} defines {defs}; Google's names live in vit_jax/google_compat/"


def test_models_import_only_models_and_the_bottom_layer():
  for module in GRAPH:
    if module.startswith("vit_jax.models"):
      bad = {m for m in _all_imports(module) if not m.startswith("vit_jax.models")
             and m not in BOTTOM}
      assert not bad, f"{module} imports {bad}"


def test_platform_policy_has_one_home():
  assert "vit_jax.models.attention" not in _all_imports("vit_jax.models.cpu_ops")
  for module in ("vit_jax.models.attention", "vit_jax.models.cpu_ops",
                 "vit_jax.models.transformer", "vit_jax.models.vit"):
    assert "vit_jax.models.platform" in _all_imports(module), module


def test_checkpoint_package_knows_nothing_of_training():
  forbidden = ("vit_jax.training", "vit_jax.run", "vit_jax.datasets", "vit_jax.sharding")
  for module in GRAPH:
    if module.startswith("vit_jax.checkpoint"):
      bad = {m for m in _all_imports(module) if m.startswith(forbidden)}
      assert not bad, f"{module} imports {bad}"


def test_nothing_imports_the_loop_or_the_cli():
  for module in GRAPH:
    imports = _all_imports(module)
    assert "vit_jax.main" not in imports, module
    if module not in ("vit_jax.main", "vit_jax.google_compat.train"):
      assert "vit_jax.run.loop" not in imports, f"{module} reaches up into the train loop"
  assert "vit_jax.datasets.pipeline" not in _all_imports("vit_jax.main")


def test_bottom_layer_imports_no_vit_jax_module():
  for module in BOTTOM:
    assert not _all_imports(module), f"{module} imports {_all_imports(module)}"


def test_one_datasheet_table():
  """Peak FLOP/s and HBM figures are literals only in planning/datasheets.py."""
  for path in (REPO / "vit_jax").rglob("*.py"):
    if path.name == "datasheets.py":
      continue
    text = path.read_text(encoding="utf-8")
    for figure in ("989e12", "275e12", "197e12", "459e12", "918e12"):
      assert figure not in text, f"{path}: a datasheet figure outside planning/datasheets.py"


def _sets_state(node: ast.AST) -> bool:
  """Whether `node` writes the environment or a JAX option (reads are fine)."""
  if isinstance(node, ast.Assign):
    return any(isinstance(t, ast.Subscript) and "environ" in ast.unparse(t.value)
               for t in node.targets)
  if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
    owner = ast.unparse(node.func.value)
    return ((node.func.attr in ("setdefault", "update", "pop") and owner.endswith("environ"))
            or (node.func.attr == "update" and owner.endswith("config"))
            or node.func.attr == "putenv")
  return False


def _module_level_side_effects(path: pathlib.Path) -> list[str]:
  """Statements run at import (module level, outside functions and classes) that set
  environment variables or JAX options."""
  tree = ast.parse(path.read_text(encoding="utf-8"))
  found = []
  for node in tree.body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      continue
    found += [f"{path.relative_to(REPO)}:{sub.lineno} {ast.unparse(sub)[:60]}"
              for sub in ast.walk(node) if _sets_state(sub)]
  return found


def test_import_time_side_effects_have_one_home():
  """Only runtime_defaults.py changes the environment or JAX's options; the places that call
  it at import time are the ones docs/architecture.md lists."""
  found = []
  for path in sorted((REPO / "vit_jax").rglob("*.py")):
    if path.name != "runtime_defaults.py":
      found += _module_level_side_effects(path)
  assert not found, found
  callers = {m for m, (top, _) in GRAPH.items() if "vit_jax.runtime_defaults" in top}
  text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
  for module in callers:
    source = (REPO / (module.replace(".", "/") + ".py"))
    if not source.exists():
      source = REPO / module.replace(".", "/") / "__init__.py"
    if "runtime_defaults.apply" in source.read_text() or "quiet_tensorflow" in source.read_text():
      assert f"`{module}`" in text, f"{module} applies start-up defaults; list it in the docs"


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
    text = path.read_text()
    assert "vit_jax.run import loop" not in text and "vit_jax.run.loop" not in text, path


def test_no_module_shadows_the_standard_library():
  """`cd vit_jax && python -c 'import dataclasses'` must work: no top-level module or package
  named like one of the standard library's."""
  names = {p.stem for p in (REPO / "vit_jax").glob("*.py")} | {
      p.name for p in (REPO / "vit_jax").iterdir() if p.is_dir()}
  clash = sorted(names & set(sys.stdlib_module_names))
  assert not clash, clash
  proc = subprocess.run([sys.executable, "-c", "import dataclasses, inspect, json"],
                        cwd=REPO / "vit_jax", capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-1000:]


@pytest.mark.parametrize("modules", [
    "vit_jax.datasets.pipeline, vit_jax.datasets, vit_jax.datasets.sources, "
    "vit_jax.datasets.preprocess, vit_jax.datasets.text, vit_jax.preprocess",
    "vit_jax.run.loop, vit_jax.planning.dry_run, vit_jax.export, vit_jax.inference, "
    "vit_jax.checkpoint",
])
def test_importing_the_data_layer_does_not_import_tensorflow(modules):
  code = (f"import sys, {modules}; from vit_jax.datasets import ImageFolderSource; "
          "bad = [m for m in ('tensorflow', 'tensorflow_datasets') if m in sys.modules]; "
          "assert not bad, bad")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                        env=dict(os.environ, PYTHONPATH=str(REPO)))
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_every_listed_slow_test_exists():
  """conftest.SLOW_TESTS names test functions that exist (a renamed test would silently join
  the fast tier otherwise)."""
  import conftest  # pylint: disable=g-import-not-at-top
  for node in conftest.SLOW_TESTS:
    path, name = node.split("::")
    tree = ast.parse((REPO / path).read_text(encoding="utf-8"))
    names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert name in names, f"conftest.SLOW_TESTS: {node} does not exist"
