"""What one execution of a compiled XLA program costs per device, loops counted as they run.

XLA's own cost analysis (`compiled.cost_analysis()`) visits a while-loop body once, so a
scanned encoder (`scan_layers`) or gradient accumulation (`accum_steps`, a `lax.scan`) makes
its FLOPs, bytes and collectives shrink by the trip count. This module reads the optimised HLO
text instead and walks the call graph from the entry computation, multiplying every
computation by how often it runs: a while body by its trip count (the `known_trip_count` XLA
records on CPU/GPU; on TPU, where the final HLO carries none, the bound of the loop
condition's `compare` against the induction variable's initial value and step), fusions,
calls and async computations by their caller's count, a conditional's branches by the most
expensive one.

Per instruction it counts:
  - FLOPs: dots and convolutions exactly from their shapes (2 x output elements x contracted
    elements), elementwise arithmetic 1 per output element, reductions 1 per input element,
    transcendentals apart (XLA's 'flops' leaves them out too).
  - HBM bytes: for each instruction outside a fusion, its operands' and result's bytes, with a
    fusion's operand read through a (dynamic-)slice counted as the slice and an in-place
    dynamic-update-slice as the update (so a scanned layer's slice of the stacked weights
    costs one layer, not the stack). Bookkeeping ops (tuples, bitcasts, parameters, constants,
    async `-done`) cost nothing.
  - Collectives (`collectives`): every all-gather, all-reduce, reduce-scatter, all-to-all,
    collective-permute and collective-broadcast, sync or async (`-start`; `-done` is the same
    transfer), and on multi-slice TPU programs the cross-slice transfers the megascale runtime
    carries (host-transfer `send`s tagged with their collective type), with the buffer size
    from its operands, the group size from its replica groups (explicit, iota `[G,S]<=[...]`
    or mesh-axes form) and the bytes each chip sends under the
    ring algorithm: all-reduce 2(n-1)/n, all-gather / reduce-scatter / all-to-all (n-1)/n of the
    full buffer, a permute its buffer. A group spanning several slices (or hosts) is split the
    hierarchical way: the in-slice part over ICI, 1/m of the buffer across the k slices over DCN.
The test suite checks the FLOPs and bytes against XLA's own analysis on loop-free programs and
against the formula on scanned and accumulated ones (tests/planning/test_hlo_program.py).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
import re
from typing import Any, Iterable, Optional, Sequence

import numpy as np

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute",
               "collective-broadcast")
_ASYNC_START = {f"{k}-start": k for k in COLLECTIVES}
_NO_MEMORY = frozenset({
    "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all",
    "partition-id", "replica-id", "iota", "while", "call", "conditional", "async-start",
    "async-update", "async-done", "copy-done", "send-done", "recv-done", "opt-barrier",
    "add-dependency", "domain", "custom-call-done", "send", "recv",
} | {f"{k}-done" for k in COLLECTIVES})
_ELEMENTWISE = frozenset({
    "add", "subtract", "multiply", "divide", "maximum", "minimum", "compare", "select", "and",
    "or", "xor", "not", "negate", "abs", "clamp", "sign", "floor", "ceil", "round-nearest-afz",
    "round-nearest-even", "remainder", "shift-left", "shift-right-arithmetic",
    "shift-right-logical", "atan2", "popcnt", "clz", "is-finite", "real", "imag"})
_TRANSCENDENTAL = frozenset({
    "exponential", "exponential-minus-one", "log", "log-plus-one", "tanh", "logistic", "rsqrt",
    "sqrt", "cbrt", "power", "sine", "cosine", "tan", "erf"})
_ARRAY = re.compile(r"\b(?P<dtype>pred|token|[bsuf]\d+|bf16|c64|c128|f8e\w+|f4e\w+)"
                    r"\[(?P<dims>[\d,]*)\]")
_DTYPE_BYTES = {"pred": 1, "bf16": 2, "c64": 8, "c128": 16, "token": 0}
_HEADER = re.compile(r"^(?P<entry>ENTRY\s+)?%?(?P<name>[^\s(]+)\s*\(.*->.*\{\s*$")
_DEF = re.compile(r"^\s*(?:ROOT\s+)?%?(?P<name>[^\s=]+)\s*=\s*")
_COMMENT = re.compile(r"/\*.*?\*/")


def _dtype_bytes(dtype: str) -> float:
  if dtype in _DTYPE_BYTES:
    return _DTYPE_BYTES[dtype]
  if dtype.startswith(("f8", "f4")):
    return 1 if dtype.startswith("f8") else 0.5
  return int(re.sub(r"\D", "", dtype) or 32) / 8


def arrays_of(shape: str) -> list[tuple[str, tuple[int, ...]]]:
  """The (dtype, dims) leaves of an HLO shape string, tuples flattened in order."""
  return [(m.group("dtype"), tuple(int(d) for d in m.group("dims").split(",") if d))
          for m in _ARRAY.finditer(shape)]


_LAYOUT = re.compile(r"\{(?P<order>[\d,]*)(?::(?P<rest>[^}]*))?\}")


def _padded_elements(dims: tuple[int, ...], layout: Optional[re.Match]) -> int:
  """Elements an array occupies in memory: its dims rounded up to the layout's first tile
  (TPU layouts, e.g. {2,1,0:T(8,128)}, pad the minor dimensions to whole tiles)."""
  if layout is None or not dims or not layout.group("rest"):
    return math.prod(dims)
  tile = re.match(r"T\((?P<t>[\d,]+)\)", layout.group("rest"))
  order = [int(x) for x in layout.group("order").split(",") if x]
  if tile is None or len(order) != len(dims):
    return math.prod(dims)
  physical = [dims[i] for i in reversed(order)]  # major to minor
  sizes = [int(x) for x in tile.group("t").split(",")]
  for j, t in enumerate(reversed(sizes)):
    k = len(physical) - 1 - j
    if k < 0:
      break
    physical[k] = -(-physical[k] // t) * t
  return math.prod(physical)


def shape_bytes(shape: str) -> float:
  """Bytes of every leaf of an HLO shape, tiles included ('(f32[2,3]{1,0}, bf16[4])' -> 32)."""
  total = 0.0
  for m in _ARRAY.finditer(shape):
    dims = tuple(int(d) for d in m.group("dims").split(",") if d)
    layout = _LAYOUT.match(shape, m.end())
    total += _padded_elements(dims, layout) * _dtype_bytes(m.group("dtype"))
  return total


def _elements(shape: str) -> int:
  return sum(math.prod(dims) for _, dims in arrays_of(shape))


def _balanced(text: str, start: int, open_: str = "(", close: str = ")") -> int:
  """Index just past the bracket group that opens at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    if text[i] == open_:
      depth += 1
    elif text[i] == close:
      depth -= 1
      if depth == 0:
        return i + 1
  return len(text)


