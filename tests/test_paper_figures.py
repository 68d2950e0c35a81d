"""Paper figures from synthetic records: every script writes a non-empty PNG + PDF, and the data
it returns (what it plotted) equals the records' numbers. Missing runs are named by command."""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

import fixtures_records as fx
import records
from paper_figures import SCRIPTS, paper_numbers
from paper_figures import __main__ as cli
from paper_figures.common import RunIndex


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    fx.write_fixture_runs(root)
    return root


@pytest.fixture(scope="module")
def made(runs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("figures")
    index = RunIndex(runs_dir)
    return {name: make(index, out) for name, make in SCRIPTS.items()}


def metric_series(run_dir: Path, name: str) -> dict[int, float]:
    rows, _ = records.read_metrics(run_dir)
    return {r["step"]: r[name] for r in rows
            if isinstance(r.get(name), float) and not math.isnan(r[name])}


def curve(result, panel: str, label: str, x: str = "step") -> dict:
    df = result.data
    sub = df[(df["panel"] == panel) & (df["curve"] == label)]
    return sub.set_index(x)["value"].to_dict()


# ---------------------------------------------------------------------------- images


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_script_writes_png_and_pdf(made, name):
    result = made[name]
    assert [p.suffix for p in result.files] == [".png", ".pdf"]
    png, pdf = result.files
    image = mpimg.imread(png)
    assert image.shape[0] > 200 and image.shape[1] > 200
    assert image[..., :3].std() > 0.01                       # not a blank canvas
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 2000
    assert not result.data.empty


# ------------------------------------------------------------------ plotted == records


def test_fig1_has_the_four_parts(made):
    assert list(dict.fromkeys(made["fig1_upge"].data["part"])) == [
        "Stabilization Mask", "Reference Policy", "Advantage Estimation", "Likelihood Gradient"]


def test_fig2_passk_equals_eval_rows(made):
    result = made["fig2_passk"]
    hpt, grpo = fx.STANDARD_RUNS[0], fx.STANDARD_RUNS[3]

    def rows(spec, step):
        return {r["k"]: r["value"] for r in fx.eval_rows(spec, step)
                if r["level"] == "all" and r["metric"] == "pass@k"}
    assert curve(result, "arith / all", "HPT", "k") == pytest.approx(rows(hpt, hpt.steps))
    assert curve(result, "arith / all", "GRPO", "k") == pytest.approx(rows(grpo, grpo.steps))
    assert curve(result, "arith / all", "Base", "k") == pytest.approx(rows(hpt, 0))
    assert set(result.data["curve"]) == {"HPT", "LUFFY", "GRPO", "SFT", "SFT→GRPO", "Base"}


def rollout_means(run_dir: Path) -> dict[tuple[str, int], float]:
    rows, _ = records.read_samples(run_dir)
    cells: dict[tuple[str, int], list[bool]] = {}
    for r in rows:
        if r["source"] == "rollout":
            cells.setdefault((r["prompt_id"], r["step"]), []).append(r["correct"])
    return {k: sum(v) / len(v) for k, v in cells.items()}


def test_fig3_heatmap_equals_samples(made, runs_dir):
    cells = made["fig3_heatmap"].data
    expect = rollout_means(runs_dir / "sft_then_grpo-s0")
    got = {(p, s): a for p, s, a in zip(cells["prompt_id"], cells["step"], cells["accuracy"])}
    assert got == pytest.approx(expect)
    assert set(cells["level"]) == set(fx.LEVELS)


def test_fig4_difference_is_hpt_minus_sft_then_grpo(made, runs_dir):
    diff = made["fig4_heatmap_diff"].data
    hpt, base = rollout_means(runs_dir / "hpt-s0"), rollout_means(runs_dir / "sft_then_grpo-s0")
    got = {(p, s): d for p, s, d in zip(diff["prompt_id"], diff["step"], diff["difference"])}
    assert got == pytest.approx({k: hpt[k] - base[k] for k in hpt})


def test_fig5_validation_accuracy_per_level(made, runs_dir):
    result = made["fig5_val_accuracy"]
    assert set(result.data["panel"]) == set(fx.LEVELS)
    for label, run in (("GRPO", "grpo-s0"), ("LUFFY", "luffy-s0"), ("HPT", "hpt-s0")):
        expect = metric_series(runs_dir / run, records.eval_accuracy_key("level5"))
        assert curve(result, "level5", label) == pytest.approx(expect)
    assert sorted(curve(result, "level5", "HPT")) == [0, 5, 10, 15, 20]


def test_fig6_offline_ratio(made, runs_dir):
    result = made["fig6_offline_ratio"]
    hpt = curve(result, "offline data ratio", "HPT (tiny-qwen2)")
    assert hpt == pytest.approx(metric_series(runs_dir / "hpt-s0", records.GATE_OFFLINE_RATIO))
    luffy = list(curve(result, "offline data ratio", "LUFFY").values())
    assert luffy and all(v == pytest.approx(1 / 8) for v in luffy)


def test_fig7_entropy_and_length(made, runs_dir):
    result = made["fig7_entropy_length"]
    for panel, name in (("entropy", records.TRAIN_ENTROPY),
                        ("response length", records.ROLLOUT_LENGTH)):
        for label, run in (("GRPO", "grpo-s0"), ("HPT", "hpt-s0")):
            assert curve(result, panel, label) == pytest.approx(
                metric_series(runs_dir / run, name))


def test_fig8_gate_ablation(made, runs_dir):
    result = made["fig8_gate_ablation"]
    for g, run in ((0, "hpt-s0"), (1, "hpt-g1"), (2, "hpt-g2")):
        for panel, name in (("training reward", records.ROLLOUT_REWARD),
                            ("offline data ratio", records.GATE_OFFLINE_RATIO)):
            assert curve(result, panel, f"Gate({g})") == pytest.approx(
                metric_series(runs_dir / run, name))
    ratio = {g: sum(curve(result, "offline data ratio", f"Gate({g})").values()) for g in (0, 1, 2)}
    assert ratio[0] < ratio[1] < ratio[2]                  # larger γ, more SFT


def test_tables_show_paper_numbers_and_ours(made):
    t6 = made["table6"].data
    paper = t6[t6["source"] == "paper"]
    assert paper.set_index(["row", "benchmark"]).loc[("γ = 0", "AIME25"), "value"] == 17.8
    ours = t6[t6["source"] == "ours"].set_index("row")["value"]
    hpt, g2 = fx.STANDARD_RUNS[0], fx.STANDARD_RUNS[2]

    def final(spec):
        return 100 * [r["value"] for r in fx.eval_rows(spec, spec.steps)
                      if r["level"] == "all" and r["metric"] == "avg@k"][0]
    assert ours["γ = 0"] == pytest.approx(final(hpt))
    assert ours["γ = 2/8"] == pytest.approx(final(g2))
    t2 = made["table2"]
    assert [r.command for r in t2.missing] == ["python -m training.run srft"]
    n_paper = sum(len(v) for v in paper_numbers.TABLE2.rows.values())
    assert (t2.data["source"] == "paper").sum() == n_paper


@pytest.mark.parametrize("table", paper_numbers.ALL_TABLES, ids=lambda t: t.caption)
def test_paper_numbers_averages_recompute(table):
    """The copied rows are self-consistent: each Avg equals its row's mean to 0.05."""
    cols = list(table.columns)
    for row, values in table.rows.items():
        v = dict(zip(cols, values))
        ids = [v[c] for c in paper_numbers.ID_BENCHMARKS[:-1]]
        assert abs(sum(ids) / len(ids) - v["Avg"]) <= 0.051, row
        if "Avg (OOD)" in v:
            assert abs((v["ARC-c"] + v["GPQA"]) / 2 - v["Avg (OOD)"]) <= 0.051, row


# --------------------------------------------------------------------------- missing runs


def test_missing_runs_are_named_by_command(tmp_path, capsys):
    fx.write_run(tmp_path / "runs", fx.RunSpec("hpt-s0", "hpt", steps=4, eval_every=2))
    assert cli.main(["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "fig"),
                     "--only", "fig8_gate_ablation", "fig3_heatmap"]) == 0
    text = capsys.readouterr().out
    assert "python -m training.run hpt --gate-gamma 1" in text
    assert "python -m training.run hpt --gate-gamma 2" in text
    assert "python -m training.run sft_then_grpo" in text
    assert (tmp_path / "fig" / "fig8_gate_ablation.png").exists()   # drawn with what exists
    assert not (tmp_path / "fig" / "fig3_heatmap.png").exists()


def test_run_missing_shells_out_to_the_training_cli(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(argv, env, check):
        calls.append(argv[1:])
        gamma = int(argv[argv.index("--gate-gamma") + 1]) if "--gate-gamma" in argv else 0
        spec = fx.RunSpec(f"run{len(calls)}", argv[3], gate_gamma=gamma, steps=3)
        fx.write_run(Path(argv[argv.index("--runs-dir") + 1]), spec)
        return type("Done", (), {"returncode": 0})()
    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    runs = tmp_path / "runs"
    cli.main(["--runs", str(runs), "--out", str(tmp_path / "fig"), "--only",
              "fig8_gate_ablation", "--run-missing"])
    to = ["--runs-dir", str(runs)]
    assert calls == [["-m", "training.run", "hpt", *to],
                     ["-m", "training.run", "hpt", "--gate-gamma", "1", *to],
                     ["-m", "training.run", "hpt", "--gate-gamma", "2", *to]]
    out = capsys.readouterr().out
    assert "about 15 min" in out and "run(s) missing" not in out
    assert (tmp_path / "fig" / "fig8_gate_ablation.pdf").exists()


def test_single_script_entry_point(runs_dir, tmp_path, capsys):
    from paper_figures import fig6_offline_ratio
    from paper_figures.common import script_main
    result = script_main(fig6_offline_ratio.make, "", ["--runs", str(runs_dir),
                                                       "--out", str(tmp_path)])
    assert isinstance(result.data, pd.DataFrame) and result.files
    assert "fig6_offline_ratio.png" in capsys.readouterr().out


# ------------------------------------------------------------------------------ bad runs


def test_bad_runs_are_named_and_the_good_runs_still_drawn(tmp_path, capsys):
    runs = tmp_path / "runs"
    fx.write_fixture_runs(runs)
    bad = fx.write_bad_runs(runs)
    assert cli.main(["--runs", str(runs), "--out", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    for name in SCRIPTS:
        assert f"{name}: {tmp_path / 'fig' / name}.png" in out
        assert (tmp_path / "fig" / f"{name}.pdf").exists()
    notes = [line for line in out.splitlines() if line.startswith("note: ")]
    for run, what in bad.items():
        assert any(line.startswith(f"note: {run}/") and what in line for line in notes), run


def test_runs_directory_must_exist(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--runs", str(tmp_path / "nope"), "--out", str(tmp_path / "fig")])
    assert stop.value.code == 2
    assert f"--runs {tmp_path / 'nope'}: no such directory" in capsys.readouterr().err
    assert not (tmp_path / "fig").exists()


# ------------------------------------------------------------- training.compare records


def test_table2_ours_rows_come_from_the_comparisons(tmp_path):
    """With comparison.json records under the runs directory, Table 2's "ours" panels are theirs
    (one per comparison): each method's mean ± 95% CI over seeds per level and on average,
    labelled with its tuned learning rate, the panel with the task; checked against the eval rows
    of the runs and scipy's t quantile. A record that cannot be read is a note, not a panel."""
    import statistics

    from scipy import stats

    from records import comparison

    runs = tmp_path / "runs"
    fx.write_fixture_runs(runs, fx.STANDARD_RUNS[:2], probes=False)   # single runs: not used
    fx.write_comparison(runs / "compare")
    fx.write_comparison(runs / "offpolicy", presets=("hpt", "sft"), seeds=(0, 1))
    (runs / "broken").mkdir()
    (runs / "broken" / records.COMPARISON).write_text('{"command": {}}')
    index = RunIndex(runs)
    result = SCRIPTS["table2"](index, tmp_path / "out")
    assert [p.suffix for p in result.files] == [".png", ".pdf"] and result.missing == []
    ours = result.data[result.data["source"] == "ours"]
    assert ours["table"].nunique() == 2
    title = next(t for t in ours["table"].unique() if t.startswith("ours (compare,"))
    assert "task arith" in title and "3 seeds, lr tuned on validation" in title
    panel = ours[ours["table"] == title].set_index(["row", "benchmark"])
    assert sorted(panel.index.levels[0]) == ["Base", "GRPO (lr 0.0001)", "HPT (lr 0.0003)",
                                             "SFT (lr 0.001)"]
    assert set(panel.index.levels[1]) == {"Llevel1", "Llevel3", "Llevel5", "Avg"}
    t = stats.t.ppf(0.975, 2)
    for preset, label in (("hpt", "HPT (lr 0.0003)"), ("grpo", "GRPO (lr 0.0001)")):
        xs = []
        for seed in fx.COMPARED_SEEDS:
            rows, _ = records.read_eval(runs / "compare" / f"{preset}-lr{fx.TUNED_LR[preset]:g}-s{seed}")
            last = max(r["step"] for r in rows)
            xs += [100 * r["value"] for r in rows if r["step"] == last and r["level"] == "all"
                   and r["metric"] == "avg@k"]
        assert panel.loc[(label, "Avg"), "value"] == pytest.approx(statistics.mean(xs))
        assert panel.loc[(label, "Avg"), "ci"] == pytest.approx(t * statistics.stdev(xs) / 3 ** 0.5,
                                                              rel=1e-3)
        assert panel.loc[(label, "Avg"), "n"] == 3
    base = comparison.base_scores(runs / "compare" / "hpt-lr0.0003-s0")
    assert panel.loc[("Base", "Avg"), "value"] == pytest.approx(100 * base["Avg"])
    assert math.isnan(panel.loc[("Base", "Avg"), "ci"])
    assert any("broken/comparison.json: field 'command.presets' is missing" in n for n in index.notes)
