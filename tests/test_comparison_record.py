"""`records.comparison`: the comparison record of `training.compare` built from run directories
(numbers checked against the eval rows the fixture wrote and an independent t quantile), read
back with every field checked, and found under a runs root."""
from __future__ import annotations

import json
import math
import statistics

import pytest
from scipy import stats

import fixtures_records as fx
import records
from records import comparison


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs") / "compare"
    path = fx.write_comparison(root)
    return root, path, comparison.read(path)


def final_rows(run_dir):
    """The fixture's own final eval rows of a run, by (level, metric, k)."""
    cfg = records.read_config(run_dir)
    rows, _ = records.read_eval(run_dir)
    last = max(r["step"] for r in rows)
    assert last == cfg["max_steps"]
    return {(r["level"], r["metric"], r["k"]): r["value"] for r in rows if r["step"] == last}


def test_t_quantiles_equal_scipys():
    for df, q in comparison.T95.items():
        assert q == pytest.approx(stats.t.ppf(0.975, df), abs=5e-4)


def test_record_holds_every_run_with_its_scores_and_curve(made):
    root, path, rec = made
    assert path == root / records.COMPARISON
    assert rec["task"] == "arith" and rec["command"]["reference"] == "hpt"
    assert comparison.chosen(rec) == fx.TUNED_LR
    assert list(rec["presets"]) == list(fx.COMPARED)
    for preset, runs in rec["presets"].items():
        assert [r["seed"] for r in runs] == list(fx.COMPARED_SEEDS)
        for r in runs:
            assert r["run"] == f"{preset}-lr{fx.TUNED_LR[preset]:g}-s{r['seed']}"
            got = final_rows(root / r["run"])
            assert r["scores"]["Avg"] == got[("all", "avg@k", fx.AVG_K)]
            assert r["scores"]["Llevel5"] == got[("level5", "avg@k", fx.AVG_K)]
            assert r["scores"][f"pass@{max(fx.KS)}"] == got[("all", "pass@k", max(fx.KS))]
            assert r["passk"] == {k: got[("all", "pass@k", k)] for k in fx.KS}
            base = rec["base"]["passk"]
            crossing = [k for k in fx.KS if base[k] >= r["passk"][k]]
            want = crossing[0] if crossing else math.nan
            assert r["scores"]["k*"] == pytest.approx(want, nan_ok=True)
    ks = {r["scores"]["k*"] for r in rec["presets"]["grpo"]}
    assert ks and all(8 <= k <= 16 for k in ks)         # GRPO sharpens: the base catches up
    assert all(math.isnan(r["scores"]["k*"]) for r in rec["presets"]["hpt"])


def test_mean_ci_and_paired_differences_equal_an_independent_computation(made):
    _, _, rec = made
    results = comparison.results_of(rec)
    t = stats.t.ppf(0.975, len(fx.COMPARED_SEEDS) - 1)
    for preset, runs in results.items():
        xs = [100 * s["Avg"] for s in runs]
        m, h, n = comparison.column_stats(runs, "Avg")
        assert n == 3 and m == pytest.approx(statistics.mean(xs))
        assert h == pytest.approx(t * statistics.stdev(xs) / math.sqrt(3), rel=1e-3)
        assert h > 0                                  # the seeds differ
    by_seed = {p: {s["seed"]: s["Avg"] for s in runs} for p, runs in results.items()}
    diffs = [100 * (by_seed["hpt"][s] - by_seed["sft"][s]) for s in fx.COMPARED_SEEDS]
    got = rec["paired"]["Avg"]["sft"]
    assert got["n"] == 3 and got["mean"] == pytest.approx(statistics.mean(diffs))
    assert got["ci"] == pytest.approx(t * statistics.stdev(diffs) / math.sqrt(3), rel=1e-3)
    assert set(rec["paired"]) == {"Avg", f"pass@{max(fx.KS)}"}
    assert "hpt" not in rec["paired"]["Avg"]


