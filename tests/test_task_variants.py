"""The built-in task's variants (``--task arith | arith-offpolicy``): same problems and splits,
demonstrations in another style, another base recipe, the run settings the style needs."""
from __future__ import annotations

import re

import pytest

from training import base, data, task
from training.config import parse_args
from training.reward import BoxedReward


def _content(examples) -> list:
    return [(e.messages[0]["content"], e.answer) for e in examples]


def test_offpolicy_streams_the_same_problems_with_demonstrations_in_another_style():
    plain, other = data.TaskStream(3).take(50), data.TaskStream(3, variant="arith-offpolicy").take(50)
    assert _content(plain) == _content(other)  # the same prompts and answers, in the same order
    for a, b in zip(plain, other):
        assert a.demo != b.demo and b.demo.startswith("<think>\n")
        assert 1.6 < len(b.demo) / len(a.demo) < 5  # longer, in another style


@pytest.mark.parametrize("index", range(10))
def test_both_styles_write_the_same_correct_steps(index):
    """Every step of a verbose demonstration is a step of the concise one, each step's arithmetic
    is right, and the verifier gives both full reward (the reward reads only the box)."""
    p = task.make_problem(11, index)
    v = task.make_problem(11, index, style="verbose")
    concise = [tuple(line.split("=")) for line in p.demo.splitlines()[:-1]]
    worded = re.findall(r"^(?:First|Then|Finally), (\S+) = (-?\d+)\.$", v.demo, re.M)
    assert worded == concise and len(worded) == len(p.steps)
    for lhs, rhs in worded:
        assert eval(lhs) == int(rhs)
    assert BoxedReward()([p.demo, v.demo], [str(p.answer)] * 2) == [1.0, 1.0]


def test_offpolicy_splits_hold_the_same_problems_and_stay_disjoint(tmp_path):
    for split in ("validation", "test"):
        task.export(tmp_path / f"{split}.jsonl", split, variant="arith-offpolicy")
        ours = data.load_examples(tmp_path / f"{split}.jsonl")
        assert _content(ours) == [(p.prompt, str(p.answer)) for p in task.split_problems(split)]
        assert all(e.demo.startswith("<think>") for e in ours)
    val, test = (set(_content(data.load_examples(tmp_path / f"{s}.jsonl"))) for s in ("validation", "test"))
    train = set(_content(data.TaskStream(7, variant="arith-offpolicy").take(3000)))
    assert not val & test and not train & val and not train & test


def test_offpolicy_run_settings_fit_its_demonstrations():
    """Its default generation length holds every demonstration (+ eos), and its base's positions
    hold the longest prompt + demonstration; explicit flags win."""
    cfg = parse_args(["sft", "--task", "arith-offpolicy"])
    assert cfg.task == "arith-offpolicy" and cfg.max_new_tokens == 128
    assert parse_args(["sft", "--task", "arith-offpolicy", "--max-new-tokens", "64"]).max_new_tokens == 64
    assert parse_args(["sft"]).max_new_tokens == 48
    tok = base.char_tokenizer()
    problems = task.train_problems(0, 300, style="verbose")
    longest = max(len(tok(p.demo, add_special_tokens=False)["input_ids"]) + 1 for p in problems)
    assert longest <= cfg.max_new_tokens
    whole = max(len(base.prompt_ids(tok, [{"role": "user", "content": p.prompt}])) + len(p.demo) + 1
                for p in problems)
    assert whole <= base.config_for("arith-offpolicy").max_positions
    assert base.config_for("arith-offpolicy").digest() != base.config_for("arith").digest()
    assert base.config_for("arith") == base.BaseConfig()


def test_task_flag_is_checked(capsys):
    with pytest.raises(SystemExit):
        parse_args(["sft", "--task", "arith-hard"])
    assert "--task arith-hard: must be one of arith, arith-offpolicy" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["sft", "--task", "arith-offpolicy", "--train-data", __file__])
    assert "--task arith-offpolicy: is a variant of the built-in task; --train-data replaces it" \
        in capsys.readouterr().err
