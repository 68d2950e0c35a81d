"""``--dataset`` with column mapping (local jsonl / json / parquet / csv, a ``save_to_disk``
directory, a Hugging Face dataset name read offline from the local cache) and ``--report-to``
(TensorBoard event files, MLflow's local store, trackio's local database, W&B offline) read back
and compared with ``metrics.jsonl``.

The Hugging Face cache entry is written by ``datasets``' own Parquet builder with the layout
``load_dataset`` leaves after downloading a hub dataset (``<cache>/<namespace>___<name>/default/
<version>/<hash>/``), so ``load_dataset("upge-test/arith")`` finds it offline by name.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

import records
from training import base, data, run, trackers
from training.config import parse_args
from training.rollout import prompts

QUESTIONS = [("What is 2+3?", "5"), ("What is 7*6?", "42"), ("What is 9-4?", "5"), ("What is 8/2?", "4")]


def plain_rows(number: bool = False):
    """Renamed plain-text columns (``number``: the answer of row 1 is a number)."""
    return [{"question": q, "final": int(a) if number and i == 1 else a,
             "solution": f"{q[8:-1]}={a} \\boxed{{{a}}}"} for i, (q, a) in enumerate(QUESTIONS)]


def chat_rows():
    """A chat-message column holding the whole conversation (system, user, assistant) and the
    answer in a nested field."""
    return [{"conversation": [{"role": "system", "content": "Be very brief."},
                              {"role": "user", "content": q},
                              {"role": "assistant", "content": f"\\boxed{{{a}}}"}],
             "meta": {"answer": a, "source": "toy"}} for q, a in QUESTIONS]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_parquet(path: Path, rows: list) -> Path:
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


PLAIN = data.Columns(prompt="question", answer="final", demo="solution")
CHAT = data.Columns(prompt="conversation", answer="meta.answer", demo="conversation")


# ---------------------------------------------------------------------------- column mapping

@pytest.mark.parametrize("write", [write_jsonl, write_parquet])
def test_renamed_plain_text_columns(tmp_path, write):
    jsonl = write is write_jsonl  # a parquet column has one type; a jsonl one may mix them
    path = write(tmp_path / f"rows{'.jsonl' if jsonl else '.parquet'}", plain_rows(number=jsonl))
    ex = data.load_dataset(str(path), "train", PLAIN)
    assert [e.messages for e in ex] == [({"role": "user", "content": q},) for q, _ in QUESTIONS]
    assert [e.answer for e in ex] == [a for _, a in QUESTIONS]
    assert ex[1].demo == "7*6=42 \\boxed{42}"
    assert ex[0].uid == f"{path.name}:0" and len({e.uid for e in ex}) == len(ex)


@pytest.mark.parametrize("write", [write_jsonl, write_parquet])
def test_chat_message_columns(tmp_path, write):
    path = write(tmp_path / f"chat{'.jsonl' if write is write_jsonl else '.parquet'}", chat_rows())
    ex = data.load_dataset(str(path), "train", CHAT)
    q, a = QUESTIONS[2]
    # the prompt is the conversation before its assistant turn; the demonstration is that turn
    assert ex[2].messages == ({"role": "system", "content": "Be very brief."}, {"role": "user", "content": q})
    assert ex[2].demo == f"\\boxed{{{a}}}" and ex[2].answer == a


def test_csv_and_a_save_to_disk_directory(tmp_path):
    import datasets

    csv = tmp_path / "rows.csv"
    datasets.Dataset.from_list(plain_rows()).to_csv(str(csv))
    from_csv = data.load_dataset(str(csv), "train", PLAIN)
    assert [(e.messages[0]["content"], e.answer) for e in from_csv] == QUESTIONS
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(chat_rows()[:3]),
                          "test": datasets.Dataset.from_list(chat_rows()[3:])}).save_to_disk(str(saved))
    assert [e.answer for e in data.load_dataset(str(saved), "test", CHAT)] == [QUESTIONS[3][1]]
    with pytest.raises(data.DataError, match=r"no split 'validation' \(splits: train, test\)"):
        data.load_dataset(str(saved), "validation", CHAT)
    (tmp_path / "rows.txt").write_text("question,final\n")
    with pytest.raises(data.DataError, match=r"rows.txt: unknown file type '.txt' \(one of .jsonl, .json"):
        data.load_dataset(str(tmp_path / "rows.txt"), "train", PLAIN)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(data.DataError, match=r"bad.parquet: cannot be read \("):
        data.load_dataset(str(tmp_path / "bad.parquet"), "train", PLAIN)


def test_eval_split_is_a_split_of_the_dataset_or_a_file_with_its_columns(tmp_path):
    path = str(write_jsonl(tmp_path / "heldout.jsonl", plain_rows()))
    assert data.eval_source("upge-test/arith", "test") == ("upge-test/arith", "test")
    assert data.eval_source("upge-test/arith", path) == (path, "train")
    assert data.benchmark_name("upge-test/arith", "test") == "arith-test"
    assert data.benchmark_name("upge-test/arith", path) == "heldout"
    with pytest.raises(data.DataError, match="has one split, .train., not .test."):
        data.load_dataset(path, "test", PLAIN)


@pytest.mark.parametrize("cols, named", [
    (data.Columns(prompt="problem", answer="final"), "'problem' (--prompt-column)"),
    (data.Columns(prompt="question", answer="final", demo="trace"), "'trace' (--demo-column)"),
])
def test_a_missing_column_names_the_column_the_file_and_the_columns(tmp_path, cols, named):
    path = write_parquet(tmp_path / "rows.parquet", plain_rows())
    with pytest.raises(data.DataError) as e:
        data.load_dataset(str(path), "train", cols)
    assert str(e.value) == f"{path}: no column {named}; its columns: question, final, solution"


@pytest.mark.parametrize("row, field, why", [
    ({"question": "", "final": "1"}, "question", "is an empty string"),
    ({"question": 3, "final": "1"}, "question", "must be text or a list of chat messages"),
    ({"question": "q", "final": None}, "final", "is empty"),
    ({"question": [{"role": "user"}], "final": "1"}, "question[0]", "must be {'role': str"),
    ({"question": "q", "final": "1", "solution": [{"role": "user", "content": "x"}]},
     "solution", "has no demonstration"),
])
def test_a_bad_row_names_the_row_and_the_field(tmp_path, row, field, why):
    rows = plain_rows()[:2] + [{"solution": "s", **row}]
    if "solution" in row:
        rows[2]["solution"] = row["solution"]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(data.DataError) as e:
        data.load_dataset(str(path), "train", PLAIN)
    assert str(e.value).startswith(f"{path}: row 2: field {field!r} {why}")


# ----------------------------------------------------------------- a Hugging Face dataset by name

def cache_hub_dataset(cache: Path, repo: str, config: str, files: dict, work: Path) -> None:
    """Write ``repo``'s ``config`` (split -> parquet file) into the datasets cache ``cache`` as
    `load_dataset` leaves a downloaded hub dataset: ``<namespace>___<name>/<config>/<version>/
    <hash>/``, built by datasets' own Parquet builder."""
    import glob

    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, name = repo.split("/")
    stage = work / f"stage-{name}-{config}"
    Parquet(cache_dir=str(stage), dataset_name=name, config_name=config, hash="0123456789abcdef",
            data_files=files).download_and_prepare()
    (built,) = glob.glob(str(stage / name / f"{config}-*"))
    (cache / f"{namespace}___{name}").mkdir(parents=True, exist_ok=True)
    shutil.move(built, cache / f"{namespace}___{name}" / config)


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """A datasets cache holding "upge-test/arith" (splits train, test) and "upge-test/subsets"
    (configuration "main": split train); the process is offline (conftest), so only the cache
    can answer."""
    import datasets

    cache = tmp_path / "hf-datasets"
    cache_hub_dataset(cache, "upge-test/arith", "default",
                      {"train": str(write_parquet(tmp_path / "train.parquet", chat_rows()[:3])),
                       "test": str(write_parquet(tmp_path / "test.parquet", chat_rows()[3:]))}, tmp_path)
    cache_hub_dataset(cache, "upge-test/subsets", "main",
                      {"train": str(write_parquet(tmp_path / "main.parquet", chat_rows()[1:3]))}, tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    assert datasets.config.HF_HUB_OFFLINE
    return cache


def test_a_hub_dataset_name_loads_offline_from_the_cache(hf_cache):
    ex = data.load_dataset("upge-test/arith", "train", CHAT)
    assert [e.answer for e in ex] == [a for _, a in QUESTIONS[:3]]
    assert ex[0].uid == "upge-test/arith:train:0"
    assert [e.answer for e in data.load_dataset("upge-test/arith", "test", CHAT)] == [QUESTIONS[3][1]]
    with pytest.raises(data.DataError) as e:
        data.load_dataset("upge-test/arith", "train", data.Columns(prompt="question"))
    assert "upge-test/arith (split 'train'): no column 'question' (--prompt-column); its columns: " \
           "conversation, meta" == str(e.value)


def test_a_hub_dataset_configuration_is_chosen_by_name(hf_cache):
    ex = data.load_dataset("upge-test/subsets", "train", CHAT, config="main")
    assert [e.answer for e in ex] == [a for _, a in QUESTIONS[1:3]]
    with pytest.raises(data.DataError, match=r"(?s)upge-test/subsets: cannot be read with datasets "
                                             r"\(ValueError: .*'other'.*\['main'\]"):
        data.load_dataset("upge-test/subsets", "train", CHAT, config="other")


def test_a_hub_dataset_not_in_the_cache_offline_is_a_clear_error(hf_cache):
    with pytest.raises(data.DataError) as e:
        data.load_dataset("upge-test/absent", "train", CHAT)
    assert str(e.value).startswith(f"upge-test/absent: not a local file, and the Hugging Face dataset "
                                   f"is not in the local cache ({hf_cache}) while offline")
    with pytest.raises(data.DataError, match="no such file or directory"):
        data.load_dataset("./absent.jsonl", "train", CHAT)


# ------------------------------------------------------------------------------ chat template

def test_the_chat_template_is_applied_when_the_tokenizer_has_one():
    tok = base.char_tokenizer()
    msgs = [{"role": "system", "content": "Be very brief."}, {"role": "user", "content": "1+1?"}]
    assert prompts.prompt_ids(tok, msgs, "chat") == tok("<|system|>Be very brief.<|user|>1+1?<|assistant|>",
                                                        add_special_tokens=False)["input_ids"]
    tok.chat_template = None  # a base model's tokenizer: the messages' text
    assert prompts.prompt_ids(tok, msgs, "chat") == tok("Be very brief.\n\n1+1?")["input_ids"]


# ------------------------------------------------------------------------------ config checks

def test_dataset_flags_are_checked_before_the_run(tmp_path, capsys):
    path = str(write_jsonl(tmp_path / "rows.jsonl", plain_rows()))
    for argv, says in [
        (["hpt", "--dataset", path], "--dataset: hpt trains on demonstrations (hpt); name their column "
                                     "with --demo-column"),
        (["grpo", "--dataset", path, "--train-data", path], "--dataset and --train-data both name"),
        (["grpo", "--eval-split", "test"], "--eval-split test: is a split of --dataset"),
        (["grpo", "--report-to", "tensorboard,neptune"], "--report-to tensorboard,neptune: must be a "
                                                         "comma list of none, tensorboard, mlflow"),
    ]:
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert says in capsys.readouterr().err
    cfg = parse_args(["grpo", "--dataset", path, "--prompt-column", "question", "--report-to", "none"])
    assert cfg.dataset == path and cfg.prompt_column == "question"
    assert parse_args(["sft_then_grpo", "--dataset", path, "--demo-column", "solution"]).demo_column


def test_a_tracker_that_is_not_installed_names_the_extra(monkeypatch, capsys):
    class Absent(trackers.TensorBoard):
        module = "upge_tracker_that_is_not_installed"

    monkeypatch.setitem(trackers.TRACKERS, "tensorboard", Absent)
    with pytest.raises(SystemExit):
        parse_args(["grpo", "--report-to", "none,tensorboard"])
    assert ("--report-to none,tensorboard: tensorboard not installed: pip install 'upge[trackers]'"
            in capsys.readouterr().err)


# ---------------------------------------------------------------------------------- trackers

def jsonl_scalars(run_dir: Path) -> dict:
    """{(key, step): value} of every numeric metric in metrics.jsonl."""
    rows, _ = records.read_metrics(run_dir)
    return {(k, r["step"]): float(v) for r in rows for k, v in r.items()
            if k not in ("step", "time") and isinstance(v, (int, float))}


def tensorboard_scalars(run_dir: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {(tag, e.step): e.value for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)}


def same(a: dict, b: dict, rel: float = 0.0) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or math.isclose(a[k], b[k], rel_tol=rel, abs_tol=0)
        for k in a)