@dataclasses.dataclass
class Instruction:
  """One HLO instruction: its name, result shape, opcode, operand names and attribute text."""
  name: str
  shape: str
  op: str
  operands: list[str]
  attrs: str

  def attr(self, key: str) -> Optional[str]:
    """The raw value of `key=` (a computation name, a {...} group or a token), or None."""
    m = re.search(r"(?:^|[\s,])" + re.escape(key) + r"=", self.attrs)
    if not m:
      return None
    i = m.end()
    if i < len(self.attrs) and self.attrs[i] in "{[":
      pair = {"{": "}", "[": "]"}[self.attrs[i]]
      return self.attrs[i:_balanced(self.attrs, i, self.attrs[i], pair)]
    end = re.search(r"[,\s]", self.attrs[i:])
    return self.attrs[i:i + end.start()] if end else self.attrs[i:]

  def called(self, key: str) -> Optional[str]:
    value = self.attr(key)
    return value.lstrip("%") if value else None


def parse_instruction(line: str) -> Optional[Instruction]:
  """An Instruction from one line of HLO text, or None for headers, braces and blanks."""
  m = _DEF.match(line)
  if not m:
    return None
  text = _COMMENT.sub("", line[m.end():])
  if text.startswith("("):
    end = _balanced(text, 0)
    shape, rest = text[:end], text[end:].lstrip()
  else:
    shape, _, rest = text.partition(" ")
  op_match = re.match(r"(?P<op>[\w\-]+)\(", rest)
  if not op_match:
    return None
  start = op_match.end() - 1
  end = _balanced(rest, start)
  operands = [o.strip().split(" ")[-1].lstrip("%")
              for o in _split_top(rest[start + 1:end - 1]) if o.strip()]
  return Instruction(m.group("name").lstrip("%"), shape, op_match.group("op"), operands,
                     rest[end:].lstrip(", "))


