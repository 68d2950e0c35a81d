"""``python -m training.eval`` end to end on a tiny randomly initialised local model (built from
a config, nothing downloaded) over small slices of the benchmarks, and its bad-input messages."""
import json

import pytest
import torch

import records
from training import base
from training.evaluation import datasets as bm
from training.evaluation import harness as ev

from eval_data import needs_eval_data  # noqa: E402

pytestmark = needs_eval_data


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 13k-parameter Qwen2 with the project's character tokenizer (and its chat template)."""
    path = tmp_path_factory.mktemp("tiny")
    tok = base.char_tokenizer()
    cfg = base.BaseConfig(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64,
                          max_positions=4096)
    with torch.random.fork_rng(devices=[]):
        base.build_model(cfg, tok).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def run(tiny, tmp_path, *extra):
    out = tmp_path / "run"
    argv = ["--model", str(tiny), "--limit", "2", "--n", "2", "--max-new-tokens", "16",
            "--bootstrap", "50", "--threads", "1", "--out", str(out), *extra]
    assert ev.main(argv) == 0
    return out


def check_records(out, names, n=2, problems=2):
    rows, notes = records.read_eval(out)
    assert not notes
    for b in names:
        mine = [r for r in rows if r["benchmark"] == b]
        assert {(r["metric"], r["k"]) for r in mine} == {("avg@k", n), ("pass@k", 1), ("pass@k", 2)}
        assert all(0.0 <= r["value"] <= 1.0 and r["n"] == problems for r in mine)
        gens, _ = records.read_generations(out, b)
        assert len(gens) == problems * n
        assert {"problem", "sample_idx", "completion", "correct", "n_tokens", "pred"} <= set(gens[0])
        assert all(g["n_tokens"] <= 16 for g in gens)
    cfg = records.read_config(out)
    assert cfg["kind"] == "eval" and cfg["options"]["temperature"] == 0.6
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["throughput"]["tokens"] > 0
    return rows, summary


def test_two_benchmarks_end_to_end(tiny, tmp_path):
    out = run(tiny, tmp_path, "--benchmarks", "math500,gpqa")
    rows, summary = check_records(out, ["math500", "gpqa"])
    table = (out / "eval" / "tables.md").read_text()
    assert "MATH-500 (avg@2)" in table and "GPQA (avg@2)" in table and "Avg*" in table


@pytest.mark.slow
def test_every_benchmark_end_to_end_zero_template(tiny, tmp_path):
    out = run(tiny, tmp_path, "--benchmarks", "all", "--template", "zero")
    rows, summary = check_records(out, list(bm.BENCHMARKS))
    assert summary["averages"]["avg_id"]["complete"] and summary["averages"]["avg_ood"]["complete"]


def test_paper_protocol_defaults():
    args = ev.build_parser().parse_args(["--model", "m"])
    assert (args.temperature, args.top_p, args.max_new_tokens, args.n) == (0.6, 0.95, 8192, None)
    assert {b: s.paper_n for b, s in bm.BENCHMARKS.items()} == {
        "aime24": 32, "aime25": 32, "amc": 32, "math500": 1, "minerva": 1, "olympiad": 1,
        "gpqa": 1, "arc_c": 1}


def test_zero_template_is_the_papers():
    p = bm.Problem("x", "x-0", "What is 2+2?", "4", "math")
    assert ev.prompt_text(p, "zero") == ("Question:\nWhat is 2+2?\nPlease reason step by step, and "
                                         "put your final answer within \\boxed{}.\nAnswer:\nLet's "
                                         "think step by step.")
    assert ev.prompt_text(p, "chat") == [{"role": "user", "content": "What is 2+2?"}]


def test_pass_k_rows_bootstrap():
    rows = ev.pass_k_rows("aime24", ["a", "b", "c"], [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], 200, 0)
    by = {(r["metric"], r["k"]): r for r in rows}
    assert by[("avg@k", 4)]["value"] == pytest.approx(5 / 12)
    assert by[("pass@k", 1)]["value"] == pytest.approx(5 / 12)
    assert by[("pass@k", 4)]["value"] == pytest.approx(2 / 3)
    assert by[("pass@k", 2)]["lo"] <= by[("pass@k", 2)]["value"] <= by[("pass@k", 2)]["hi"]


# ------------------------------------------------------------------------------- bad input

def expect_error(argv, capsys, *fragments):
    assert ev.main(argv) == 2
    err = capsys.readouterr().err
    for f in fragments:
        assert f in err, err
    return err


def test_hub_id_without_network_or_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    expect_error(["--model", "no-such-org/no-such-model-xyz", "--out", str(tmp_path / "o")], capsys,
                 "no-such-org/no-such-model-xyz", "not in the local Hugging Face cache",
                 "huggingface-cli download", "--model DIR")


def test_missing_chat_template(tiny, capsys, tmp_path):
    from transformers import AutoTokenizer

    bare = tmp_path / "bare"
    tok = AutoTokenizer.from_pretrained(tiny)
    tok.chat_template = None
    tok.save_pretrained(bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    for f in ("config.json", "model.safetensors", "generation_config.json"):
        if (tiny / f).exists():
            (bare / f).write_bytes((tiny / f).read_bytes())
    expect_error(["--model", str(bare), "--benchmarks", "aime24", "--limit", "1"], capsys,
                 "has no chat template", "--template zero", "--chat-template")


def test_list_answer_in_data(capsys, tmp_path):
    d = tmp_path / "data" / "Unify-Post-Training" / "data" / "AIME24"
    d.mkdir(parents=True)
    (d / "test.json").write_text(json.dumps([{"prompt": "q", "answer": ["1", "2"]}]))
    expect_error(["--model", "m", "--benchmarks", "aime24", "--source", "hpt",
                  "--data-dir", str(tmp_path / "data")], capsys, "field 'answer' is a list")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_gpu_only_options_on_cpu(capsys):
    expect_error(["--model", "m", "--benchmarks", "aime24", "--device", "cuda"], capsys,
                 "--device cuda", "no CUDA device", "--device cpu")
    expect_error(["--model", "m", "--benchmarks", "aime24", "--tensor-parallel-size", "2"], capsys,
                 "--tensor-parallel-size", "vllm")


@pytest.mark.parametrize("flag,value,allowed", [
    ("--bootstrap", "0", "≥ 1"), ("--threads", "-1", "≥ 0"), ("--seed", "-3", "≥ 0"),
    ("--gpu-memory-utilization", "1.5", "in (0, 1]"), ("--n", "0", "≥ 1")])
def test_nonsense_numbers_are_refused_before_any_work(capsys, flag, value, allowed):
    err = expect_error(["--model", "m", "--benchmarks", "aime24", flag, value], capsys,
                       f"{flag} must be {allowed}, got {value}")
    assert err.count("\n") == 1


def test_vllm_engine_without_vllm(tiny, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is importable here")
    expect_error(["--model", str(tiny), "--benchmarks", "aime24", "--limit", "1",
                  "--rollout-engine", "vllm"], capsys, "vllm package is not importable",
                 "--rollout-engine hf")


def test_unknown_benchmark_and_missing_data(capsys, tmp_path):
    expect_error(["--model", "m", "--benchmarks", "aime26"], capsys, "unknown benchmark 'aime26'")
    expect_error(["--model", "m", "--data-dir", str(tmp_path / "none")], capsys,
                 str(tmp_path / "none"), "does not exist")