def test_tensorboard_receives_every_numeric_metric_row(tmp_path):
    """The tracker path alone, on a real RunWriter (fast): text values stay out, NaN goes in."""
    writer = trackers.reporting(records.RunWriter(tmp_path / "r"), "tensorboard", tmp_path / "r",
                                "upge", {"preset": "grpo", "lr": 1e-3})
    writer.log_metrics(0, {records.EVAL_ACCURACY: 0.25, records.eval_passk_key(4): 0.5})
    writer.log_metrics(1, {records.TRAIN_LOSS: 0.123456789, records.GRAD_NORM: float("nan"),
                           records.TRAIN_SKIP_REASON: "the loss is not finite"})
    writer.log_metrics(2, {records.TRAIN_LOSS: -1.5, records.ROLLOUT_SAMPLES: 8})
    writer.set_status("finished", 2, "done")
    want = jsonl_scalars(tmp_path / "r")
    assert len(want) == 6 and (records.TRAIN_SKIP_REASON, 1) not in want
    assert same(tensorboard_scalars(tmp_path / "r"), want, rel=1e-7)  # event files hold float32


@pytest.fixture()
def tiny_model_dir(tmp_path_factory) -> str:
    """An untrained tiny Llama with the embedded character tokenizer (seconds to build)."""
    d = tmp_path_factory.mktemp("tiny-model")
    tok = base.char_tokenizer()
    base.build_model(base.BaseConfig(hidden_size=32, layers=1, heads=2, kv_heads=2,
                                     intermediate_size=48), tok).save_pretrained(d)
    tok.save_pretrained(d)
    return str(d)


