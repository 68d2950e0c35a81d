"""``--config run.yaml``: run-config fields from a YAML file (command-line flags override them).

    values, lines = read("run.yaml", RunConfig)   # {field: value}, {field: "run.yaml:12"}

The file is one mapping of `RunConfig` field names (underscores, as in config.json's ``config``;
dashes are accepted too) to values. An unknown or repeated key, a value of the wrong type or bad
YAML is a `ConfigError` naming the file, the line and the key; the ranges are checked with the
rest of the config (`training.config.check`), and a value from the file is reported with its
file and line. A value that is a string where a number is expected is parsed as on the command
line (YAML 1.1 reads ``3e-4`` as a string; ``3.0e-4`` is a float). The paper profiles ship as
such files (`training.configs`); a name of a shipped file may be given in place of a path.
"""
from __future__ import annotations

import argparse
import difflib
from dataclasses import fields
from pathlib import Path
from typing import get_type_hints

import yaml

from .ranges import ConfigError


def parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def scalar_type(hint):
    """The scalar type of a field annotation (``Optional[int]`` → int)."""
    args = getattr(hint, "__args__", None)
    return next(a for a in args if a is not type(None)) if args else hint


KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def optional(hint) -> bool:
    return type(None) in (getattr(hint, "__args__", None) or ())


def resolve(spec: str) -> Path:
    """The file ``spec`` names: a path, or the name of a shipped config (`training.configs`)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    from . import configs

    if spec in configs.names():
        return configs.path(spec)
    shipped = ", ".join(configs.names())
    raise ConfigError(f"--config {spec}: no such file (shipped configs: {shipped})")


def _convert(value, hint, where: str, key: str):
    t = scalar_type(hint)
    if value is None:
        if optional(hint):
            return None
        raise ConfigError(f"{where}: {key}: null is not allowed (give {KIND[t]})")
    if isinstance(value, str) and t is not str:
        try:
            return (parse_bool if t is bool else t)(value)
        except (ValueError, argparse.ArgumentTypeError):
            raise ConfigError(f"{where}: {key}: {value!r} is not {KIND[t]}") from None
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, t) or (t is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key}: {value!r} is not {KIND[t]}" + (" (quote it)" if t is str else ""))
    return value


def read(spec: str, config_cls) -> tuple[dict, dict]:
    """({field: value}, {field: "file:line"}) of the YAML file ``spec`` (a path or a shipped
    name), every key a field of ``config_cls`` and every value of its field's type."""
    path = resolve(spec)
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except OSError as e:
        raise ConfigError(f"--config {spec}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if root is None:
        return {}, {}
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(f"{path}:{root.start_mark.line + 1}: expected a mapping of run-config "
                          "fields (field: value, one per line)")
    hints = get_type_hints(config_cls)
    names = [f.name for f in fields(config_cls)]
    loader = yaml.SafeLoader("")
    values, lines = {}, {}
    for key_node, value_node in root.value:
        where = f"{path}:{key_node.start_mark.line + 1}"
        key = str(loader.construct_object(key_node))
        name = key.replace("-", "_")
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {near[0]}?)" if near else " (the fields are those of `python -m training.run --help`)"
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")
        if name in values:
            raise ConfigError(f"{where}: {key!r} is given twice (first at line {lines[name].rsplit(':', 1)[1]})")
        if not isinstance(value_node, yaml.ScalarNode):
            raise ConfigError(f"{where}: {key}: expected one value, got a "
                              f"{'list' if isinstance(value_node, yaml.SequenceNode) else 'mapping'}")
        values[name] = _convert(loader.construct_object(value_node), hints[name], where, key)
        lines[name] = where
    return values, lines
