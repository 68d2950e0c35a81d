"""`training.compare`: the validation split, the tuning protocol's bookkeeping, paired differences
and the crossing k*."""
from __future__ import annotations

import json
import math

import pytest

import records
from training import compare, data, task
from training.evaluation import curves


def _content(examples) -> set:
    """Problem contents: the prompt text and the answer."""
    return {(e.messages[0]["content"], e.answer) for e in examples}


def test_validation_and_test_splits_are_disjoint_from_each_other_and_from_training(tmp_path):
    for split in ("validation", "test"):
        task.export(tmp_path / f"{split}.jsonl", split)
    task.export(tmp_path / "train.jsonl", "train", count=3000, seed=0)
    val, test, train = (_content(data.load_examples(tmp_path / f"{s}.jsonl"))
                        for s in ("validation", "test", "train"))
    assert len(val) == sum(task.VALIDATION_PER_LEVEL.values())
    assert len(test) == sum(task.TEST_PER_LEVEL.values())
    assert not val & test and not train & val and not train & test
    streamed = _content(data.TaskStream(7).take(3000))  # the trainer's own stream skips both too
    assert not streamed & val and not streamed & test


def test_every_split_name_is_checked():
    with pytest.raises(ValueError, match="split must be one of train, validation, test"):
        task.split_problems("valid")


def _runs(values: dict) -> dict:
    return {name: [{"Avg": v, "pass@8": v / 2, "seed": s} for s, v in enumerate(vs)]
            for name, vs in values.items()}


def test_paired_differences_are_per_seed():
    results = _runs({"hpt": [0.30, 0.40, 0.50], "sft": [0.20, 0.35, 0.44]})
    m, h, n = compare.paired(results, "hpt")["sft"]
    diffs = [10.0, 5.0, 6.0]
    want_m, want_h = compare.mean_ci(diffs)
    assert n == 3 and m == pytest.approx(want_m) and h == pytest.approx(want_h)
    # unpaired, the seed-to-seed spread (±10 points) would swamp a 7-point difference
    assert h < compare.mean_ci([30.0, 40.0, 50.0])[1]
    text = compare.paired_table(results, "hpt")
    assert "| sft | +7.0 ± " in text and "hpt − method" in text


def test_crossing_k_is_the_first_k_where_the_base_catches_up():
    base = {1: 0.2, 2: 0.35, 4: 0.5, 8: 0.7}
    assert compare.crossing_k({1: 0.3, 2: 0.4, 4: 0.5, 8: 0.6}, base) == 4
    assert math.isnan(compare.crossing_k({1: 0.3, 2: 0.4, 4: 0.6, 8: 0.8}, base))


@pytest.mark.parametrize("argv,line", [
    (["--tune", "lr", "--", "--lr", "1e-3"], "--lr is chosen by --tune lr"),
    (["--tune", "lr", "--tune-seeds", "0"], "overlap --seeds"),
    (["--tune", "lr", "--lr-grid", "1e-3,0"], "every value must be > 0"),
    (["--tune", "steps"], "invalid choice: 'steps'")])
