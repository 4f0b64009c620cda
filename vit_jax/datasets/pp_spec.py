"""big_vision's preprocessing strings, parsed: 'op1|op2(arg, key=value)|...' -> op calls.

A pp string is a `|`-separated chain of ops, each `name` or `name(args)` whose arguments are
Python literals (numbers, strings, tuples, lists, dicts, True / False / None), positional
and keyword, as big_vision's `pp_train` / `pp_eval` lines; empty sections are skipped (as
big_vision's builder). This module only parses; `pp_pipeline.py` maps the op names to the
registered ops (pp_registry.py).
"""
from __future__ import annotations

import ast
import dataclasses
import re
from typing import Any

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_CLOSING = {"(": ")", "[": "]", "{": "}"}


@dataclasses.dataclass(frozen=True)
class OpCall:
  """One op of a pp string: its name, literal arguments and source text (for messages)."""
  name: str
  args: tuple[Any, ...] = ()
  kwargs: tuple[tuple[str, Any], ...] = ()
  text: str = ""

  @property
  def kwargs_dict(self) -> dict[str, Any]:
    return dict(self.kwargs)


def split_ops(spec: str) -> list[str]:
  """The op texts of a pp string: split at each `|` outside quotes and brackets."""
  parts, depth, quote, start, i = [], [], None, 0, 0
  while i < len(spec):
    ch = spec[i]
    if quote:
      if ch == "\\":
        i += 1
      elif ch == quote:
        quote = None
    elif ch in "'\"":
      quote = ch
    elif ch in _CLOSING:
      depth.append(_CLOSING[ch])
    elif depth and ch == depth[-1]:
      depth.pop()
    elif ch == "|" and not depth:
      parts.append(spec[start:i])
      start = i + 1
    i += 1
  parts.append(spec[start:])
  return [p.strip() for p in parts if p.strip()]


def parse_op(text: str) -> OpCall:
  """`name` or `name(literal, ..., key=literal, ...)` -> OpCall; ValueError names the problem."""
  text = text.strip()
  try:
    node = ast.parse(text, mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"pp op {text!r} is not valid syntax ({e.msg}); write NAME or "
                     "NAME(arg, ..., key=value) with Python literals as arguments.") from None
  if isinstance(node, ast.Name):
    return OpCall(node.id, text=text)
  if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
    raise ValueError(f"pp op {text!r} is not NAME or NAME(arg, ..., key=value).")
  if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None
                                                                for k in node.keywords):
    raise ValueError(f"pp op {text!r}: *args / **kwargs are not allowed; write the values.")
  try:
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = tuple((k.arg, ast.literal_eval(k.value)) for k in node.keywords)
  except ValueError:
    raise ValueError(f"pp op {text!r}: arguments must be Python literals (numbers, strings, "
                     "tuples, lists, dicts, True/False/None), not expressions.") from None
  return OpCall(node.func.id, args, kwargs, text)


def parse(spec: str) -> tuple[OpCall, ...]:
  """Every op of a pp string, in order; ValueError for an empty string or a malformed op."""
  calls = tuple(parse_op(t) for t in split_ops(str(spec)))
  if not calls:
    raise ValueError(f"pp string {spec!r} has no ops.")
  return calls


def is_op_name(name: str) -> bool:
  """Whether `name` can be an op of a pp string (a Python identifier)."""
  return bool(_NAME.match(name))
