"""Fast unit tests of training/: task, reward, data loading, pass@k, batch building, config."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
import time

import pytest
import torch

import estimators
from estimators.parts import ConstantNormaliser, KLPenalty
from training import batching, data, task
from training.evaluation import heldout as evaluate
from training.batching import Row
from training.config import (ALLOWED, ALLOWED_WHEN_SAMPLING, ConfigError, RunConfig, build_parser,
                             check, parse_args, preset_names, sampling_stages)
from training.reward import BoxedReward, last_boxed, quick_check


# ------------------------------------------------------------------------------------ task

def test_task_is_deterministic_and_cycles_levels():
    a = [task.make_problem(3, i) for i in range(20)]
    b = [task.make_problem(3, i) for i in range(20)]
    assert a == b
    assert [p.level for p in a[:5]] == [1, 2, 3, 4, 5]
    assert a != [task.make_problem(4, i) for i in range(20)]


@pytest.mark.parametrize("level", task.LEVELS)
def test_demos_compute_the_answer_step_by_step(level):
    for i in range(50):
        p = task.GENERATORS[level](__import__("random").Random(i))
        assert p.answer == eval(p.expr)  # the expression itself is the spec
        lines = p.demo.split("\n")
        assert len(lines) == {1: 1, 2: 2, 3: 2, 4: 3, 5: 4}[level] + 1
        assert lines[-1] == f"\\boxed{{{p.answer}}}"
        for line in lines[:-1]:
            lhs, rhs = line.split("=")
            assert eval(lhs) == int(rhs)


def test_test_split_is_fixed_balanced_and_disjoint_from_training():
    test = task.test_problems()
    assert test == task.test_problems()
    assert len(test) == sum(task.TEST_PER_LEVEL.values())
    assert {p.level for p in test} == set(task.LEVELS)
    assert len({p.expr for p in test}) == len(test)
    train = {p.expr for p in task.train_problems(0, 2000)}
    assert not train & {p.expr for p in test}


def test_demo_characters_are_in_the_char_tokenizer():
    from training.base import CHARS

    for i in range(200):
        p = task.make_problem(0, i)
        assert set(p.demo + p.prompt) <= set(CHARS)


def test_export_and_load_round_trip(tmp_path):
    path = tmp_path / "train.jsonl"
    task.export(path, "train", count=25, seed=1)
    ex = data.load_examples(path)
    assert len(ex) == 25
    p = task.train_problems(1, 25)[3]
    assert ex[3].answer == str(p.answer) and ex[3].demo == p.demo and ex[3].level == str(p.level)
    row = json.loads(path.read_text().splitlines()[0])
    assert row["reward_model"]["style"] == "rule" and row["target"][0]["role"] == "assistant"
    pq = tmp_path / "test.parquet"
    task.export(pq, "test")
    assert len(data.load_examples(pq)) == len(task.test_problems())


def test_dataset_is_a_datasets_dataset():
    import datasets

    ds = task.dataset("test")
    assert isinstance(ds, datasets.Dataset)
    assert ds[0]["extra_info"]["level"] == 1 and ds[0]["prompt"][0]["role"] == "user"


# ------------------------------------------------------------------------------------ data

GOOD = {"prompt": [{"role": "user", "content": "Compute 1+1."}],
        "target": [{"role": "assistant", "content": "1+1=2\n\\boxed{2}"}],
        "reward_model": {"ground_truth": "2", "style": "rule"}}


@pytest.mark.parametrize("change, field", [
    ({"prompt": None}, "'prompt'"),
    ({"prompt": []}, "'prompt'"),
    ({"prompt": [{"role": "user", "content": "  "}]}, "'prompt'"),
    ({"target": [{"role": "assistant", "content": ""}]}, "'target'"),
    ({"reward_model": {"style": "rule"}}, "'reward_model.ground_truth'"),
    ({"reward_model": {"ground_truth": ["2"]}}, "'reward_model.ground_truth'"),
    ({"reward_model": {"ground_truth": None}}, "'reward_model.ground_truth'"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, change, field):
    path = tmp_path / "bad.jsonl"
    rows = [GOOD, {**GOOD, **change}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    with pytest.raises(data.DataError) as e:
        data.load_examples(path)
    msg = str(e.value)
    assert "bad.jsonl" in msg and "row 1" in msg and field in msg


def test_unreadable_files_are_clear(tmp_path):
    with pytest.raises(data.DataError, match="no such file"):
        data.load_examples(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(data.DataError, match="no rows"):
        data.load_examples(tmp_path / "empty.jsonl")
    (tmp_path / "broken.jsonl").write_text(json.dumps(GOOD) + "\n{oops\n")
    with pytest.raises(data.DataError, match="row 1: not valid JSON"):
        data.load_examples(tmp_path / "broken.jsonl")


def test_numeric_ground_truth_is_accepted_as_string(tmp_path):
    path = tmp_path / "num.jsonl"
    path.write_text(json.dumps({**GOOD, "reward_model": {"ground_truth": 2}}))
    assert data.load_examples(path)[0].answer == "2"


def test_streams_are_resumable():
    s = data.TaskStream(5)
    first = s.take(7)
    rest = s.take(5)
    s2 = data.TaskStream(5)
    s2.take(7)
    s3 = data.TaskStream(5, cursor=s2.cursor)
    assert [e.uid for e in s3.take(5)] == [e.uid for e in rest]
    assert len({e.uid for e in first + rest}) == 12
    f = data.FileStream(list(range(5)), seed=1)
    a = f.take(12)
    g = data.FileStream(list(range(5)), seed=1, cursor=7)
    assert g.take(5) == a[7:]
    assert sorted(a[:5]) == list(range(5))


# ---------------------------------------------------------------------------------- reward

def test_last_boxed_and_quick_check():
    assert last_boxed("a \\boxed{1} b \\boxed{{2}+3}") == "{2}+3"
    assert last_boxed("no box") is None and last_boxed("\\boxed{unclosed") is None
    assert quick_check("12", "12") and quick_check(" 12.0 ", "12") and quick_check("-3", "-3")
    assert quick_check("13", "12") is False
    assert quick_check("\\frac{1}{2}", "0.5") is None


@pytest.fixture(scope="module")
def reward():
    r = BoxedReward(time_limit=10.0)  # generous: a loaded machine must not fail a legit check
    yield r
    r.close()


def test_reward_scores_boxed_answers(reward):
    out = reward(["x=3\n\\boxed{12}", "\\boxed{13}", "12", "\\boxed{\\frac{1}{2}}", "\\boxed{-1}"],
                 ["12", "12", "12", "0.5", "-1"])
    assert out == [1.0, 0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="completions"):
        reward(["a"], [])


def test_adversarial_answer_costs_at_most_the_time_limit(reward):
    reward(["\\boxed{x+1}"], ["x+1"])  # the worker is up (start-up is not part of the limit)
    reward.time_limit, before = 1.0, reward.timeouts
    t0 = time.time()
    out = reward(["\\boxed{9^{9^{9^{9}}}}"], ["11"])
    took = time.time() - t0
    assert out == [0.0]
    assert took < reward.time_limit + 1.5, took
    assert reward.timeouts in (before, before + 1)  # counted if it timed out
    assert reward(["\\boxed{2}"], ["2"]) == [1.0]  # still works afterwards


# ---------------------------------------------------------------------------------- pass@k

def brute_pass_at_k(n, c, k):
    items = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(items[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_brute_force(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert evaluate.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12)
    with pytest.raises(ValueError):
        evaluate.pass_at_k(n, 0, n + 1)


def test_eval_rows_and_metrics():
    res = evaluate.EvalResult(levels=[1, 1, 2], correct=[[1, 1], [0, 1], [0, 0]])
    m = res.metrics()
    assert m["eval/accuracy"] == pytest.approx(0.5)
    assert m["eval/accuracy/1"] == pytest.approx(0.75) and m["eval/accuracy/2"] == 0.0
    assert m["eval/pass@2"] == pytest.approx(2 / 3)
    assert {r["metric"] for r in res.rows(3)} == {"avg@k", "pass@k"}


# -------------------------------------------------------------------------- batch building

def _rows(rewards, n_tok=3, demo_reward=None, group=0):
    ex = data.Example("u", ({"role": "user", "content": "q"},), "d", "1", "1")
    out = [Row((1,), (5,) * n_tok, float(r), r >= 0.5, group, False, j, ex) for j, r in enumerate(rewards)]
    if demo_reward is not None:
        out.append(Row((1,), (5,) * n_tok, demo_reward, True, group, True, len(rewards), ex))
    return out


@pytest.mark.parametrize("preset, need", [
    ("sft", batching.Need(0, True)), ("grpo", batching.Need(8, False)),
    ("ppo", batching.Need(8, False)), ("dapo", batching.Need(8, False)),
    ("luffy", batching.Need(7, True)), ("srft", batching.Need(7, True)),
    ("hpt", batching.Need(8, True)), ("hpt_paper", batching.Need(8, True))])
def test_group_layout_follows_trainer_steps(preset, need):
    assert batching.group_layout(estimators.get(preset), 8) == need


def test_dynamic_sampling_drops_all_equal_groups():
    rows = _rows([1, 1, 1]) + _rows([0, 1, 0], group=1) + _rows([0, 0, 0], group=2)
    kept = batching.drop_all_equal(rows)
    assert {r.group for r in kept} == {1}
    assert batching.all_equal_fraction(rows) == pytest.approx(2 / 3)
    assert batching.group_filter(estimators.get("dapo").trainer) is batching.drop_all_equal
    assert batching.group_filter(estimators.get("grpo").trainer) is batching.keep_all


def test_overlong_penalty_is_dapo_eq13():
    f = batching.overlong_penalty
    assert f(10, 48, 10, 1.0) == 0.0 and f(38, 48, 10, 1.0) == 0.0
    assert f(43, 48, 10, 1.0) == pytest.approx(-0.5) and f(48, 48, 10, 1.0) == pytest.approx(-1.0)
    assert f(60, 48, 10, 1.0) == -1.0
    assert batching.scaled_buffer(4096, 20480) == 4096 and batching.scaled_buffer(4096, 48) == 10
    assert batching.scaled_buffer(0, 48) == 0
    rows = _rows([1.0], n_tok=48, demo_reward=1.0)
    shaped = batching.shape_overlong(rows, 48, 10, 1.0)
    assert shaped[0].reward == pytest.approx(1 - 0.9)  # 47 tokens + eos: 9 into the buffer
    assert shaped[1].reward == 1.0  # demos are not shaped


def test_to_batch_and_minibatches_keep_whole_groups():
    rows = _rows([1, 0]) + _rows([0, 0], group=1, demo_reward=1.0) + _rows([1, 1], group=2)
    b = batching.to_batch(rows, torch.zeros(len(rows), 3), torch.ones(len(rows), 3))
    assert b.is_demo.tolist() == [False, False, False, False, True, False, False]
    assert b.group.tolist() == [0, 0, 1, 1, 1, 2, 2]
    mbs = batching.minibatches(rows, 2, torch.Generator().manual_seed(0))
    assert sorted(torch.cat(mbs).tolist()) == list(range(len(rows)))
    for mb in mbs:
        groups = {rows[i].group for i in mb.tolist()}
        assert all(rows[i].group in groups for i in range(len(rows)) if i in mb.tolist())
        assert sum(1 for r in rows if r.group in groups) == len(mb)


def test_hpt_gate_weights_the_demo_only_when_all_rollouts_fail():
    rows = _rows([0] * 4, demo_reward=1.0) + _rows([1, 0, 0, 0], group=1, demo_reward=1.0)
    b = batching.to_batch(rows, torch.zeros(len(rows), 3), torch.ones(len(rows), 3))
    plan = estimators.get("hpt").plan(b)
    rl, sft = plan.parts
    assert (rl.coef[:5] == 0).all() and sft.coef[4] > 0       # prompt 0 → SFT on its demo
    assert (rl.coef[5:9] != 0).all() and sft.coef[9] == 0     # prompt 1 → RL on its rollouts


# -------------------------------------------------------------------------------- config

def test_help_lists_presets_and_fields(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for name in ("hpt", "luffy", "sft_then_grpo", "--max-new-tokens", "--lora-r", "--resume"):
        assert name in out


def test_parse_args_types_and_unknown_preset():
    cfg = parse_args(["luffy", "--steps", "7", "--lr", "0.01", "--progress", "false",
                      "--entropy-coef", "0.0"])
    assert cfg == RunConfig(preset="luffy", steps=7, lr=0.01, progress=False, entropy_coef=0.0)
    with pytest.raises(SystemExit):
        parse_args(["nope"])


def test_every_field_has_an_allowed_range_and_the_defaults_are_in_it():
    assert set(ALLOWED) == {f.name for f in dataclasses.fields(RunConfig)}
    assert set(ALLOWED_WHEN_SAMPLING) <= set(ALLOWED)
    for preset in preset_names():
        check(RunConfig(preset=preset))


NONSENSE = [  # argv -> the one line it must print (flag, value, allowed range)
    (["grpo", "--steps", "0"], "--steps 0: must be ≥ 1"),
    (["grpo", "--steps", "-5"], "--steps -5: must be ≥ 1"),
    (["grpo", "--n", "0"], "--n 0: must be ≥ 1"),
    (["luffy", "--n", "1"], "--n 1: must be ≥ 2 for luffy"),
    (["grpo", "--temperature", "0"], "--temperature 0.0: must be > 0 for grpo, which samples"),
    (["sft_then_grpo", "--temperature", "-1"], "--temperature -1.0: must be > 0 for sft_then_grpo"),
    (["sft", "--temperature", "-1"], "--temperature -1.0: must be ≥ 0"),
    (["grpo", "--lora-r", "-1"], "--lora-r -1: must be ≥ 0"),
    (["grpo", "--micro-batch", "0"], "--micro-batch 0: must be ≥ 1"),
    (["grpo", "--eval-k", "0"], "--eval-k 0: must be ≥ 1"),
    (["grpo", "--max-new-tokens", "0"], "--max-new-tokens 0: must be ≥ 1"),
    (["grpo", "--top-p", "1.5"], "--top-p 1.5: must be in (0, 1]"),
    (["grpo", "--lr", "nan"], "--lr nan: must be > 0"),
    (["grpo", "--schedule", "cos"], "--schedule cos: must be one of constant, cosine, linear"),
    (["grpo", "--device", "gpu"], "--device gpu: must be auto, cpu, cuda or cuda:N"),
    (["grpo", "--model", "/nonexistent"], "--model /nonexistent: no such directory"),
    (["grpo", "--resume", "/nonexistent"], "--resume /nonexistent: no such directory"),
    (["grpo", "--run-id", "a/b"], "--run-id a/b: must be a plain name"),
]


@pytest.mark.parametrize("argv,line", NONSENSE, ids=[" ".join(a) for a, _ in NONSENSE])
def test_nonsense_arguments_stop_with_one_line(argv, line, capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith(f"error: {line}") and err.count("\n") == 1


def test_sft_samples_nothing_and_may_use_any_temperature():
    assert parse_args(["sft", "--temperature", "0"]).temperature == 0
    assert sampling_stages("sft") == [] and sampling_stages("sft_then_grpo") == ["grpo"]


def test_model_is_a_saved_directory_or_a_hub_id(tmp_path, monkeypatch):
    from huggingface_hub import constants

    with pytest.raises(ConfigError, match="has no config.json"):
        check(RunConfig(model=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    check(RunConfig(model=str(tmp_path)))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    check(RunConfig(model="someone/some-model"))           # downloaded at load time
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set but the hub id is not in the "
                                          "local cache"):
        check(RunConfig(model="someone/some-model"))


def test_training_cli_refuses_a_missing_model_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "training.run", "grpo", "--model",
                           str(tmp_path / "nope"), "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr == f"error: --model {tmp_path / 'nope'}: no such directory\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,line", [
    (["--presets", "sft,grpo", "--", "--temperature", "0"], "error: --temperature 0.0: must be > 0 for grpo"),
    (["--seeds", "0,x"], "argument --seeds: '0,x': expected comma-separated integers"),
    (["--jobs", "0"], "argument --jobs: '0': expected an integer ≥ 1")])
def test_compare_checks_every_run_before_any_work(argv, line, tmp_path, monkeypatch, capsys):
    from training import base, compare

    monkeypatch.setattr(base, "ensure_base", lambda **kw: pytest.fail("work started"))
    with pytest.raises(SystemExit) as stop:
        compare.main(["--runs-dir", str(tmp_path), *argv])
    assert stop.value.code == 2 and line in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_run_constants_follow_max_new_tokens():
    from training.stages import make_stages, scale_constants

    hpt = scale_constants(estimators.get("hpt"), 48)
    assert hpt.rl.reduction == ConstantNormaliser(constant=48 * 8, per_row=False)
    assert scale_constants(estimators.get("dr_grpo"), 48).reduction.constant == 48
    assert scale_constants(estimators.get("grpo"), 48) == estimators.get("grpo")
    stages = make_stages(RunConfig(preset="sft_then_grpo", steps=10, kl_coef=0.1))
    assert [(s.name, s.first, s.last) for s in stages] == [("sft", 1, 5), ("grpo", 6, 10)]
    assert stages[1].est.kl == KLPenalty(coef=0.1, kind="k3")
    hpt2 = make_stages(RunConfig(preset="hpt", gate_gamma=2, kl_coef=0.1))[0].est
    assert hpt2.gate.gamma == 2 and hpt2.rl.kl is not None
    assert math.isclose(make_stages(RunConfig(preset="ppo"))[0].epochs, 4)


def test_char_tokenizer_round_trips_through_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    from training import base

    tok = base.char_tokenizer()
    cfg = base.BaseConfig(hidden_size=16, layers=1, heads=2, kv_heads=2, intermediate_size=16)
    base.build_model(cfg, tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    p = task.make_problem(0, 4)
    for text in (p.demo, p.prompt, "a b\nc"):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids and len(ids) == len(text)
        assert loaded.decode(ids) == text
    msgs = [{"role": "user", "content": p.prompt}]
    assert base.prompt_ids(loaded, msgs) == base.prompt_ids(tok, msgs)
    assert loaded.decode(base.prompt_ids(tok, msgs)) == f"<|user|>{p.prompt}<|assistant|>"


def test_device_choice_and_its_errors(monkeypatch):
    from training.policy import pack
    from training.machine import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(SystemExit, match="sees no CUDA GPU; use --device cpu"):
        resolve_device("cuda")
    with pytest.raises(SystemExit, match="--device must be auto, cpu, cuda or cuda:N, got 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)

    class Rank:  # a data-parallel rank owns the GPU of its LOCAL_RANK
        device = torch.device("cuda", 3)
    assert resolve_device("auto", Rank()) == torch.device("cuda", 3)
    p = pack([[1, 2], [3]], [[4], [5, 6]], pad_id=0).to("cpu")
    assert p.ids.tolist() == [[1, 2, 4, 0], [0, 3, 5, 6]] and p.prompt_width == 2


def test_every_flag_passes_through_torchruns_parser():
    """torchrun's argparse matches option prefixes over the whole command line (the script's
    arguments too): every flag of ours except --n must reach the script untouched, and --n has
    the alias --num-generations."""
    import contextlib
    import io

    from torch.distributed.run import get_args_parser

    from training.config import build_parser, parse_args

    launcher = get_args_parser()
    passed, refused = [], []
    for action in build_parser()._actions:
        for opt in (o for o in action.option_strings if o.startswith("--")):
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    args = launcher.parse_args(["--nproc_per_node", "2", "-m", "training.run", "grpo", opt, "1"])
                (passed if opt in args.training_script_args else refused).append(opt)
            except SystemExit:
                refused.append(opt)
    assert refused == ["--n"] and "--num-generations" in passed and len(passed) > 40
    assert parse_args(["grpo", "--num-generations", "4"]).n == 4
