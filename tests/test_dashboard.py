"""Dashboard pages on synthetic records (streamlit.testing.v1.AppTest): content, not just
"no exception". Numbers are checked against the records as written by the fixture."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest

import fixtures_records as fx
import records

APP = str(Path(__file__).resolve().parents[1] / "dashboards" / "app.py")


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    fx.write_fixture_runs(root)
    return root


def open_app(root: Path, monkeypatch, page: str | None = None) -> AppTest:
    monkeypatch.setenv("UPGE_RUNS_DIR", str(root))
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    if page:
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> dict[str, tuple[dict, pd.DataFrame]]:
    """Every Vega-Lite chart on the page: title -> (spec, its data as a DataFrame)."""
    out = {}
    for el in at.get("vega_lite_chart"):
        spec = json.loads(el.proto.spec)
        frames = [pa.ipc.open_stream(d.data.data).read_pandas() for d in el.proto.datasets]
        if el.proto.data.data:
            frames.append(pa.ipc.open_stream(el.proto.data.data).read_pandas())
        title = spec.get("title", "")
        out[title["text"] if isinstance(title, dict) else title] = (spec, pd.concat(frames))
    return out


def select_runs(at: AppTest, runs: list[str]) -> AppTest:
    at.sidebar.multiselect(key="selected_runs").set_value(runs).run()
    assert not at.exception
    return at


# ---------------------------------------------------------------------------------- pages


def test_runs_page_table(runs_dir, monkeypatch):
    at = open_app(runs_dir, monkeypatch)
    assert at.title[0].value == "Runs"
    table = at.dataframe[0].value.set_index("run")
    assert set(table.index) == {*(s.run_id for s in fx.STANDARD_RUNS), "probes-variance"}
    hpt = fx.STANDARD_RUNS[0]
    final = [r["value"] for r in fx.eval_rows(hpt, hpt.steps)
             if r["level"] == "all" and r["metric"] == "avg@k"][0]
    assert table.loc["hpt-s0", "final_accuracy"] == pytest.approx(final)
    assert table.loc["hpt-s0", "steps"] == hpt.steps
    assert table.loc["luffy-s0", "finetune"] == "LoRA r=8"
    assert table.loc["hpt-g2", "gate_gamma"] == 2
    assert table.loc["probes-variance", "state"] == "probe-only"
    metrics, _ = records.read_metrics(runs_dir / "hpt-s0")
    seconds = sum(m.get(records.STEP_SECONDS) or 0 for m in metrics)
    assert table.loc["hpt-s0", "wall_time_s"] == pytest.approx(seconds)


def test_runs_page_filter(runs_dir, monkeypatch):
    at = open_app(runs_dir, monkeypatch)
    at.multiselect(key="runs_methods").set_value(["hpt"]).run()
    table = at.dataframe[0].value
    assert sorted(table["run"]) == ["hpt-g1", "hpt-g2", "hpt-s0"]
    at.text_input(key="runs_text").set_value("g2").run()
    assert list(at.dataframe[0].value["run"]) == ["hpt-g2"]


def test_training_page_overlays_runs(runs_dir, monkeypatch):
    at = open_app(runs_dir, monkeypatch, "Training")
    select_runs(at, ["hpt-s0", "grpo-s0"])
    assert at.title[0].value == "Training"
    shown = charts(at)
    for title in ("Reward", "Entropy", "Response length", "Gradient norm",
                  "Offline / SFT data ratio"):
        assert title in shown
    _, reward = shown["Reward"]
    assert set(reward["run"]) == {"hpt-s0", "grpo-s0"}
    metrics, _ = records.read_metrics(runs_dir / "hpt-s0")
    expect = {m["step"]: m[records.ROLLOUT_REWARD] for m in metrics
              if m.get(records.ROLLOUT_REWARD) is not None and not math.isnan(
                  m[records.ROLLOUT_REWARD])}
    got = reward[reward["run"] == "hpt-s0"].set_index("step")["value"].to_dict()
    assert got == pytest.approx(expect)
    _, ratio = shown["Offline / SFT data ratio"]
    assert set(ratio["metric"]) == {records.GATE_OFFLINE_RATIO, records.GATE_SFT_FRACTION}
    held = [d for t, (s, d) in shown.items() if "Held-out accuracy" in t][0]
    assert {records.eval_accuracy_key(lv) for lv in fx.LEVELS} <= set(held["metric"])


def test_prompts_page_heatmap_and_difference(runs_dir, monkeypatch):
    at = open_app(runs_dir, monkeypatch, "Prompts")
    at.selectbox(key="prompts_run").set_value("hpt-s0").run()
    at.slider(key="prompts_cols").set_value(200).run()
    shown = charts(at)
    _, heat = shown["Rollout accuracy per prompt: hpt-s0"]
    samples, _ = records.read_samples(runs_dir / "hpt-s0")
    cell = [s["correct"] for s in samples
            if s["prompt_id"] == "level5-p0" and s["step"] == 7 and s["source"] == "rollout"]
    row = heat[(heat["prompt_id"] == "level5-p0") & (heat["step"] == 7)]
    assert float(row["accuracy"].iloc[0]) == pytest.approx(sum(cell) / len(cell))
    assert set(heat["level"]) == set(fx.LEVELS)
    at.selectbox(key="prompts_run_b").set_value("grpo-s0").run()
    diff = [d for t, (s, d) in charts(at).items() if "−" in t][0]
    one = diff[(diff["prompt_id"] == "level1-p1") & (diff["step"] == 3)].iloc[0]
    assert one["difference"] == pytest.approx(one["accuracy_a"] - one["accuracy_b"])
    solved = at.dataframe[0].value.set_index("prompt_id")
    assert len(solved) == len(fx.prompt_ids(fx.STANDARD_RUNS[0]))


def test_exploration_page_passk_and_crossing(runs_dir, monkeypatch):
    at = open_app(runs_dir, monkeypatch, "Exploration")
    select_runs(at, ["grpo-s0", "hpt-s0"])
    shown = charts(at)
    spec, curves = next(iter(shown.values()))
    assert '"type": "log"' in json.dumps(spec)
    grpo = fx.STANDARD_RUNS[3]
    expect = {r["k"]: r["value"] for r in fx.eval_rows(grpo, grpo.steps)
              if r["level"] == "all" and r["metric"] == "pass@k"}
    got = curves[(curves["run"] == "grpo-s0") & (curves["checkpoint"] == "trained")]
    assert got.set_index("k")["value"].to_dict() == pytest.approx(expect)
    assert (got["lo"] <= got["value"]).all() and (got["hi"] >= got["value"]).all()
    kstar = at.dataframe[0].value.set_index("run")
    assert kstar.loc["grpo-s0", "k_star"] == 8      # GRPO sharpens: the base catches up
    assert pd.isna(kstar.loc["hpt-s0", "k_star"])    # HPT keeps exploring


def test_estimators_page_table_and_sweeps(runs_dir, monkeypatch):
    at = open_app(runs_dir, monkeypatch, "Estimators")
    table = at.dataframe[0].value
    dr = table[(table["estimator"] == "dr_grpo") & (table["setting"] == "G=8,checkpoint=base")]
    assert float(dr["scale"].iloc[0]) == pytest.approx(7 / 8)
    shown = charts(at)
    (_, vs_g), = [v for t, v in shown.items() if "vs group size G" in t]
    assert set(vs_g["metric"]) == {"cos", "trCov", "SNR"}
    assert sorted(vs_g["x"].unique()) == list(fx.PROBE_GS)
    assert set(vs_g["s:checkpoint"]) == {"base"}
    (_, stale), = [v for t, v in shown.items() if "staleness" in t]
    ppo = stale[(stale["estimator"] == "ppo") & (stale["metric"] == "rel_bias")]
    assert ppo.set_index("x")["value"].to_dict() == pytest.approx({1: 0.02, 4: 0.08, 16: 0.32})


def test_compare_page_config_parts(runs_dir, monkeypatch):
    at = open_app(runs_dir, monkeypatch, "Compare")
    at.multiselect(key="cmp_runs").set_value(["hpt-s0", "grpo-s0"]).run()
    assert [s.value for s in at.subheader] == ["estimator", "run"]
    frames = [d.value for d in at.dataframe]
    estimator = [f for f in frames if "key" in f.columns and "mask" in set(f["key"])][0]
    mask = estimator.set_index("key").loc["mask"]
    assert (mask["hpt-s0"], mask["grpo-s0"]) == ("none", "clip(0.2)")
    summary = frames[0]
    assert list(summary.columns) == ["hpt-s0", "grpo-s0"]
    assert summary.loc["method", "grpo-s0"] == "grpo"
    assert "Final held-out accuracy per level" in charts(at)


# ------------------------------------------------------------------------- robustness


def test_empty_runs_dir_shows_first_command(tmp_path, monkeypatch):
    at = open_app(tmp_path / "runs", monkeypatch)
    assert at.title[0].value == "No runs yet"
    assert at.code[0].value == "python -m training.run hpt"


def test_corrupt_metrics_line_is_skipped_with_a_note(tmp_path, monkeypatch):
    run = fx.write_run(tmp_path, fx.RunSpec("hpt-s0", "hpt", steps=6, eval_every=3))
    fx.corrupt_metrics(run)
    (run / records.SAMPLES).open("a").write("not json\n")
    at = open_app(tmp_path, monkeypatch)
    assert "truncated or corrupt" in at.warning[0].value
    assert "metrics.jsonl" in at.warning[0].value
    assert at.dataframe[0].value.set_index("run").loc["hpt-s0", "steps"] == 6
    at.sidebar.radio(key="page").set_value("Prompts").run()
    assert not at.exception
    assert "samples.jsonl" in at.warning[0].value


def test_running_run_updates_on_refresh(tmp_path, monkeypatch):
    spec = fx.RunSpec("live", "hpt", steps=4, eval_every=2, state="running")
    fx.write_run(tmp_path, spec)
    at = open_app(tmp_path, monkeypatch)
    assert at.dataframe[0].value["steps"].iloc[0] == 4
    assert "still running" in " ".join(c.value for c in at.caption)
    fx.write_run(tmp_path, fx.scaled(spec, steps=9), first_step=5)
    at.run()
    assert at.dataframe[0].value["steps"].iloc[0] == 9


def test_missing_keys_and_probe_only_runs(tmp_path, monkeypatch):
    w = records.RunWriter(tmp_path / "bare")
    w.write_config({"something": 1})
    w.log_metrics(0, {})
    w.log_metrics(1, {"train/loss": 0.5})
    fx.write_probe_run(tmp_path)
    at = open_app(tmp_path, monkeypatch)
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["bare", "method"] == "?" and table.loc["bare", "steps"] == 1
    for page in ("Training", "Prompts", "Exploration", "Estimators", "Compare"):
        at.sidebar.radio(key="page").set_value(page).run()
        assert not at.exception, page
        assert at.title[0].value == page


def test_symlinked_run_outside_root_is_not_read(tmp_path, monkeypatch):
    outside = fx.write_run(tmp_path / "elsewhere", fx.RunSpec("secret", "hpt", steps=2))
    root = tmp_path / "runs"
    fx.write_run(root, fx.RunSpec("mine", "hpt", steps=2))
    (root / "secret").symlink_to(outside, target_is_directory=True)
    at = open_app(root, monkeypatch)
    assert list(at.dataframe[0].value["run"]) == ["mine"]
    assert "outside the runs directory" in at.warning[0].value


def test_every_page_renders_around_bad_runs(tmp_path, monkeypatch):
    """One dangling symlink, a directory named config.json, a binary metrics file or a
    malformed eval row once took down every page: now each is skipped with a note naming it,
    and the good runs are shown."""
    good = fx.write_fixture_runs(tmp_path, fx.STANDARD_RUNS[:4])
    bad = fx.write_bad_runs(tmp_path)
    at = open_app(tmp_path, monkeypatch)
    table = at.dataframe[0].value.set_index("run")
    assert set(good) | set(bad) <= set(table.index)
    assert table.loc["hpt-s0", "steps"] == fx.STANDARD_RUNS[0].steps
    select_runs(at, ["hpt-s0", "grpo-s0", *bad])
    notes = {}
    for page in ("Runs", "Training", "Prompts", "Exploration", "Estimators", "Compare"):
        at.sidebar.radio(key="page").set_value(page).run()
        if page == "Prompts":
            for run in ("dangling-link", "malformed-eval", "hpt-s0"):
                at.selectbox(key="prompts_run").set_value(run).run()
                assert not at.exception, (page, run, [e.value for e in at.exception])
                notes[f"{page} {run}"] = " ".join(w.value for w in at.warning)
        if page == "Estimators":
            at.selectbox(key="est_probe").set_value(fx.BAD_PROBE).run()
        if page == "Compare":
            at.multiselect(key="cmp_runs").set_value(["hpt-s0", *bad]).run()
        assert not at.exception, (page, [e.value for e in at.exception])
        assert at.title[0].value == page
        notes[page] = " ".join(w.value for w in at.warning)
        if page == "Training":
            _, reward = charts(at)["Reward"]
            assert {"hpt-s0", "grpo-s0", "malformed-eval"} <= set(reward["run"])
        if page == "Exploration":
            kstar = at.dataframe[0].value.set_index("run")
            assert kstar.loc["grpo-s0", "k_star"] == 8
        if page == "Estimators":
            (_, vs_g), = [v for t, v in charts(at).items() if "vs group size G" in t]
            assert sorted(vs_g["x"]) == [4, 8]             # G=16's value is not a number
    for run in ("config-is-a-dir", "binary-metrics"):
        assert f"{run}/{fx.BAD_RUNS[run]}" in notes["Runs"]
    assert "binary-metrics/status.json: not text" in notes["Runs"]
    assert "field 'step' is not an integer (got inf)" in notes["Runs"]
    assert "dangling-link/samples.jsonl: cannot be read (a symlink to" in notes["Prompts dangling-link"]
    last = {name: len((tmp_path / "malformed-eval" / name).read_text().splitlines())
            for name in (records.SAMPLES, records.EVAL_SCORES)}   # the bad rows come last
    assert (f"malformed-eval/samples.jsonl: line {last[records.SAMPLES]}: field 'correct' is "
            "not true or false (got 'false')") in notes["Prompts malformed-eval"]
    assert (f"malformed-eval/eval/scores.jsonl: line {last[records.EVAL_SCORES] - 1}: field "
            "'step' is not a number (got 'last')") in notes["Exploration"]
    assert (f"malformed-eval/eval/scores.jsonl: line {last[records.EVAL_SCORES]}: field 'step' "
            "is missing") in notes["Exploration"]
    assert (f"malformed-eval/probes/{fx.BAD_PROBE}.jsonl: line 3: field 'value' is not a number "
            "(got 'n/a')") in notes["Estimators"]


def test_estimators_page_plane_chooses_a_runs_on_policy_or_stale_rows(tmp_path, monkeypatch):
    run = fx.write_run(tmp_path, fx.RunSpec("hpt-s0", "hpt", steps=4, eval_every=2))
    fx.write_run_probe(run)
    records.RunWriter(run).log_probe("variance", fx.run_probe_rows(40, stale=10))
    at = open_app(tmp_path, monkeypatch, "Estimators")
    (title, (_, data)), = [(t, v) for t, v in charts(at).items() if t.startswith("Bias–variance plane")]
    assert "stale" not in title and len(data) == 5        # one point per estimator: the on-policy rows
    assert data.set_index("estimator").loc["grpo", "y"] == pytest.approx(0.8)
    at.selectbox(key="est_plane_stale").set_value(10).run()
    (title, (_, data)), = [(t, v) for t, v in charts(at).items() if t.startswith("Bias–variance plane")]
    assert "stale=10" in title and len(data) == 5 and set(data["s:stale"]) == {10}
    assert data.set_index("estimator").loc["grpo", "y"] == pytest.approx(0.7)


def test_estimators_page_bias_variance_plane_of_a_runs_checkpoints(tmp_path, monkeypatch):
    run = fx.write_run(tmp_path, fx.RunSpec("hpt-s0", "hpt", steps=4, eval_every=2))
    fx.write_run_probe(run)
    at = open_app(tmp_path, monkeypatch, "Estimators")
    planes = {t: v for t, v in charts(at).items() if t.startswith("Bias–variance plane")}
    (title, (spec, data)), = planes.items()
    assert "step 40" in title                     # the slider starts at the last checkpoint
    assert sorted(data["estimator"].unique()) == ["dr_grpo", "grpo", "reinforce", "rloo", "sft"]
    assert set(data["s:step"]) == {40}
    marks = [layer["mark"]["type"] if isinstance(layer["mark"], dict) else layer["mark"]
             for layer in spec["layer"]]
    text = [layer for layer, m in zip(spec["layer"], marks) if m == "text"]
    assert text and text[0]["encoding"]["text"]["field"] == "estimator"   # labelled by name
    axes = {layer["encoding"][a]["title"] for layer in spec["layer"] for a in ("x", "y")
            if a in layer["encoding"] and "title" in layer["encoding"][a]}
    assert axes == {"tr Cov of one update (log)", "cos to the reference gradient"}
    grpo = data[data["estimator"] == "grpo"].iloc[0]
    assert (grpo["x"], grpo["y"]) == pytest.approx((0.10, 0.9 - 0.1))
    assert grpo["y_lo"] == pytest.approx(0.8 - 1.96 * 0.02)
    at.select_slider(key="est_plane_step").set_value(0).run()
    (title, (_, data)), = [(t, v) for t, v in charts(at).items() if t.startswith("Bias–variance plane")]
    assert "step 0" in title and set(data["s:step"]) == {0}
    assert data.set_index("estimator").loc["grpo", "y"] == pytest.approx(0.9)
    at.radio(key="est_plane_y").set_value("rel_bias").run()
    (_, (spec, data)), = [(t, v) for t, v in charts(at).items() if t.startswith("Bias–variance plane")]
    assert data.set_index("estimator").loc["dr_grpo", "y"] == pytest.approx(1 / 8)


# ------------------------------------------------------------------ training.compare records


def frame_with(at: AppTest, column: str) -> pd.DataFrame:
    """The first table on the page whose first column is ``column``."""
    return next(d.value for d in at.dataframe if list(d.value.columns[:1]) == [column])


def test_compare_page_shows_a_comparison_record(tmp_path, monkeypatch):
    """A comparison made by `records.comparison` from run directories as `training.compare`
    leaves them, under a runs root that also holds a plain run: its Table-2-shaped table, the
    tuned learning rates, the paired differences and the pass@k curves, equal to the record."""
    from records import comparison

    path = fx.write_comparison(tmp_path / "compare")
    fx.write_run(tmp_path, fx.RunSpec("hpt-s0", "hpt", steps=4, eval_every=2))
    rec = comparison.read(path)
    at = open_app(tmp_path, monkeypatch, "Compare")
    assert at.header[0].value == "Comparisons (training.compare)"
    assert at.selectbox(key="cmp_record").value == "compare"
    table = frame_with(at, "method").set_index("method")
    results = comparison.results_of(rec)
    for preset in fx.COMPARED:
        m, h, n = comparison.column_stats(results[preset], "Llevel5")
        assert n == len(fx.COMPARED_SEEDS) and h > 0
        assert table.loc[f"{preset} (n=3)", "Llevel5"] == f"{m:.1f} ± {h:.1f}"
    assert table.loc["base model", "Avg"] == f"{100 * rec['base']['scores']['Avg']:.1f}"
    assert table.loc["hpt (n=3)", "k*"] == "— (3 never)"
    tuning = frame_with(at, "preset").set_index("preset")
    assert tuning["chosen lr"].to_dict() == {p: f"{v:g}" for p, v in fx.TUNED_LR.items()}
    assert tuning.loc["grpo", "validation avg@k (%), lr=0.0001"] == 30.0
    paired = frame_with(at, "hpt − method (paired by seed)").set_index("hpt − method (paired by seed)")
    d = rec["paired"]["Avg"]["sft"]
    assert paired.loc["sft", "Avg"] == f"{d['mean']:+.1f} ± {d['ci']:.1f}"
    spec, curves = charts(at)["pass@k: base vs each method's mean over seeds"]
    assert '"type": "log"' in json.dumps(spec)
    grpo = curves[curves["run"] == "grpo"].set_index("k")
    for k in fx.KS:
        m, h = comparison.mean_ci([r["passk"][k] for r in rec["presets"]["grpo"]])
        assert grpo.loc[k, "value"] == pytest.approx(m)
        assert (grpo.loc[k, "lo"], grpo.loc[k, "hi"]) == pytest.approx((m - h, m + h))
    base = curves[curves["run"] == "base model"].set_index("k")["value"].to_dict()
    assert base == pytest.approx(rec["base"]["passk"])
    at.multiselect(key="cmp_runs").set_value(["hpt-s0"]).run()   # the run-by-run part is still there
    assert "Pick two or more runs." in [i.value for i in at.info]


def test_compare_page_over_comparisons_only_and_a_bad_record(tmp_path, monkeypatch):
    """A runs root holding only comparison directories opens on the comparisons; a record that
    cannot be read is a note naming its file and field, and the other records are still shown."""
    fx.write_comparison(tmp_path / "arith", presets=("hpt", "sft"), seeds=(0, 1))
    bad = fx.write_comparison(tmp_path / "offpolicy" / "broken", presets=("hpt",), seeds=(0,))
    raw = json.loads(bad.read_text())
    raw["presets"]["hpt"][0]["seed"] = "zero"
    bad.write_text(json.dumps(raw))
    at = open_app(tmp_path, monkeypatch)
    assert at.title[0].value == "Compare"
    assert at.selectbox(key="cmp_record").options == ["arith", "offpolicy/broken"]
    assert list(frame_with(at, "method")["method"]) == [
        "base model", "hpt (n=2)", "sft (n=2)"]
    at.selectbox(key="cmp_record").set_value("offpolicy/broken").run()
    assert not at.exception
    assert ("offpolicy/broken/comparison.json: field 'presets.hpt[0].seed' is not an integer"
            in at.warning[0].value)