def _split_top(text: str) -> list[str]:
  """Splits on commas outside brackets."""
  parts, depth, cur = [], 0, []
  for ch in text:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if ch == "," and depth == 0:
      parts.append("".join(cur))
      cur = []
    else:
      cur.append(ch)
  parts.append("".join(cur))
  return parts


@dataclasses.dataclass
class Computation:
  name: str
  instructions: list[Instruction]

  @functools.cached_property
  def by_name(self) -> dict[str, Instruction]:
    return {i.name: i for i in self.instructions}

  @property
  def root(self) -> Instruction:
    return self.instructions[-1]


@dataclasses.dataclass
class Module:
  """An HLO module parsed from its text: its computations and which one is the entry."""
  computations: dict[str, Computation]
  entry: str
  roots: dict[str, str]

  @classmethod
  def parse(cls, text: str) -> "Module":
    comps, entry, roots = {}, None, {}
    current: Optional[list[Instruction]] = None
    name = None
    for line in text.splitlines():
      header = _HEADER.match(line)
      if header and not line.startswith(" "):
        name, current = header.group("name").lstrip("%"), []
        if header.group("entry"):
          entry = name
        continue
      if current is None:
        continue
      if line.startswith("}"):
        comps[name] = Computation(name, current)
        current = None
        continue
      inst = parse_instruction(line)
      if inst is not None:
        current.append(inst)
        if line.lstrip().startswith("ROOT"):
          roots[name] = inst.name
    if entry is None:  # A bare list of instructions (hand-written tests): one entry computation.
      insts = [i for i in map(parse_instruction, text.splitlines()) if i is not None]
      comps, entry = {"entry": Computation("entry", insts)}, "entry"
    for cname, comp in comps.items():  # The ROOT is the last instruction in our Computation.
      root = roots.get(cname)
      if root and comp.instructions and comp.instructions[-1].name != root:
        comp.instructions.append(comp.instructions.pop(
            next(i for i, x in enumerate(comp.instructions) if x.name == root)))
    return cls(comps, entry, roots)


# --- loops -------------------------------------------------------------------------------

def _constant(comp: Computation, name: str, depth: int = 0) -> Optional[int]:
  """The integer a scalar value resolves to (through copies/converts/bitcasts), or None."""
  inst = comp.by_name.get(name)
  if inst is None or depth > 8:
    return None
  if inst.op == "constant":
    m = re.match(r"\s*(-?\d+)", inst.operands[0] if inst.operands else "")
    return int(m.group(1)) if m else None
  if inst.op in ("copy", "convert", "bitcast", "reshape") and inst.operands:
    return _constant(comp, inst.operands[0], depth + 1)
  return None


def _gte_index(comp: Computation, name: str) -> Optional[int]:
  """k when `name` is get-tuple-element(param, index=k) (through copies/converts)."""
  inst = comp.by_name.get(name)
  for _ in range(8):
    if inst is None:
      return None
    if inst.op == "get-tuple-element":
      m = re.search(r"index=(\d+)", inst.attrs)
      return int(m.group(1)) if m else None
    if inst.op not in ("copy", "convert", "bitcast"):
      return None
    inst = comp.by_name.get(inst.operands[0])
  return None


