"""The dashboard's data layer (pure functions): runs-dir choice, frames, pass@k, config diff,
and the rule that the dashboard never imports torch."""
from __future__ import annotations

import ast
import itertools
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from records import passk
from records import tables as data

REPO = Path(__file__).resolve().parents[1]


def test_runs_dir_from_arg_then_env_then_default():
    env = {data.ENV_RUNS_DIR: "/env/runs"}
    assert data.resolve_runs_dir(["--runs", "a/b"], env) == Path("a/b")
    assert data.resolve_runs_dir(["x", "--runs=c"], env) == Path("c")
    assert data.resolve_runs_dir(["tests/test_x.py", "-q"], env) == Path("/env/runs")
    assert data.resolve_runs_dir([], {}) == Path("runs")


@pytest.mark.parametrize("n,c", [(5, 0), (5, 2), (6, 6), (8, 3)])
def test_pass_at_k_equals_brute_force_over_k_subsets(n, c):
    outcomes = [1] * c + [0] * (n - c)
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(outcomes, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert passk.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
    with pytest.raises(ValueError):
        passk.pass_at_k(n, c, n + 1)


def test_crossing_k_is_first_k_where_base_catches_up():
    ks = [1, 2, 4, 8, 16]
    base = [0.2, 0.35, 0.5, 0.7, 0.9]
    trained = [0.5, 0.6, 0.65, 0.7, 0.75]
    rows = [{"run": "r", "benchmark": "b", "checkpoint": cp, "k": k, "value": v}
            for cp, vals in (("base", base), ("trained", trained)) for k, v in zip(ks, vals)]
    out = passk.crossing_k(pd.DataFrame(rows)).iloc[0]
    assert out["k_star"] == 8 and out["k_max"] == 16
    never = [r for r in rows if not (r["checkpoint"] == "base" and r["k"] >= 8)]
    assert passk.crossing_k(pd.DataFrame(never))["k_star"].isna().all()


def test_curves_from_samples_match_the_estimator():
    rows = [{"step": s, "prompt_id": p, "sample_idx": i, "source": "rollout",
             "correct": bool(i < c)} for s, (p, c) in itertools.product((0, 3), (("a", 1),
                                                                              ("b", 3)))
            for i in range(4)]
    cur = passk.curves_from_samples("r", pd.DataFrame(rows))
    at = cur[cur["checkpoint"] == "trained"].set_index("k")["value"]
    assert list(at.index) == [1, 2, 4]
    assert at[2] == pytest.approx((passk.pass_at_k(4, 1, 2) + passk.pass_at_k(4, 3, 2)) / 2)


def test_config_diff_part_by_part():
    a = {"preset": "hpt", "seed": 0, "estimator": {"mask": "none", "advantage": "r-mean"}}
    b = {"preset": "grpo", "seed": 0, "estimator": {"mask": "clip", "advantage": "r-mean"},
         "lr": 1e-6}
    diff = data.config_diff({"a": a, "b": b})
    got = {(r.part, r.key): (r.a, r.b) for r in diff.itertuples()}
    assert got == {("estimator", "mask"): ("none", "clip"), ("run", "preset"): ("hpt", "grpo"),
                   ("run", "lr"): ("—", "1e-06")}
    assert len(data.config_diff({"a": a, "b": b}, only_differences=False)) == 5


def test_metrics_frame_keeps_last_row_of_a_repeated_step():
    df = data.metrics_frame([{"step": 1, "x": 1.0}, {"step": 2, "x": 2.0},
                             {"step": 2, "x": 3.0}, {"step": 0, "x": 0.0}])
    assert df["step"].tolist() == [0, 1, 2] and df["x"].tolist() == [0.0, 1.0, 3.0]


def test_bin_steps_averages_within_bins():
    acc = pd.DataFrame({"prompt_id": "p", "level": "l", "step": range(10),
                        "accuracy": np.arange(10) / 10, "n": 8})
    out = data.bin_steps(acc, 5)
    assert out["step"].tolist() == [0, 2, 4, 6, 8]
    assert out["accuracy"].tolist() == pytest.approx([0.05, 0.25, 0.45, 0.65, 0.85])
    assert out["n"].tolist() == [16] * 5


def test_parse_setting():
    assert data.parse_setting("G=8, K=4,checkpoint=mid,eps=0.2") == {
        "G": 8, "K": 4, "checkpoint": "mid", "eps": 0.2}
    assert data.parse_setting(math.nan) == {}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["dashboards", "paper_figures"])
def test_no_torch_or_training_imports(package):
    forbidden = {"torch", "estimators", "training", "probes", "pickle"}
    for path in (REPO / package).rglob("*.py"):
        assert not imported_modules(path) & forbidden, path


def test_app_modules_load_without_torch():
    code = ("import sys; import dashboards.views, records.tables, paper_figures; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_staleness_from_estimator_flags_as_probes_write_them():
    """probes.variance names stale variants 'ppo[eps=0.2,K=4]' with K absent from the setting."""
    assert data.split_estimator("ppo[eps=0.2,K=4]") == ("ppo", {"eps": 0.2, "K": 4})
    assert data.split_estimator("hpt[γ=1,const]") == ("hpt", {"γ": 1, "const": True})
    assert data.join_estimator("hpt", {"γ": 1, "const": True}) == "hpt[γ=1,const]"
    rows = pd.DataFrame([{"probe": "variance", "estimator": f"ppo[eps={e},K={k}]",
                          "setting": f"G=8,checkpoint={c}", "metric": "rel_bias",
                          "value": e * k + (c == "mid"), "stderr": 0.01}
                         for e in (0.05, 0.2) for k in (1, 4) for c in ("base", "mid")])
    probes = data.with_setting_columns(rows)
    assert data.staleness_key(probes) == "K"
    assert data.varying_settings(probes, "K") == ["s:checkpoint"]   # base and mid per point
    out = data.sweep(probes[probes["s:checkpoint"] == "base"], "K", ["rel_bias"])
    assert sorted(out["series"].unique()) == ["ppo[eps=0.05]", "ppo[eps=0.2]"]
    assert out.set_index(["series", "x"])["value"][("ppo[eps=0.2]", 4)] == pytest.approx(0.8)
    assert out["hi"].sub(out["value"]).tolist() == pytest.approx([1.96 * 0.01] * 4)


def test_a_runs_directory_that_cannot_be_listed_is_a_note(tmp_path, monkeypatch):
    import records

    def denied(root):  # root may list any directory here, so the refusal is simulated
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(records, "list_runs", denied)
    assert data.discover_runs(tmp_path) == (
        [], [f"{tmp_path}: cannot be listed (Permission denied); no runs read"])
