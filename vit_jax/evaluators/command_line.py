"""`config.evals` entries from the command line (`--evals`), for a locked config or no file.

One evaluator per value; repeat the flag for several (or separate entries with ';'):

  --evals=NAME:TYPE[:KEY=VALUE,KEY=VALUE,...]
  --evals=half:classification:split=test[:50%],topk=2,pp.eval=resize_small
  --evals='fs:fewshot:datasets.pets=oxford_iiit_pet:train:test,shots=(1,5),num_seeds=3'

NAME is the entry's name (results are '<NAME>/<metric>'), TYPE a registered evaluator type
('classification', 'fewshot', ...) or a module's dotted path (registry.py), KEY one of the
type's entry keys (runner.py's module docstring; `pp.eval`, `pp.resize`, `pp.crop_pct` for
the entry's preprocessing; `datasets.SHORT=DATASET:TRAIN_SPLIT:TEST_SPLIT` for a few-shot
dataset). A VALUE is a Python literal (5, 0.5, (1, 5), None, True) or else a string; ',' and
':' inside brackets or quotes do not separate. An entry replaces a config file's entry of
the same name; any entry replaces the run's default evaluator (add
`val:classification` to keep it).
"""
from __future__ import annotations

import ast
import re
from typing import Any, Sequence

import ml_collections

from vit_jax.evaluators import common, registry, runner

SYNTAX = "NAME:TYPE[:KEY=VALUE,KEY=VALUE,...]"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_OPEN, _CLOSE = "([{", ")]}"


def split_top(text: str, sep: str) -> list[str]:
  """`text` split at `sep` outside brackets and quotes ('test[:50%]', '(1, 5)' stay whole)."""
  parts, depth, quote, current = [], 0, "", ""
  for ch in text:
    if quote:
      quote = "" if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in _OPEN:
      depth += 1
    elif ch in _CLOSE:
      depth = max(depth - 1, 0)
    elif ch == sep and depth == 0:
      parts.append(current)
      current = ""
      continue
    current += ch
  return parts + [current]


def valid_keys() -> str:
  """The keys each registered type accepts, for error messages."""
  every = sorted((common.COMMON_KEYS - {"type", "pp"}) | {f"pp.{k}" for k in common.PP_KEYS})
  own = "; ".join(f"{name}: {', '.join(sorted(registry.get(name).keys)) or '-'}"
                  for name in registry.names())
  return f"keys of every type: {', '.join(every)}; of each type: {own}"


def _value(text: str) -> Any:
  """A Python literal, else the string itself ('true' / 'false' as booleans)."""
  if text.strip().lower() in ("true", "false"):
    return text.strip().lower() == "true"
  try:
    return ast.literal_eval(text.strip())
  except (ValueError, SyntaxError):
    return text.strip()


def parse_one(text: str, flag: str = "--evals") -> tuple[str, dict]:
  """(name, config.evals entry) of one `NAME:TYPE[:KEY=VALUE,...]`; ValueError naming the
  syntax, the valid types and keys otherwise."""
  def fail(what: str) -> ValueError:
    return ValueError(f"{flag}={text!r}: {what}. Use {SYNTAX}; types: {list(registry.names())} "
                      f"(or a module's dotted path); {valid_keys()}.")

  name, _, rest = text.strip().partition(":")
  kind, _, settings = rest.partition(":")
  if not _NAME.match(name):
    raise fail(f"the name {name!r} must be an identifier (letters, digits, '_')")
  if not kind:
    raise fail("it names no TYPE")
  try:
    evaluator = registry.get(kind)
  except registry.UnknownTypeError as e:
    raise fail(f"type {kind!r} {e.reason.split(';')[0]}") from None
  entry: dict[str, Any] = {"type": kind}
  valid = (common.COMMON_KEYS | evaluator.keys) - {"type"}
  for item in (s for s in split_top(settings, ",") if s.strip()):
    key, eq, raw = item.partition("=")
    key = key.strip()
    if not eq:
      raise fail(f"{item!r} is not KEY=VALUE")
    head, _, sub = key.partition(".")
    if head not in valid or (head == "pp" and sub not in common.PP_KEYS) or (
        sub and head not in ("pp", "datasets")):
      raise fail(f"{key!r} is not a key of type {kind!r}")
    if not sub:
      entry[head] = _value(raw)
      continue
    value = _value(raw)
    if head == "datasets" and isinstance(value, str):
      value = tuple(split_top(value, ":"))
      if len(value) != 3:
        raise fail(f"{key}={raw!r} must be DATASET:TRAIN_SPLIT:TEST_SPLIT")
    entry.setdefault(head, {})[sub] = value
  return name, entry


def parse(values: Sequence[str], flag: str = "--evals") -> dict[str, dict]:
  """{name: entry} of the flag's values (each one or more entries separated by ';')."""
  out: dict[str, dict] = {}
  for value in values:
    for text in (t for t in split_top(value, ";") if t.strip()):
      name, entry = parse_one(text, flag)
      if name in out:
        raise ValueError(f"{flag}: the evaluator {name!r} is given twice; give each name once.")
      out[name] = entry
  return out


def apply(config: ml_collections.ConfigDict, values: Sequence[str], flag: str = "--evals"
          ) -> ml_collections.ConfigDict:
  """`config` (locked or not) with the flag's entries in config.evals, replacing entries of
  the same name; unchanged when there are none."""
  entries = parse(values, flag)
  if entries:
    with config.unlocked():
      for name, entry in entries.items():
        if name in config.evals:
          del config.evals[name]
        config.evals[name] = ml_collections.ConfigDict(entry)
    runner.specs(config)  # The combined set as the run will read it (one clear error).
  return config
