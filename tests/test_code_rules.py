"""Rules of the code base checked on its source: every metric key is declared once in `records`
(and nowhere else written as a bare string), and the dependency direction of DESIGN.md holds
(dashboards/ and paper_figures/ import only `records` of the project, `estimators` only torch).
Each checker is tested on planted source first, so a rule that can no longer fail is noticed."""
from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

import pytest

import records

REPO = Path(__file__).resolve().parents[1]
PRODUCT = ("estimators", "probes", "training", "integrations", "dashboards", "paper_figures")
TORCH_ONLY = "estimators"   # imports only torch and the standard library: it cannot import records

# ------------------------------------------------------------------------------ metric keys

TABLE_ROW = re.compile(r"^``([^`\s]+)``\s")
KEY = re.compile(r"^([a-z]+)/[A-Za-z0-9_@<>]*(?:/[A-Za-z0-9_@<>]+)*/?$")
PLACEHOLDER = re.compile(r"<[^>]*>")


def documented_keys() -> list[str]:
    """The keys of the metric table in the records docstring (``<x>`` marks a variable part)."""
    return [m.group(1) for line in records.__doc__.splitlines() if (m := TABLE_ROW.match(line))
            and "/" in m.group(1)]


def constant_keys() -> dict[str, str]:
    """Module-level constants of records that are metric keys (not files, not prefixes)."""
    return {name: value for name, value in vars(records).items()
            if name.isupper() and isinstance(value, str) and KEY.match(value)
            and not value.endswith("/")}


def declared(text: str, table: list[str]) -> bool:
    """Whether a key (or a key pattern with ``<>`` parts, or a prefix ending in '/') is in the
    table: exactly, by a table pattern, or as the beginning of a table key."""
    if text.endswith("/"):
        return any(k.startswith(text) for k in table)
    canon = PLACEHOLDER.sub("<>", text)
    for key in table:
        if PLACEHOLDER.sub("<>", key) == canon:
            return True
        pattern = "[^/]+".join(re.escape(part) for part in PLACEHOLDER.split(key))
        if re.fullmatch(pattern, text):
            return True
    return False


def key_literals(source: str, namespaces: set[str]) -> list[tuple[int, str]]:
    """(line, text) of every string literal (f-strings with ``<>`` for their fields) that looks
    like a metric key of one of ``namespaces``. Paths are not keys: a segment with a dot (a file
    name), a space or a dash does not match."""
    tree = ast.parse(source)
    inside_f = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in inside_f:
            text = node.value
        elif isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "<>" for v in node.values)
        else:
            continue
        m = KEY.match(text)
        if m and m.group(1) in namespaces:
            found.append((node.lineno, text))
    return sorted(found)


def product_files():
    for package in PRODUCT:
        yield from sorted((REPO / package).rglob("*.py"))


def namespaces() -> set[str]:
    return {k.split("/")[0] for k in documented_keys()}


def test_records_table_and_constants_declare_the_same_keys():
    table = documented_keys()
    assert len(table) == len(set(table)), "a key is documented twice"
    consts = constant_keys()
    assert len(set(consts.values())) == len(consts), "two constants name one key"
    assert sorted(set(consts.values()) - set(table)) == [], "constants missing from the docstring table"
    exact = [k for k in table if not PLACEHOLDER.search(k)]
    assert sorted(set(exact) - set(consts.values())) == [], "documented keys without a constant"
    assert declared(records.eval_accuracy_key("level 3"), table)
    assert declared(records.eval_passk_key(16), table)


def test_key_scanner_finds_keys_and_leaves_paths_alone():
    planted = textwrap.dedent('''
        a = "train/new_metric"
        b = f"rollout/{name}_rate"
        c = "eval/"
        ok = ["eval/scores.jsonl", "data/hpt_eval/PROVENANCE.md", "runs/compare", "tokens/s",
              "Qwen/Qwen2.5-Math-1.5B", "rl/kl", "LUFFY/data/valid.parquet", "see train/loss"]
        d = f"eval/pass@{k}"
        ''')
    found = key_literals(planted, {"train", "rollout", "eval", "data"})
    assert found == [(2, "train/new_metric"), (3, "rollout/<>_rate"), (4, "eval/"),
                     (7, "eval/pass@<>")]
    table = documented_keys()
    assert [t for _, t in found if not declared(t, table)] == ["train/new_metric", "rollout/<>_rate"]


def test_every_metric_key_in_product_code_is_declared_in_records():
    table, spaces = documented_keys(), namespaces()
    bad = [f"{path.relative_to(REPO)}:{line}: {text!r}"
           for path in product_files() for line, text in key_literals(path.read_text(), spaces)
           if not declared(text, table)]
    assert not bad, ("metric keys not declared in the records docstring table (add a row and a "
                     "constant in records/__init__.py):\n" + "\n".join(bad))


def test_metric_keys_are_records_constants_wherever_records_can_be_imported():
    """Outside `estimators` (torch only) a key is never a bare literal: use records.X."""
    spaces = namespaces()
    bad = [f"{path.relative_to(REPO)}:{line}: {text!r}"
           for path in product_files() if path.parts[len(REPO.parts)] != TORCH_ONLY
           for line, text in key_literals(path.read_text(), spaces)]
    assert not bad, "metric keys written as bare strings (use the records constant):\n" + "\n".join(bad)


# ---------------------------------------------------------------------------- import rules

PROJECT = ({p.name for p in REPO.iterdir() if (p / "__init__.py").exists()}
           | {p.stem for p in REPO.glob("*.py")})
ALLOWED = {  # package -> project packages it may import (besides itself)
    "dashboards": {"records"},
    "paper_figures": {"records"},
    "records": set(),
    TORCH_ONLY: set(),
}
THIRD_PARTY = {TORCH_ONLY: {"torch"}}   # packages held to a closed list of outside imports


def imports(source: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import; relative imports stay in the package."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name.split(".")[0]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module.split(".")[0]))
    return out


def broken_rules(package: str, source: str) -> list[tuple[int, str]]:
    """Imports of ``source`` (a file of ``package``) that its rule forbids."""
    bad = []
    for line, name in imports(source):
        if name == package or name == "__future__":
            continue
        if name in PROJECT and name not in ALLOWED[package]:
            bad.append((line, name))
        elif (package in THIRD_PARTY and name not in PROJECT and name not in sys.stdlib_module_names
              and name not in THIRD_PARTY[package]):
            bad.append((line, name))
    return bad


def test_import_checker_catches_bad_imports():
    src = "import json\nimport torch\nfrom training import run\nfrom . import parts\nimport numpy\n"
    assert broken_rules("estimators", src) == [(3, "training"), (5, "numpy")]
    assert broken_rules("dashboards", src) == [(3, "training")]
    assert broken_rules("paper_figures", "from dashboards import charts\nimport records\n") == [
        (1, "dashboards")]
    assert {"records", "estimators", "training", "dashboards", "paper_figures"} <= PROJECT


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_what_their_rule_allows(package):
    bad = [f"{path.relative_to(REPO)}:{line}: imports {name}"
           for path in sorted((REPO / package).rglob("*.py"))
           for line, name in broken_rules(package, path.read_text())]
    assert not bad, (f"{package}/ may import {sorted(ALLOWED[package]) or 'nothing'} of the project"
                     + (f" and {sorted(THIRD_PARTY[package])} outside the standard library"
                        if package in THIRD_PARTY else "") + ":\n" + "\n".join(bad))
