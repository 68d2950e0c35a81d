"""Grading: multiple-choice answer extraction (GPQA's ``ANSWER: X``, ``\\boxed{X}``, ARC-c
digits), the kind dispatch, pluggable rewards — and the verifier against the benchmarks' own
ground truths (tests/test_grading_benchmarks.py)."""
import pytest

from training import grading
from training.grading import BenchmarkReward, extract_choice, grade, grade_choice, load_reward

ABCD = ("A", "B", "C", "D")


@pytest.mark.parametrize("text, label", [
    ("reasoning...\nANSWER: B", "B"),
    ("ANSWER: $C$", "C"),
    ("The answer is (D).", "D"),
    ("**Answer:** A", "A"),
    ("so the final answer is \\boxed{B}", "B"),
    ("\\boxed{\\text{(C)}}", "C"),
    ("\\boxed{B) Planetary days will become shorter.}", "B"),
    ("\\boxed{\\textbf{D}}", "D"),
    ("Answer: (b)", "B"),
    ("\\boxed{C} ... on reflection\nANSWER: A", "A"),         # the last marker wins
    ("ANSWER: A ... wait, actually \\boxed{C}", "C"),
    ("answer: 3", "3"),
])
def test_extract_choice(text, label):
    assert extract_choice(text) == label


@pytest.mark.parametrize("text", ["I will answer a question", "answer 2 questions", "no marker",
                                  "\\boxed{42}", "the answer is a bit unclear", ""])
def test_no_choice_is_found_in_prose(text):
    assert extract_choice(text) is None


def test_grade_choice_letters_and_digits():
    assert grade_choice("ANSWER: B", "B", ABCD) == 1.0
    assert grade_choice("ANSWER: C", "B", ABCD) == 0.0
    assert grade_choice("no answer at all", "B", ABCD) == 0.0
    digits = ("1", "2", "3", "4")                   # ARC-c numbers 22 questions' options
    assert grade_choice("\\boxed{2}", "2", digits) == 1.0
    assert grade_choice("ANSWER: B", "2", digits) == 1.0       # a letter read by position
    assert grade_choice("ANSWER: C", "2", digits) == 0.0
    assert grade_choice("\\boxed{2}", "B", ABCD) == 1.0        # a digit read by position


def test_grade_dispatch():
    assert grade("math", "so \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert grade("math", "so \\boxed{\\frac{1}{3}}", "0.5") == 0.0
    assert grade("math", "no box: 1/2", "\\frac{1}{2}") == 0.0
    assert grade("mc", "ANSWER: A", "A", ABCD) == 1.0
    with pytest.raises(ValueError, match="unknown kind 'code'"):
        grade("code", "x", "y")


def test_benchmark_reward_mixes_kinds_in_one_call():
    r = BenchmarkReward()
    out = r(["\\boxed{4}", "ANSWER: B", "\\boxed{5}", "ANSWER: A"], ["4", "B", "4", "B"],
            kind=["math", "mc", "math", "mc"], choices=[(), ABCD, (), ABCD])
    assert out == [1.0, 1.0, 0.0, 0.0]
    assert r(["\\boxed{4}"], ["4"]) == [1.0]                  # TRL call: no kind column = math
    with pytest.raises(grading.RewardError, match="2 completions but 1"):
        r(["a", "b"], ["a"])


def constant_reward(completions, ground_truth, **kw):
    return [0.25] * len(completions)


def bad_reward(completions, ground_truth, **kw):
    return [1.0]


def test_load_reward_from_module_function_strings():
    fn = load_reward(f"{__name__}:constant_reward")
    assert grading.call_reward(fn, ["x", "y"], ["1", "2"], kind=["math", "math"]) == [0.25, 0.25]
    boxed = load_reward("training.reward:BoxedReward")            # a class is instantiated
    assert boxed(["\\boxed{7}"], ["7"]) == [1.0]
    assert isinstance(load_reward("training.grading:BenchmarkReward"), BenchmarkReward)


@pytest.mark.parametrize("spec, message", [
    ("no_colon", "expected 'module:function'"),
    ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
    ("training.grading:nope", "has no attribute 'nope'"),
    ("training.grading:LETTERS", "is not callable"),
])
def test_load_reward_errors(spec, message):
    with pytest.raises(grading.RewardError, match=message):
        load_reward(spec)


def test_call_reward_checks_the_output():
    with pytest.raises(grading.RewardError, match="returned 1 scores for 2 completions"):
        grading.call_reward(bad_reward, ["a", "b"], ["1", "2"])