def correct_if_boxed(completions, ground_truth, **kw):
    """A deterministic reward that varies within a group (so the GRPO gradient is not zero)."""
    return [float(len(c) % 3 == 0) for c in completions]


def short_run(model: str, runs: Path, *extra: str, preset: str = "grpo") -> list[str]:
    return [preset, "--model", model, "--runs-dir", str(runs), "--run-id", "r", "--steps", "2",
            "--prompts-per-step", "2", "--n", "2", "--max-new-tokens", "6", "--eval-k", "1",
            "--eval-every", "0", "--save-every", "0", "--progress", "false", "--threads", "1", *extra]


def test_a_short_hpt_run_on_a_hub_dataset_reports_to_tensorboard(tiny_model_dir, hf_cache, tmp_path):
    """HPT on a --dataset by hub name (offline cache) with one chat-message column giving prompt
    and demonstration, a nested answer column, --eval-split, --report-to tensorboard: the
    demonstrations are the column's assistant turns, and the event files hold exactly
    metrics.jsonl's scalars."""
    t = run.main(short_run(tiny_model_dir, tmp_path / "runs", "--dataset", "upge-test/arith",
                           "--prompt-column", "conversation", "--answer-column", "meta.answer",
                           "--demo-column", "conversation", "--max-new-tokens", "12",
                           "--eval-split", "test", "--report-to", "tensorboard", preset="hpt"),
                 reward_fn=correct_if_boxed)
    samples, _ = records.read_samples(t.run_dir)
    assert {s["prompt_id"].rsplit(":", 1)[0] for s in samples} == {"upge-test/arith:train"}
    demos = [s for s in samples if s["source"] == "demo"]
    answers = dict(QUESTIONS[:3]).values()  # one character per token, and the eos
    assert demos and {s["n_tokens"] for s in demos} <= {len(f"\\boxed{{{a}}}") + 1 for a in answers}
    evals, _ = records.read_eval(t.run_dir)
    assert {r["benchmark"] for r in evals} == {"arith-test"} and {r["n"] for r in evals} == {1}
    want = jsonl_scalars(t.run_dir)
    assert {s for _, s in want} == {0, 1, 2} and (records.TRAIN_LOSS, 2) in want
    assert same(tensorboard_scalars(t.run_dir), want, rel=1e-6)
    assert records.read_config(t.run_dir)["config"]["report_to"] == "tensorboard"