def test_tuning_arguments_are_checked_before_any_work(argv, line, tmp_path, monkeypatch, capsys):
    from training import base

    monkeypatch.setattr(base, "ensure_base", lambda *a, **kw: pytest.fail("work started"))
    with pytest.raises(SystemExit) as stop:
        compare.main(["--runs-dir", str(tmp_path), *argv])
    assert stop.value.code == 2 and line in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_comparison_writes_its_record(tmp_path, monkeypatch, capsys):
    """``main`` end to end over runs that are already finished (so nothing trains): the tuning
    trials' validation scores choose each preset's learning rate, the reported runs at those
    rates make comparison.json, and the printed tables are the record's."""
    import fixtures_records as fx
    from records import comparison
    from training import base

    monkeypatch.setattr(base, "ensure_base", lambda *a, **kw: None)  # no run trains: no base needed
    root = tmp_path / "cmp"
    better = {"hpt": 1e-3, "sft": 1e-4}  # validation: the better rate of each preset
    for preset, lr in better.items():
        for v in (1e-4, 1e-3):
            fx.write_run(root, fx.RunSpec(f"tune-{preset}-lr{v:g}-s100", preset, seed=100, steps=4,
                                          eval_every=2, samples=False, shift=0.0 if v == lr else -0.2))
        for seed in (0, 1):
            fx.write_run(root, fx.RunSpec(f"{preset}-lr{lr:g}-s{seed}", preset, seed=seed, steps=4,
                                          eval_every=2, samples=False, shift=0.02 * seed))
    before = {p.name for p in root.iterdir()}
    out = compare.main(["--presets", "hpt,sft", "--seeds", "0,1", "--tune", "lr", "--lr-grid",
                        "1e-4,1e-3", "--tune-seeds", "100", "--jobs", "1", "--runs-dir", str(root),
                        "--", "--steps", "4"])
    assert {p.name for p in root.iterdir()} - before == {compare.VALIDATION, compare.TUNING,
                                                         records.COMPARISON}
    rec = comparison.read(root / records.COMPARISON)
    assert comparison.chosen(rec) == better
    assert rec["command"] == {"presets": ["hpt", "sft"], "seeds": [0, 1], "reference": "hpt",
                              "tune": "lr", "grid": [1e-4, 1e-3], "tune_seeds": [100],
                              "run_args": ["--steps", "4"]}
    assert {p: [r["run"] for r in runs] for p, runs in rec["presets"].items()} == {
        "hpt": ["hpt-lr0.001-s0", "hpt-lr0.001-s1"], "sft": ["sft-lr0.0001-s0", "sft-lr0.0001-s1"]}
    assert rec["task"] == "arith" and rec["paired"]["Avg"]["sft"]["n"] == 2
    results = comparison.results_of(rec)
    assert out == (comparison.table(results, rec["base"]["scores"]) + "\n\n"
                   + comparison.paired_table(results, "hpt"))
    assert out in capsys.readouterr().out


PLANTED = '''
"""A reward planted to disagree between the splits: on the validation split (the tuning runs,
which get --eval-data) learning rate 1e-3 scores 1 and 1e-4 scores 0; on the test split the
reverse. A protocol that looked at the test split would choose 1e-4."""
import sys


def _flag(name):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else None


def reward(completions, ground_truth, **kw):
    best = 1e-3 if _flag("--eval-data") else 1e-4
    return [1.0 if float(_flag("--lr")) == best else 0.0 for _ in completions]
'''