def trip_count(module: Module, comp: Computation, loop: Instruction) -> Optional[int]:
  """How many times the body of `loop` (a while instruction in `comp`) runs, or None."""
  config = loop.attr("backend_config")
  if config:
    m = re.search(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"', config)
    if m:
      return int(m.group(1))
  cond = module.computations.get(loop.called("condition") or "")
  body = module.computations.get(loop.called("body") or "")
  if cond is None or not cond.instructions:
    return None
  compare, scope = cond.root, cond
  if compare.op == "fusion":  # The compare fused with its operands.
    fused = module.computations.get(compare.called("calls") or "")
    if fused is None or fused.root.op != "compare":
      return None
    scope, args = fused, compare.operands
    def resolve(name):  # fused parameter(i) -> the i-th fusion operand in the condition.
      inst = fused.by_name.get(name)
      if inst is not None and inst.op == "parameter":
        return args[int(inst.operands[0])]
      return None
    names = [resolve(o) or o for o in fused.root.operands]
    compare = Instruction(fused.root.name, fused.root.shape, "compare", names, fused.root.attrs)
    scope = cond if all(n in cond.by_name for n in names) else fused
  if compare.op != "compare" or len(compare.operands) != 2:
    return None
  direction = (compare.attr("direction") or "").upper()
  a, b = compare.operands
  index, bound = _gte_index(scope, a), _constant(scope, b)
  if index is None or bound is None:
    index, bound = _gte_index(scope, b), _constant(scope, a)
    direction = {"GT": "LT", "GE": "LE", "LT": "GT", "LE": "GE"}.get(direction, direction)
  if index is None or bound is None:
    return None
  init, step = 0, 1
  tuple_inst = comp.by_name.get(loop.operands[0]) if loop.operands else None
  if tuple_inst is not None and tuple_inst.op == "tuple" and index < len(tuple_inst.operands):
    value = _constant(comp, tuple_inst.operands[index])
    init = 0 if value is None else value
  if body is not None and body.root.op == "tuple" and index < len(body.root.operands):
    update = body.by_name.get(body.root.operands[index])
    if update is not None and update.op == "add" and len(update.operands) == 2:
      for x, y in (update.operands, update.operands[::-1]):
        if _gte_index(body, x) == index and _constant(body, y):
          step = _constant(body, y)
  if direction == "LT" and step > 0:
    return max(0, -(-(bound - init) // step))
  if direction == "LE" and step > 0:
    return max(0, (bound - init) // step + 1)
  if direction == "GT" and step < 0:
    return max(0, -(-(init - bound) // -step))
  if direction == "NE" and step:
    return max(0, (bound - init) // step)
  return None


# --- per-instruction costs ---------------------------------------------------------------

def _dims(attr: Optional[str]) -> list[int]:
  return [int(x) for x in re.findall(r"\d+", attr or "")]


def instruction_flops(comp: Computation, inst: Instruction) -> tuple[float, float]:
  """(FLOPs, transcendental ops) of one instruction by its shapes."""
  op = inst.op
  if op == "dot":
    lhs = comp.by_name.get(inst.operands[0])
    if lhs is None:
      return 0.0, 0.0
    lhs_dims = arrays_of(lhs.shape)[0][1]
    contracted = math.prod(lhs_dims[d] for d in _dims(inst.attr("lhs_contracting_dims")))
    return 2.0 * _elements(inst.shape) * contracted, 0.0
  if op == "convolution":
    return _convolution_flops(comp, inst), 0.0
  if op in _ELEMENTWISE:
    return float(_elements(inst.shape)), 0.0
  if op in _TRANSCENDENTAL:
    return 0.0, float(_elements(inst.shape))
  if op in ("reduce", "reduce-window", "select-and-scatter", "scatter"):
    ins = [comp.by_name[o] for o in inst.operands[:max(1, len(inst.operands) // 2)]
           if o in comp.by_name]
    return float(sum(_elements(i.shape) for i in ins)), 0.0
  return 0.0, 0.0


def _window(attr: Optional[str], key: str, count: int, default: int) -> list[int]:
  m = re.search(key + r"=([\dx_\-]+)", attr or "")
  if not m:
    return [default] * count
  return [int(v) for v in m.group(1).split("x")]


def _convolution_flops(comp: Computation, inst: Instruction) -> float:
  """2 x output batch x output features x kernel input features x, per spatial dimension, the
  (output, kernel) position pairs that land inside the input: a matmul XLA writes as a padded
  convolution (TPU does this for dots) costs its matmul, not its padded window."""
  if len(inst.operands) < 2:
    return 0.0
  lhs, kernel = comp.by_name.get(inst.operands[0]), comp.by_name.get(inst.operands[1])
  labels = inst.attr("dim_labels") or ""
  m = re.match(r"(?P<lhs>\w+)_(?P<k>\w+)->(?P<out>\w+)", labels)
  if lhs is None or kernel is None or not m:
    return 0.0
  lhs_dims, k_dims = arrays_of(lhs.shape)[0][1], arrays_of(kernel.shape)[0][1]
  out_dims = arrays_of(inst.shape)[0][1]
  lhs_of = dict(zip(m.group("lhs"), lhs_dims))
  k_of, out_of = dict(zip(m.group("k"), k_dims)), dict(zip(m.group("out"), out_dims))
  spatial = sorted(label for label in m.group("out") if label.isdigit())
  window = inst.attr("window") or ""
  n = len(spatial)
  strides = _window(window, "stride", n, 1)
  lhs_dilate, rhs_dilate = _window(window, "lhs_dilate", n, 1), _window(window, "rhs_dilate", n, 1)
  pads = re.search(r"pad=([\d_x\-]+)", window)
  pad_lo = [int(p.split("_")[0]) for p in pads.group(1).split("x")] if pads else [0] * n
  pairs = 1
  for d, label in enumerate(spatial):
    out_pos = np.arange(out_of[label])[:, None] * strides[d] - pad_lo[d]
    pos = out_pos + np.arange(k_of[label])[None, :] * rhs_dilate[d]
    inside = ((pos >= 0) & (pos <= (lhs_of[label] - 1) * lhs_dilate[d])
              & (pos % lhs_dilate[d] == 0))
    pairs *= int(inside.sum())
  return 2.0 * out_of.get("b", 1) * out_of.get("f", 1) * k_of.get("i", 1) * pairs


def _operand_bytes(comp: Computation, name: str) -> float:
  inst = comp.by_name.get(name)
  return shape_bytes(inst.shape) if inst is not None else 0.0


def _fusion_bytes(module: Module, comp: Computation, inst: Instruction) -> float:
  """Bytes a fusion moves: each operand as the fused computation reads it, plus its result."""
  fused = module.computations.get(inst.called("calls") or "")
  if fused is None:
    return sum(_operand_bytes(comp, o) for o in inst.operands) + shape_bytes(inst.shape)
  users = collections.defaultdict(list)
  for i in fused.instructions:
    for o in i.operands:
      users[o].append(i)
  params = {int(i.operands[0]): i for i in fused.instructions if i.op == "parameter"}
  # An in-place dynamic-update-slice root: the big buffer is neither read nor rewritten whole.
  in_place, written = set(), None
  roots = [fused.root]
  if fused.root.op == "tuple":
    roots = [fused.by_name[o] for o in fused.root.operands if o in fused.by_name]
  for r in roots:
    if r.op == "dynamic-update-slice" and r.operands and r.operands[0] in fused.by_name:
      if fused.by_name[r.operands[0]].op == "parameter":
        in_place.add(r.operands[0])
        written = (written or 0.0) + _operand_bytes(fused, r.operands[1])
  total = 0.0
  for index, operand in enumerate(inst.operands):
    param = params.get(index)
    if param is None:
      total += _operand_bytes(comp, operand)
      continue
    if param.name in in_place:
      continue
    uses = users.get(param.name, [])
    if uses and all(u.op in ("dynamic-slice", "slice") and u.operands[0] == param.name
                    for u in uses):
      total += sum(shape_bytes(u.shape) for u in uses)
    else:
      total += _operand_bytes(comp, operand)
  if written is not None:
    others = [r for r in roots if r.op != "dynamic-update-slice"]
    return total + written + sum(shape_bytes(r.shape) for r in others)
  return total + shape_bytes(inst.shape)


def instruction_bytes(module: Module, comp: Computation, inst: Instruction) -> float:
  """HBM bytes one instruction outside a fusion reads and writes."""
  op = inst.op
  if op in _NO_MEMORY:
    return 0.0
  if op == "fusion":
    return _fusion_bytes(module, comp, inst)
  if op in ("dynamic-slice", "slice"):
    return 2.0 * shape_bytes(inst.shape)
  if op == "dynamic-update-slice" and len(inst.operands) > 1:
    return 2.0 * _operand_bytes(comp, inst.operands[1])
  if op == "copy-start":
    return 2.0 * sum(_operand_bytes(comp, o) for o in inst.operands)
  if op in _ASYNC_START:  # Its result tuple repeats the operands: count the transfer once.
    return 2.0 * sum(_operand_bytes(comp, o) for o in inst.operands)
  return sum(_operand_bytes(comp, o) for o in inst.operands) + shape_bytes(inst.shape)


# --- replica groups ----------------------------------------------------------------------

def _iota_ids(dims: Sequence[int], perm: Optional[Sequence[int]]) -> np.ndarray:
  ids = np.arange(math.prod(dims)).reshape(dims)
  if perm:
    ids = ids.transpose(perm)
  return ids.reshape(-1)


def replica_groups(attrs: str, num_devices: int) -> list[list[int]]:
  """The device groups of a collective's `replica_groups` (all devices when absent or {})."""
  inst = Instruction("", "", "", [], attrs)
  text = inst.attrs
  m = re.search(r"replica_groups=", text)
  if not m:
    return [list(range(num_devices))]
  rest = text[m.end():]
  if rest.startswith("{"):
    body = rest[:_balanced(rest, 0, "{", "}")]
    groups = [[int(x) for x in re.findall(r"\d+", g)] for g in re.findall(r"\{([\d,\s]*)\}",
                                                                          body[1:-1])]
    groups = [g for g in groups if g]
    return groups or [list(range(num_devices))]
  iota = re.match(r"\[(?P<g>[\d,]+)\]<=\[(?P<dims>[\d,]+)\](?:T\((?P<perm>[\d,]+)\))?", rest)
  if iota:
    shape = _dims(iota.group("g"))
    ids = _iota_ids(_dims(iota.group("dims")),
                    _dims(iota.group("perm")) if iota.group("perm") else None)
    return ids.reshape(shape[0], -1).tolist()
  mesh = re.match(r"mesh\[(?P<axes>[^\]]*)\](?:,\s*device_ids=\((?P<ids>[^)]*\)?)\))?\s*"
                  r"\{(?P<sub>[^}]*)\}", rest)
  if mesh:
    axes = re.findall(r"'([^']+)'=(\d+)", mesh.group("axes"))
    names = [a for a, _ in axes]
    sizes = [int(s) for _, s in axes]
    ids = np.arange(math.prod(sizes))
    if mesh.group("ids"):
      spec = re.match(r"\[(?P<dims>[\d,]+)\](?:T\((?P<perm>[\d,]+)\))?", mesh.group("ids"))
      if spec:
        ids = _iota_ids(_dims(spec.group("dims")),
                        _dims(spec.group("perm")) if spec.group("perm") else None)
      else:
        ids = np.array(_dims(mesh.group("ids")))
    grid = ids.reshape(sizes)
    grouped = [names.index(a) for a in re.findall(r"'([^']+)'", mesh.group("sub"))]
    kept = [i for i in range(len(sizes)) if i not in grouped]
    grid = grid.transpose(kept + grouped)
    size = math.prod(sizes[i] for i in grouped) if grouped else 1
    return grid.reshape(-1, size).tolist()
  return [list(range(num_devices))]


def _source_target_pairs(attrs: str) -> list[tuple[int, int]]:
  m = re.search(r"source_target_pairs=\{(.*?)\}\}", attrs)
  if not m:
    return []
  return [(int(a), int(b)) for a, b in re.findall(r"\{(\d+),(\d+)", m.group(0))]


# --- walking the program -----------------------------------------------------------------

RING_FACTOR = {
    "all-reduce": lambda n: 2 * (n - 1) / n,
    "all-gather": lambda n: (n - 1) / n,
    "reduce-scatter": lambda n: (n - 1) / n,
    "all-to-all": lambda n: (n - 1) / n,
    "collective-permute": lambda n: 1.0,
    "collective-broadcast": lambda n: 1.0,
}


def _collective_kind(op: str) -> Optional[str]:
  if op in COLLECTIVES:
    return op
  return _ASYNC_START.get(op)


@dataclasses.dataclass
class Executed:
  """Per-device totals of one execution, loops multiplied out."""
  flops: float = 0.0
  transcendentals: float = 0.0
  bytes_accessed: float = 0.0
  loops: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  collectives: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

  @property
  def collective_moved_bytes(self) -> dict[str, float]:
    """{'ici': bytes sent per chip inside slices, 'dcn': across slices}."""
    return {"ici": sum(c["ici_bytes"] for c in self.collectives.values()),
            "dcn": sum(c["dcn_bytes"] for c in self.collectives.values())}


def _empty_collectives() -> dict[str, dict[str, float]]:
  return collections.OrderedDict(
      (k, {"count": 0, "bytes": 0.0, "ici_bytes": 0.0, "dcn_bytes": 0.0}) for k in COLLECTIVES)


def _collective_data_bytes(comp: Computation, inst: Instruction, kind: str, n: int) -> float:
  """The full buffer of a collective: all-gather's gathered result, the operands otherwise."""
  operands = sum(_operand_bytes(comp, o) for o in inst.operands)
  if kind == "all-gather":
    return operands * n
  return operands


def _add_collective(out: Executed, comp: Computation, inst: Instruction, kind: str,
                    times: float, slice_of: Optional[Sequence[int]], num_devices: int) -> None:
  if kind in ("collective-permute", "collective-broadcast"):
    pairs = _source_target_pairs(inst.attrs)
    groups = [list(p) for p in pairs] or [list(range(num_devices))]
    n = 2
  else:
    groups = replica_groups(inst.attrs, num_devices)
    n = max(1, max(len(g) for g in groups))
  data = _collective_data_bytes(comp, inst, kind, n)
  entry = out.collectives[kind]
  entry["count"] += times
  entry["bytes"] += data * times
  if n <= 1 or data == 0:
    return
  factor = RING_FACTOR[kind]
  spans = 1
  if slice_of is not None:
    spans = max(len({slice_of[d] for d in g if d < len(slice_of)}) for g in groups)
  if spans <= 1:
    entry["ici_bytes"] += factor(n) * data * times
    return
  per_slice = max(1, n // spans)  # m chips of each of the k slices in a group
  if kind in ("collective-permute", "collective-broadcast"):
    entry["dcn_bytes"] += data * times
    return
  if per_slice > 1:
    entry["ici_bytes"] += factor(per_slice) * data * times
  entry["dcn_bytes"] += factor(spans) * data / per_slice * times


_MEGASCALE = {"ALL_REDUCE": "all-reduce", "ALL_GATHER": "all-gather",
              "REDUCE_SCATTER": "reduce-scatter", "ALL_TO_ALL": "all-to-all"}


def _add_megascale(out: Executed, comp: Computation, inst: Instruction, times: float,
                   num_slices: int) -> None:
  """A multi-slice TPU program's cross-slice collective: a host-transfer `send` the megascale
  runtime carries over the data-centre network (its `recv` is the same transfer)."""
  m = re.search(r'_xla_megascale_transfer_type="(\w+)"', inst.attrs)
  kind = _MEGASCALE.get(m.group(1), "collective-permute") if m else "collective-permute"
  data = _operand_bytes(comp, inst.operands[0]) if inst.operands else 0.0
  if kind == "all-gather":
    data *= num_slices
  entry = out.collectives[kind]
  entry["count"] += times
  entry["bytes"] += data * times
  entry["dcn_bytes"] += RING_FACTOR[kind](max(num_slices, 2)) * data * times


def executed(hlo_text: str, num_devices: int = 1,
             slice_of: Optional[Sequence[int]] = None) -> Executed:
  """Loop-aware per-device FLOPs, HBM bytes and collectives of one run of the program.

  num_devices: the program's partitions (for collectives without explicit groups);
  slice_of[i]: the slice (or host) of logical device i, to split ICI from DCN traffic.
  """
  module = Module.parse(hlo_text)
  out = Executed(collectives=_empty_collectives())
  num_slices = len(set(slice_of)) if slice_of else 1
  visiting: set[str] = set()

  def walk(name: str, times: float, fused: bool) -> None:
    comp = module.computations.get(name)
    if comp is None or name in visiting:
      return
    visiting.add(name)
    for inst in comp.instructions:
      flops, trans = instruction_flops(comp, inst)
      out.flops += flops * times
      out.transcendentals += trans * times
      if not fused:
        out.bytes_accessed += instruction_bytes(module, comp, inst) * times
      kind = _collective_kind(inst.op)
      if kind is not None:
        _add_collective(out, comp, inst, kind, times, slice_of, num_devices)
      elif inst.op == "send" and "_xla_megascale" in inst.attrs:
        _add_megascale(out, comp, inst, times, num_slices)
      if inst.op == "while":
        trips = trip_count(module, comp, inst)
        out.loops.append({"name": inst.name, "trip_count": trips, "times": times})
        n = 1 if trips is None else trips
        walk(inst.called("body") or "", times * n, fused)
        walk(inst.called("condition") or "", times * (n + 1), fused)
      elif inst.op == "fusion":
        walk(inst.called("calls") or "", times, True)
      elif inst.op in ("call", "async-start"):
        walk(inst.called("to_apply") or inst.called("calls") or "", times, fused)
      elif inst.op == "conditional":
        branches = re.findall(r"%?([\w.\-]+)", inst.attr("branch_computations") or "")
        branches += [b for b in (inst.called("true_computation"),
                                 inst.called("false_computation")) if b]
        if branches:
          costs = [executed_of_computation(b) for b in branches]
          best = max(range(len(branches)), key=lambda i: costs[i])
          walk(branches[best], times, fused)
    visiting.discard(name)

  @functools.lru_cache(maxsize=None)
  def executed_of_computation(name: str) -> float:
    comp = module.computations.get(name)
    return sum(instruction_flops(comp, i)[0] for i in comp.instructions) if comp else 0.0

  walk(module.entry, 1.0, False)
  return out


def as_dict(e: Executed) -> dict[str, Any]:
  """The JSON-able figures of an Executed."""
  moved = e.collective_moved_bytes
  return {"flops": e.flops, "transcendentals": e.transcendentals,
          "bytes_accessed": e.bytes_accessed, "loops": e.loops,
          "collectives": {k: dict(v) for k, v in e.collectives.items()},
          "ici_bytes": moved["ici"], "dcn_bytes": moved["dcn"]}


def slices_of(devices: Iterable[Any]) -> Optional[list[int]]:
  """Which slice each device is on: a TPU's `slice_index` (absent on a one-slice topology: all
  0), else its host (`process_index`: GPU nodes talk over the network)."""
  devices = list(devices)
  if not devices:
    return None
  if all(getattr(d, "platform", "") == "tpu" for d in devices):
    return [int(getattr(d, "slice_index", None) or 0) for d in devices]
  return [int(getattr(d, "process_index", 0)) for d in devices]


__all__ = ["Executed", "Module", "executed", "as_dict", "slices_of", "replica_groups",
           "trip_count", "shape_bytes", "arrays_of", "COLLECTIVES", "RING_FACTOR"]
