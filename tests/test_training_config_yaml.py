"""Run configs from YAML (``--config``), the shipped paper configs, ``--estimator`` and
``--reward`` from the command line, model cards in checkpoints and ``--push-to-hub`` offline.

The fast tests check the parsing, the resolution and the records' text; the slow ones run short
real trainings (``pytest -m slow tests/test_training_config_yaml.py``)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

import estimators
import records
from estimators.parts import Clip, Linear, describe
from training import base, checkpoint, config_file, configs, model_card, run
from training.config import RunConfig, parse_args
from training.custom import RewardError, make_reward
from training.profiles import PROFILES
from training.reward import BoxedReward
from training.stages import make_stages

FLAGS = ["grpo", "--steps", "7", "--lr", "0.0003", "--progress", "false", "--entropy-coef", "0.01",
         "--max-grad-norm", "inf", "--run-id", "mine", "--n", "4"]
YAML = """\
preset: grpo
steps: 7
lr: 3e-4            # YAML 1.1 reads this as a string; parsed as on the command line
progress: false
entropy_coef: 0.01
max_grad_norm: .inf
run-id: mine        # dashes as on the command line are accepted
n: 4
"""


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(argv, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        parse_args(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1, err
    return err.strip()


# -------------------------------------------------------------------------------- --config

def test_a_yaml_file_and_the_same_flags_give_the_same_config(tmp_path):
    from_file = parse_args(["--config", write(tmp_path, YAML)])
    from_flags = parse_args(FLAGS)
    assert from_file == from_flags and from_file.resolved() == from_flags.resolved()
    assert from_file.lr == 3e-4 and from_file.max_grad_norm == float("inf") and from_file.progress is False
    assert from_file != RunConfig(preset="grpo")  # the file did change the defaults


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, YAML)
    cfg = parse_args(["--config", path, "--steps", "9", "dapo"])
    assert (cfg.steps, cfg.preset, cfg.lr, cfg.n) == (9, "dapo", 3e-4, 4)
    # a bad value in the file that a flag overrides is not an error
    cfg = parse_args(["--config", write(tmp_path, YAML + "top_p: 7\n", "bad.yaml"), "--top-p", "0.9"])
    assert cfg.top_p == 0.9


def test_an_unknown_key_names_the_key_and_the_line(tmp_path, capsys):
    path = write(tmp_path, "preset: grpo\nsteps: 3\nstepz: 4\n")
    assert error_of(["--config", path], capsys) == f"error: {path}:3: unknown key 'stepz' (did you mean steps?)"
    path = write(tmp_path, "steps: 3\nsteps: 4\n", "twice.yaml")
    assert error_of(["--config", path], capsys) == f"error: {path}:2: 'steps' is given twice (first at line 1)"


@pytest.mark.parametrize("text, line", [
    ("steps: 3\nlr: -1\n", "2: lr: -1.0: must be > 0"),
    ("steps: many\n", "1: steps: 'many' is not an integer"),
    ("preset: nope\n", "1: preset: nope: must be one of"),
    ("n: 4\ntemperature: 0\n", "2: temperature: 0.0: must be > 0 for hpt, which samples rollouts"),
    ("model: 1.5\n", "1: model: 1.5 is not a string (quote it)"),
    ("steps: null\n", "1: steps: null is not allowed (give an integer)"),
    ("steps: [1, 2]\n", "1: steps: expected one value, got a list"),
    ("steps: 3\n  lr: 1\n", "2: not valid YAML"),
    ("- steps\n", "1: expected a mapping of run-config fields"),
    ("estimator: custom_parts:NOT_AN_ESTIMATOR\n", "1: --estimator 'custom_parts:NOT_AN_ESTIMATOR': "
                                                   "'NOT_AN_ESTIMATOR' is a dict, not an estimators.Estimator"),
])
def test_a_bad_value_names_the_key_and_the_file(tmp_path, capsys, text, line):
    path = write(tmp_path, text)
    assert error_of(["--config", path], capsys).startswith(f"error: {path}:{line}")


def test_a_missing_file_lists_the_shipped_ones(capsys):
    err = error_of(["--config", "nope.yaml"], capsys)
    assert err.startswith("error: --config nope.yaml: no such file") and "paper-llama-3.1-8b" in err


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_shipped_config_equals_its_profile(name, tmp_path):
    path = configs.path(name)
    assert path.read_text(encoding="utf-8") == configs.render(name), "run: python -m training.configs --write"
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == PROFILES[name]
    values, lines = config_file.read(name, RunConfig)  # by name, as --config takes it
    assert values == PROFILES[name] and set(lines) == set(PROFILES[name])
    # the same run as --profile (a local model directory: the profile's hub id is offline here)
    (tmp_path / "config.json").write_text("{}")
    local = ["--model", str(tmp_path), "--device", "cpu"]
    assert parse_args(["--config", name, *local]) == \
        dataclasses.replace(parse_args(["--profile", name, *local]), profile="")


def test_shipped_configs_are_package_data():
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'training = ["configs/*.yaml"]' in text
    assert sorted(p.stem for p in configs.DIR.glob("*.yaml")) == configs.names()


# ---------------------------------------------------------------------- --estimator, --reward

def test_a_custom_estimator_trains_under_its_name_with_its_parts():
    cfg = parse_args(["--estimator", "custom_parts:CLIPPED_GRPO", "--n", "4", "--max-new-tokens", "32"])
    assert cfg.preset == "CLIPPED_GRPO" and cfg.estimator == "custom_parts:CLIPPED_GRPO"
    (stage,) = make_stages(cfg)
    assert stage.name == "CLIPPED_GRPO" and stage.est.mask == Clip(0.1, 0.3)
    assert stage.need.rollouts == 4 and not stage.need.demo        # its TrainerSteps: rollouts only
    want = estimators.get("grpo").replace(mask=Clip(0.1, 0.3), name="CLIPPED_GRPO").parts()
    record = run._config_record(cfg, [stage], "m")
    assert record["estimator"] == {"CLIPPED_GRPO": want} and record["preset"] == "CLIPPED_GRPO"
    assert record["config"]["estimator"] == "custom_parts:CLIPPED_GRPO"
    assert want["mask"] == describe(Clip(0.1, 0.3)) != estimators.get("grpo").parts()["mask"]


def test_gate_composes_with_a_custom_estimator():
    cfg = parse_args(["--estimator", "custom_parts:GRPO_OR_SFT", "--gate", "linear", "--sft-coef", "0.3"])
    (stage,) = make_stages(cfg)
    assert stage.est.gate == Linear(beta=0.3) and stage.need.demo         # gated demos: from its steps
    assert stage.est.parts()["gate"] == describe(Linear(beta=0.3))
    (own,) = make_stages(parse_args(["--estimator", "custom_parts:GRPO_OR_SFT"]))
    assert own.est.gate == estimators.parts.Switch(gamma=1, beta=0.5)    # without --gate: its own


def test_a_profile_keeps_a_custom_estimator(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # a local model directory (the profile's hub id is offline)
    cfg = parse_args(["--estimator", "custom_parts:CLIPPED_GRPO", "--profile", "paper-qwen2.5-math-1.5b",
                      "--model", str(tmp_path), "--device", "cpu"])
    assert cfg.preset == "CLIPPED_GRPO" and cfg.lr == 5e-6 and cfg.n == 8   # the profile's values
    assert [s.name for s in make_stages(cfg)] == ["CLIPPED_GRPO"]


@pytest.mark.parametrize("argv, line", [
    (["--estimator", "custom_parts:NOT_AN_ESTIMATOR"],
     "--estimator 'custom_parts:NOT_AN_ESTIMATOR': 'NOT_AN_ESTIMATOR' is a dict, not an "
     "estimators.Estimator or estimators.Hybrid"),
    (["--estimator", "no_such_module:X"], "--estimator 'no_such_module:X': cannot import module 'no_such_module'"),
    (["--estimator", "custom_parts:MISSING"], "--estimator 'custom_parts:MISSING': module 'custom_parts' has no attribute"),
    (["--estimator", "grpo"], "--estimator grpo: must be module:object"),
    (["grpo", "--estimator", "custom_parts:CLIPPED_GRPO"], "preset 'grpo' and --estimator custom_parts:CLIPPED_GRPO: give one"),
    (["--estimator", "custom_parts:CLIPPED_GRPO", "--gate", "linear"], None),
    (["--reward", "custom_parts:NOT_AN_ESTIMATOR"], "--reward 'custom_parts:NOT_AN_ESTIMATOR': 'NOT_AN_ESTIMATOR' is a dict, not a function"),
    (["--reward", "no_such_module:f"], "--reward 'no_such_module:f': cannot import module"),
    (["--push-to-hub", "not a repo"], "--push-to-hub not a repo: must be a Hub repo id"),
])
def test_bad_custom_parts_are_one_line_errors(argv, line, capsys):
    if line is None:  # --gate on an estimator without a gate: with_gate's own error when stages are built
        with pytest.raises(SystemExit, match="preset 'CLIPPED_GRPO' has no gate"):
            make_stages(parse_args(argv))
        return
    assert error_of(argv, capsys).startswith(f"error: {line}")


def test_a_custom_reward_is_loaded_and_its_output_checked():
    cfg = parse_args(["--reward", "custom_parts:quarter"])
    assert make_reward(cfg)(["a", "b"], ["1", "2"]) == [0.25, 0.25]
    with pytest.raises(RewardError, match="returned 1 scores for 2 completions"):
        make_reward(dataclasses.replace(cfg, reward="custom_parts:one_score"))(["a", "b"], ["1", "2"])
    assert isinstance(make_reward(RunConfig()), BoxedReward)  # no --reward: the math verifier


# ------------------------------------------------------------------------------- model cards

TINY = base.BaseConfig(hidden_size=8, layers=1, heads=2, kv_heads=2, intermediate_size=16)


def fake_run(run_dir: Path, cfg: RunConfig) -> None:
    """The records a run has written when it saves checkpoint 2: config and two evaluations."""
    writer = records.RunWriter(run_dir)
    writer.write_config({**run._config_record(cfg, make_stages(cfg), "/cache/upge/base-abc123"),
                         "command": ["training/run.py", "grpo", "--steps", "2"], "git_commit": "deadbeef"})
    for step, acc in ((0, 0.125), (2, 0.375)):
        writer.log_eval([{"step": step, "benchmark": "arith", "level": "all", "metric": "avg@k", "k": 4,
                          "value": acc, "stderr": 0.05, "n": 200},
                         {"step": step, "benchmark": "arith", "level": "1", "metric": "avg@k", "k": 4,
                          "value": 0.9, "stderr": 0.1, "n": 40}])


def save_tiny(run_dir: Path, step: int) -> Path:
    torch.manual_seed(0)
    tok = base.char_tokenizer()
    model = base.build_model(TINY, tok)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return checkpoint.save(run_dir, step, model, tok, None, opt, sched, {"data": step})


def test_every_checkpoint_has_a_model_card_its_manifest_checks(tmp_path):
    cfg = parse_args(["--estimator", "custom_parts:CLIPPED_GRPO", "--steps", "2", "--reward", "custom_parts:quarter"])
    fake_run(tmp_path, cfg)
    ckpt = save_tiny(tmp_path, 2)
    card = (ckpt / "model" / model_card.CARD).read_text(encoding="utf-8")
    meta = yaml.safe_load(card.split("---")[1])
    assert meta == {"library_name": "transformers", "tags": ["upge", "post-training", "CLIPPED_GRPO"]}
    assert "# " + tmp_path.name + ", step 2 of 2" in card
    assert "preset **`CLIPPED_GRPO`** (`--estimator custom_parts:CLIPPED_GRPO`), full-parameter" in card
    assert "embedded tiny base model (`base-abc123`" in card and "/cache/upge" not in card
    assert "built-in verifiable arithmetic task" in card and "reward `custom_parts:quarter`" in card
    assert f"| mask | `{describe(Clip(0.1, 0.3))}` |" in card and "Stage `CLIPPED_GRPO`" in card
    assert "Held-out evaluation at step 2 (step 0: before training)" in card
    assert "| arith | avg@k | 4 | 0.3750 | 0.0500 | 0.1250 |" in card and "0.9000" not in card
    assert "python -m training.run grpo --steps 2" in card and "deadbeef" in card
    manifest = json.loads((ckpt / checkpoint.MANIFEST).read_text())["sha256"]
    assert "model/README.md" in manifest
    checkpoint.verify(ckpt)
    (ckpt / "model" / model_card.CARD).write_text(card + "edited\n")
    with pytest.raises(checkpoint.CorruptCheckpoint, match="README.md does not match"):
        checkpoint.verify(ckpt)


def test_a_card_says_what_it_knows(tmp_path):
    ckpt = save_tiny(tmp_path, 1)  # no records at all: the card still loads and says so
    card = (ckpt / "model" / model_card.CARD).read_text(encoding="utf-8")
    assert "No held-out evaluation was recorded up to this step." in card and "## Reproduce" not in card
    # a hub base model with LoRA: metadata for the Hub
    (tmp_path / "lora").mkdir()
    records.RunWriter(tmp_path / "lora").write_config(
        {"config": {"model": "Qwen/Qwen2.5-Math-1.5B", "lora_r": 8, "train_data": "/data/openr1.parquet"},
         "preset": "hpt"})
    card = model_card.render(tmp_path / "lora", 5)
    assert yaml.safe_load(card.split("---")[1])["base_model"] == "Qwen/Qwen2.5-Math-1.5B"
    assert "library_name: peft" in card and "LoRA r=8" in card and "`openr1.parquet`" in card
    assert "AutoPeftModelForCausalLM" in card


def test_push_to_hub_offline_is_one_clear_message_and_the_run_is_kept(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    assert os.environ.get("HF_HUB_OFFLINE") == "1" and constants.HF_HUB_OFFLINE
    ckpt = save_tiny(tmp_path, 3)
    trainer = SimpleNamespace(run_dir=tmp_path, cfg=RunConfig(push_to_hub="someone/my-model"))
    with pytest.raises(SystemExit) as stop:
        run.push_last(trainer)
    err = capsys.readouterr().err
    assert stop.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: --push-to-hub someone/my-model: not pushed, HF_HUB_OFFLINE is set")
    assert f"hf upload someone/my-model {ckpt / 'model'}" in err
    checkpoint.verify(ckpt)  # the checkpoint is untouched
    # with the offline switch off but no network (and no token), still one message
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(model_card.PushFailed, match=r"^--push-to-hub someone/my-model: not pushed \("):
        model_card.push(ckpt / "model", "someone/my-model")


# ---------------------------------------------------------------------- short real runs (slow)

TINY_RUN = base.BaseConfig(hidden_size=32, layers=2, heads=2, kv_heads=2, intermediate_size=64,
                           pretrain_steps=40, pretrain_batch=16)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    os.environ.setdefault("UPGE_CACHE", str(tmp_path_factory.mktemp("cache")))  # the e2e tests' cache if set
    return str(base.ensure_base(TINY_RUN, log=lambda s: None))


SHORT = ["--steps", "2", "--prompts-per-step", "3", "--n", "4", "--max-new-tokens", "24", "--eval-k", "1",
         "--eval-every", "0", "--save-every", "0", "--progress", "false", "--threads", "1", "--run-id", "r"]


@pytest.mark.slow
def test_a_run_from_yaml_records_the_same_config_as_from_flags(tiny_model, tmp_path, monkeypatch):
    flags = ["grpo", "--model", tiny_model, *SHORT, "--lr", "0.001"]
    text = yaml.safe_dump({"preset": "grpo", "model": tiny_model, "lr": 0.001, "steps": 2, "prompts_per_step": 3,
                           "n": 4, "max_new_tokens": 24, "eval_k": 1, "eval_every": 0, "save_every": 0,
                           "progress": False, "threads": 1, "run_id": "r"})
    got = {}
    for how, argv in (("flags", flags), ("yaml", ["--config", write(tmp_path, text)])):
        (tmp_path / how).mkdir()
        monkeypatch.chdir(tmp_path / how)  # the default --runs-dir "runs", in two places
        run.main(argv)
        got[how] = records.read_config(tmp_path / how / "runs" / "r")
    for key in ("config", "estimator", "stages", "preset", "seed", "model_path"):
        assert got["yaml"][key] == got["flags"][key], key
    assert got["yaml"]["config"]["lr"] == 0.001 and got["yaml"]["preset"] == "grpo"


@pytest.mark.slow
def test_a_custom_estimator_and_reward_train_and_are_recorded(tiny_model, tmp_path, capsys):
    argv = ["--estimator", "custom_parts:GRPO_OR_SFT", "--reward", "custom_parts:quarter", "--gate", "linear",
            "--model", tiny_model, "--runs-dir", str(tmp_path), *SHORT, "--push-to-hub", "someone/my-model"]
    with pytest.raises(SystemExit) as stop:  # the push fails offline, after the run
        run.main(argv)
    assert stop.value.code == 1 and "not pushed, HF_HUB_OFFLINE is set" in capsys.readouterr().err
    run_dir = tmp_path / "r"
    assert records.read_status(run_dir)["state"] == "finished"
    cfg = records.read_config(run_dir)
    assert set(cfg["estimator"]) == {"GRPO_OR_SFT"} and cfg["preset"] == "GRPO_OR_SFT"
    parts = cfg["estimator"]["GRPO_OR_SFT"]
    assert parts["gate"] == describe(Linear()) and parts["rl.mask"] == describe(Clip(0.2, 0.2))
    assert cfg["config"]["reward"] == "custom_parts:quarter"
    samples, _ = records.read_samples(run_dir)
    assert samples and {s["reward"] for s in samples} == {0.25}      # every row scored by quarter()
    assert {s["source"] for s in samples} == {"rollout", "demo"}      # its gated demos were added
    metrics, _ = records.read_metrics(run_dir)
    # 0.25 < 0.5 is never correct: P = 0, so the linear gate's (α, β) = (P, β(1 − P)) sends all to SFT
    assert {m["step"] for m in metrics} == {0, 1, 2}
    assert [m[records.GATE_SFT_FRACTION] for m in metrics if m["step"]] == [1.0, 1.0]
    assert {s["gate"] for s in samples} == {"sft"}
    ckpt = checkpoint.latest_intact(run_dir)
    card = (ckpt / "model" / model_card.CARD).read_text(encoding="utf-8")
    assert ckpt.name == "step-000002" and "(`--estimator custom_parts:GRPO_OR_SFT`)" in card
    assert "Held-out evaluation at step 2" in card