@pytest.mark.slow
def test_tune_chooses_by_validation_score_only(tmp_path, monkeypatch):
    import os

    (tmp_path / "planted_reward.py").write_text(PLANTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    runs = tmp_path / "runs"
    compare.main(["--presets", "sft", "--seeds", "0", "--tune", "lr", "--lr-grid", "1e-4,1e-3",
                  "--tune-seeds", "1", "--jobs", "2", "--runs-dir", str(runs), "--",
                  "--steps", "1", "--eval-k", "1", "--save-every", "0", "--warmup-steps", "0",
                  "--reward", "planted_reward:reward"])
    tuning = json.loads((runs / compare.TUNING).read_text())
    assert tuning["chosen"] == {"sft": 1e-3} and tuning["split"] == "validation"
    assert tuning["scores"]["sft"] == {"0.0001": 0.0, "0.001": 1.0}
    assert tuning["trials_per_method"] == 2
    chosen = runs / "sft-lr0.001-s0"  # reported at the validation choice, on the test split
    assert compare.final_scores(chosen)["Avg"] == 0.0
    cfg = json.loads((chosen / "config.json").read_text())["config"]
    assert cfg["lr"] == 1e-3 and cfg["eval_data"] == ""


def test_passk_curves_of_base_and_last_checkpoint(tmp_path, monkeypatch):
    """`--passk K`: the base (step 0) and the last checkpoint each get pass@1..K over the
    per-level subset; the base's curve is the one the run's model_path gives under the same seed,
    whichever run evaluates it (a trained model changes only the trained curve), and a second
    call adds nothing."""
    from training import base, run
    from training.evaluation import curves

    monkeypatch.setenv("UPGE_CACHE", str(tmp_path / "cache"))
    (tmp_path / "parity_reward.py").write_text(PARITY)
    monkeypatch.syspath_prepend(str(tmp_path))
    tiny = base.BaseConfig(hidden_size=32, layers=2, heads=2, kv_heads=2, intermediate_size=64,
                           pretrain_steps=40, pretrain_batch=16)
    model = str(base.ensure_base(tiny, log=lambda s: None))
    evals = tmp_path / "eval.jsonl"
    task.export(evals, "test", count=5)
    dirs = []
    for lr in ("1e-2", "1e-3"):
        run.main(["sft", "--model", model, "--runs-dir", str(tmp_path), "--run-id", f"lr{lr}",
                  "--steps", "2", "--prompts-per-step", "3", "--max-new-tokens", "16", "--eval-k", "1",
                  "--eval-data", str(evals), "--save-every", "0", "--progress", "false",
                  "--threads", "1", "--lr", lr, "--reward", "parity_reward:reward"])
        d = tmp_path / f"lr{lr}"
        curves.passk_curves(d, k=8, per_level=1)
        curves.passk_curves(d, k=8, per_level=1)
        dirs.append(d)
    a, b = dirs
    assert sorted(curves.read_curve(a, step=0)) == [1, 2, 4, 8]
    assert curves.read_curve(a, step=0) == curves.read_curve(b, step=0)
    rows, _ = records.read_eval(a)
    ours = [r for r in rows if r["benchmark"] == records.PASSK_BENCHMARK]
    assert len(ours) == 2 * 4 * 6 and {r["step"] for r in ours} == {0, 2}  # 2 models x 4 k x (5 levels + all)
    assert all(r["n"] == (5 if r["level"] == "all" else 1) for r in ours)
    # the run's own evaluation is read without the curves
    assert compare.final_scores(a)["step"] == 2 and "pass@8" not in compare.final_scores(a)


PARITY = '''
def reward(completions, ground_truth, **kw):
    """Depends on the completion (its length's parity), so pass@k grows with k."""
    return [float(len(c) % 2) for c in completions]
'''



def test_a_comparison_takes_pass_at_large_k_and_kstar_from_the_curves(tmp_path, monkeypatch):
    """With `--passk` curves, the record's pass@K and k* come from them (each run against its own
    base curve), the base row has pass@K too, and the run's own pass@k stays its own."""
    from records import comparison

    test_passk_curves_of_base_and_last_checkpoint(tmp_path, monkeypatch)
    runs = {"sft": [(0, tmp_path / "lr1e-2"), (1, tmp_path / "lr1e-3")]}
    rec = comparison.build(runs, tmp_path, {"reference": "sft"})
    base = curves.read_curve(tmp_path / "lr1e-2", step=0)
    assert rec["base"]["scores"]["pass@8"] == base[8] and rec["base"]["passk"] == base
    for (_, d), r in zip(runs["sft"], rec["presets"]["sft"]):
        mine, own_base = curves.read_curve(d), curves.read_curve(d, step=0)
        assert r["passk"] == mine and r["scores"]["pass@8"] == mine[8]
        assert r["scores"]["pass@1"] == compare.final_scores(d)["pass@1"]  # eval-k 1: its own
        k = r["scores"]["k*"]
        assert k == compare.crossing_k(mine, own_base) or (math.isnan(k) and math.isnan(compare.crossing_k(mine, own_base)))