def test_tables_of_the_record(made):
    _, _, rec = made
    header, rows = comparison.table_rows(comparison.results_of(rec), rec["base"]["scores"])
    assert header == ["method", "Llevel1", "Llevel3", "Llevel5", "Avg", "pass@64", "k*"]
    table = {r[0]: dict(zip(header, r)) for r in rows}
    assert table["base model"]["Avg"] == f"{100 * rec['base']['scores']['Avg']:.1f}"
    m, h, _ = comparison.column_stats(comparison.results_of(rec)["grpo"], "Avg")
    assert table["grpo (n=3)"]["Avg"] == f"{m:.1f} ± {h:.1f}"
    assert table["grpo (n=3)"]["k*"] in ("8", "16") and table["hpt (n=3)"]["k*"] == "— (3 never)"
    header, rows = comparison.paired_rows(rec["paired"], "hpt", list(rec["presets"]))
    assert header[0] == "hpt − method (paired by seed)" and [r[0] for r in rows] == ["grpo", "sft"]
    d = rec["paired"]["Avg"]["grpo"]
    assert rows[0][1] == f"{d['mean']:+.1f} ± {d['ci']:.1f}"


def test_task_is_read_from_the_runs_config(tmp_path):
    runs = fx.comparison_runs(tmp_path, presets=("sft",), seeds=(0,))
    (_, run), = runs["sft"]
    cfg = records.read_config(run)
    records.write_json(run / records.CONFIG, {**cfg, "config": {"task": "arith-offpolicy"}})
    command = {"presets": ["sft"], "seeds": [0], "reference": "hpt", "tune": "none",
               "grid": [], "tune_seeds": [], "run_args": []}
    rec = comparison.read(comparison.write(tmp_path, comparison.build(runs, tmp_path, command)))
    assert rec["task"] == "arith-offpolicy" and comparison.chosen(rec) == {}
    assert rec["paired"] == {"Avg": {}, "pass@64": {}}


@pytest.mark.parametrize("edit,message", [
    (lambda r: r.pop("presets"), "field 'presets' is missing"),
    (lambda r: r["command"].update(seeds="0,1"), "field 'command.seeds' is not a list (got '0,1')"),
    (lambda r: r["presets"]["sft"][1].update(seed="one"),
     "field 'presets.sft[1].seed' is not an integer (got 'one')"),
    (lambda r: r["presets"]["grpo"][0]["scores"].update(Avg="high"),
     "field 'presets.grpo[0].scores.Avg' is not a number (got 'high')"),
    (lambda r: r["base"]["passk"].update(many=0.5), "field 'base.passk' has a key 'many'"),
    (lambda r: r["paired"]["Avg"]["sft"].pop("ci"), "field 'paired.Avg.sft.ci' is missing"),
    (lambda r: r.update(tuning=[]), "field 'tuning' is not a JSON object"),
    (lambda r: r["tuning"]["scores"]["sft"].update({"0.001": None}),
     "field 'tuning.scores.sft.0.001' is not a number (got None)"),
])
def test_bad_records_are_named_by_file_and_field(made, tmp_path, edit, message):
    _, path, _ = made
    raw = json.loads(path.read_text())
    edit(raw)
    bad = tmp_path / records.COMPARISON
    bad.write_text(json.dumps(raw))
    with pytest.raises(records.RecordError) as e:
        comparison.read(bad)
    assert str(e.value).startswith(str(bad)) and message in str(e.value)


def test_unreadable_files_are_named(tmp_path):
    path = tmp_path / records.COMPARISON
    with pytest.raises(records.RecordError, match="no such file"):
        comparison.read(path)
    path.write_text('{"command": ')
    with pytest.raises(records.RecordError, match=f"{path}: not valid JSON"):
        comparison.read(path)


def test_find_looks_below_the_root_but_not_into_runs(made, tmp_path):
    root, path, _ = made
    assert comparison.find(root) == [path]                   # the comparison dir itself
    assert comparison.find(root.parent) == [path]            # one level up
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / records.COMPARISON).write_text("{}")
    inside_run = tmp_path / "a" / "run"
    records.RunWriter(inside_run).write_config({})
    (inside_run / "sub").mkdir()
    (inside_run / "sub" / records.COMPARISON).write_text("{}")
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    assert comparison.find(tmp_path) == [deep / records.COMPARISON]
    assert comparison.find(tmp_path, max_depth=2) == []
    assert comparison.find(tmp_path / "missing") == []
