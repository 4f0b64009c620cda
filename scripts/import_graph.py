"""Prints each vit_jax module and the vit_jax modules it imports (lazy imports marked).

  python scripts/import_graph.py [ROOT]            # ROOT: a checkout (default: this one)
  python scripts/import_graph.py --summary [ROOT]  # counts, depth, cycles, lines per package

Read from the source with `ast` (nothing is imported or run). tests/test_architecture.py uses
`import_graph()` to hold the layering rules of docs/architecture.md against the code.
"""
from __future__ import annotations

import ast
import pathlib
import sys
from typing import Optional

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
  parts = list(path.relative_to(root).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _existing_module(name: str, root: pathlib.Path) -> Optional[str]:
  """The longest prefix of dotted `name` that is a module or package under `root`."""
  while name:
    base = root / name.replace(".", "/")
    if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
      return name
    name = name.rpartition(".")[0]
  return None


def imports_of(path: pathlib.Path, root: pathlib.Path = ROOT) -> tuple[set[str], set[str]]:
  """(top-level imports, imports inside functions) of one file, as vit_jax module names."""
  module = _module_name(path, root)
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  tree = ast.parse(path.read_text(encoding="utf-8"))
  top, lazy = set(), set()
  top_nodes = set(map(id, tree.body))
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      names = [f"{base}.{a.name}" for a in node.names]
      if not any(_existing_module(n, root) == n for n in names):
        names.append(base)
    for name in names:
      if not name.startswith("vit_jax"):
        continue
      found = _existing_module(name, root)
      if found and found != module:
        (top if id(node) in top_nodes else lazy).add(found)
  return top, lazy - top


def import_graph(root: pathlib.Path = ROOT) -> dict[str, tuple[set[str], set[str]]]:
  """{module: (top-level imports, lazy imports)} for every module of the vit_jax package."""
  return {_module_name(p, root): imports_of(p, root)
          for p in sorted((root / "vit_jax").rglob("*.py"))}


def cycles(graph: dict[str, tuple[set[str], set[str]]]) -> list[list[str]]:
  """Strongly connected components of more than one module (lazy imports included)."""
  edges = {m: sorted((top | lazy) & set(graph)) for m, (top, lazy) in graph.items()}
  index, low, stack, on_stack, out = {}, {}, [], set(), []

  def visit(v: str) -> None:  # Tarjan's algorithm
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in edges[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(edges):
    if v not in index:
      visit(v)
  return out


def depth(graph: dict[str, tuple[set[str], set[str]]]) -> tuple[int, list[str]]:
  """The longest import chain (modules, lazy imports included; a cycle counts once)."""
  edges = {m: sorted((top | lazy) & set(graph)) for m, (top, lazy) in graph.items()}
  best: dict[str, list[str]] = {}

  def chain(v: str, seen: frozenset) -> list[str]:
    if v in best:
      return best[v]
    longest: list[str] = []
    for w in edges[v]:
      if w not in seen:
        c = chain(w, seen | {w})
        if len(c) > len(longest):
          longest = c
    best[v] = [v] + longest
    return best[v]

  longest = max((chain(v, frozenset({v})) for v in sorted(edges)), key=len)
  return len(longest), longest


def summary(root: pathlib.Path) -> list[str]:
  """Top-level module count, depth, cycles, lines and function-level imports per package."""
  graph = import_graph(root)
  top_level = [m for m in graph if m.count(".") == 1 and not (root / m.replace(".", "/")).is_dir()]
  lines: dict[str, int] = {}
  for path in sorted((root / "vit_jax").rglob("*.py")):
    parts = path.relative_to(root / "vit_jax").parts
    key = parts[0] if len(parts) > 1 else "(top level)"
    lines[key] = lines.get(key, 0) + len(path.read_text(encoding="utf-8").splitlines())
  lazy = sum(len(imports) for _, imports in graph.values())
  n, chain_ = depth(graph)
  out = [f"modules: {len(graph)}, top-level modules: {len(top_level)}",
         f"depth (longest import chain): {n}: {' -> '.join(chain_)}",
         f"cycles: {len(cycles(graph))}"]
  out += [f"  {' <-> '.join(c)}" for c in cycles(graph)]
  out.append(f"function-level imports of vit_jax modules (distinct edges): {lazy}")
  out += [f"lines {k}: {v}" for k, v in sorted(lines.items())]
  return out


def main(argv: list[str]) -> None:
  if "--summary" in argv:
    argv = [a for a in argv if a != "--summary"]
    root = pathlib.Path(argv[1]).resolve() if len(argv) > 1 else ROOT
    print("\n".join(summary(root)))
    return
  root = pathlib.Path(argv[1]).resolve() if len(argv) > 1 else ROOT
  for module, (top, lazy) in import_graph(root).items():
    short = lambda names: ", ".join(sorted(n.replace("vit_jax.", "", 1) for n in names))
    line = f"{module.replace('vit_jax.', '', 1)}: {short(top)}"
    print(line + (f"  [lazy: {short(lazy)}]" if lazy else ""))


if __name__ == "__main__":
  main(sys.argv)