def mlflow_scalars(uri: str, run_name: str) -> dict:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (r,) = client.search_runs([client.get_experiment_by_name("upge").experiment_id],
                               filter_string=f"attributes.run_name = '{run_name}'")
    return {(m.key, m.step): m.value for key in r.data.metrics
            for m in client.get_metric_history(r.info.run_id, key)}, r


@pytest.mark.slow
def test_a_short_run_reports_to_mlflow_trackio_and_wandb_offline(tiny_model_dir, tmp_path, monkeypatch):
    """MLflow's local store (sqlite under the runs directory) and trackio's local database read
    back with their own clients; W&B writes its offline run directory."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    rows = write_jsonl(tmp_path / "rows.jsonl", plain_rows()[:3])
    heldout = write_jsonl(tmp_path / "heldout.jsonl", plain_rows()[3:])
    t = run.main(short_run(tiny_model_dir, tmp_path / "runs", "--dataset", str(rows),
                           "--prompt-column", "question", "--answer-column", "final",
                           "--eval-split", str(heldout), "--report-to", "mlflow,trackio,wandb"),
                 reward_fn=correct_if_boxed)
    evals, _ = records.read_eval(t.run_dir)
    assert {r["benchmark"] for r in evals} == {"heldout"} and {r["n"] for r in evals} == {1}
    want = jsonl_scalars(t.run_dir)
    got, r = mlflow_scalars(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", "r")
    assert same(got, {(trackers.MLflow.key(k), s): v for (k, s), v in want.items()})
    assert r.data.params["dataset"] == str(rows) and r.info.status == "FINISHED"

    from trackio.sqlite_storage import SQLiteStorage

    logs = SQLiteStorage.get_logs("upge", "r")
    got = {(k, row["step"]): float(v) for row in logs for k, v in row.items()
           if (k, row["step"]) in want}
    assert same(got, want)
    assert list((t.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_problems_without_a_level_are_counted_once():
    """A --dataset row has level "all": the evaluation's "all" row counts it once, not twice."""
    from training.evaluation.heldout import EvalResult

    rows = EvalResult(["all", "all", "all"], [[True, False], [False, False], [True, True]]).rows(3)
    (avg,) = [r for r in rows if r["metric"] == "avg@k"]
    assert (avg["level"], avg["n"], avg["value"]) == ("all", 3, 0.5)
