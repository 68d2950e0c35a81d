"""Benchmark loaders: every copied file loads as it is, with the row counts, per-source counts
and checksums that PROVENANCE.md states (parsed from it, not copied into the test), and bad
inputs fail naming the file, row and field."""
import hashlib
import json
import re
from collections import Counter

import pytest

from training.evaluation import datasets as bm

DATA = bm.DEFAULT_DATA_DIR
from eval_data import needs_eval_data  # noqa: E402

pytestmark = needs_eval_data


def provenance() -> dict:
    """{relative path: (rows, sha256, content cell)} from the tables of PROVENANCE.md."""
    out = {}
    for line in (bm.data_dir() / "PROVENANCE.md").read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and re.fullmatch(r"[0-9a-f]{64}", cells[5]) and cells[3].isdigit():
            out[cells[0]] = (int(cells[3]), cells[5], cells[4])
    return out


def test_provenance_lists_every_known_file():
    assert set(provenance()) == set(bm.data_files())


@pytest.mark.parametrize("relpath", bm.data_files())
def test_file_rows_and_checksum_match_provenance(relpath):
    rows, sha, _ = provenance()[relpath]
    path = bm.data_dir() / relpath
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    loaded = bm.load_file(relpath)
    assert len(loaded) == rows
    assert all(p.question.strip() and p.answer for p in loaded)


def _breakdown(cell: str) -> dict:
    """'aime 960 (=30×32), amc 2656 (=83×32), math 500' -> {'aime': (960, 30), ...}."""
    out = {}
    for name, count, unique in re.findall(r"(\w+) (\d+)(?: \(=(\d+)×\d+\))?", cell):
        out[name] = (int(count), int(unique or count))
    return out


@pytest.mark.parametrize("relpath", ["LUFFY/data/valid.all.parquet", "LUFFY/data/valid.parquet"])
def test_per_source_counts_match_provenance(relpath):
    cell = provenance()[relpath][2]
    want = {k: v for k, v in _breakdown(cell).items() if k in bm._NAME_OF}
    got = Counter(p.benchmark for p in bm.load_file(relpath))
    assert {bm._NAME_OF[k]: v[0] for k, v in want.items()} == dict(got)


def test_unique_problems_per_benchmark():
    cell = provenance()[bm.ALL_MATH][2]
    unique = {bm._NAME_OF[k]: v[1] for k, v in _breakdown(cell).items() if k in bm._NAME_OF}
    for name, count in unique.items():
        assert len(bm.load_benchmark(name)) == count
    assert {n: len(bm.load_benchmark(n, "hpt")) for n in ("aime24", "aime25", "amc", "olympiad")} \
        == {"aime24": 30, "aime25": 30, "amc": 40, "olympiad": 674}
    assert len(bm.load_benchmark("gpqa")) == 198 and len(bm.load_benchmark("arc_c")) == 1172


def test_multiple_choice_rows():
    arc = bm.load_benchmark("arc_c")
    answers = Counter(p.answer.isdigit() for p in arc)
    assert answers == {False: 1150, True: 22}                    # PROVENANCE: 1150 letters, 22 digits
    for p in arc + bm.load_benchmark("gpqa") + bm.load_benchmark("gpqa", "hpt"):
        assert p.kind == "mc" and p.answer in p.choices and len(p.choices) >= 3
    gpqa = bm.load_benchmark("gpqa")
    assert all(p.choices == ("A", "B", "C", "D") for p in gpqa)   # numbered reagent steps are not options
    assert gpqa[0].question.startswith("Answer the following multiple choice question")
    assert gpqa[0].system.startswith("Your task is to follow")


def test_normalisation_keeps_the_file_text():
    a24 = bm.load_benchmark("aime24", "hpt")
    assert a24[0].raw_answer == "\\boxed{204}" and a24[0].answer == "204"
    luffy = {p.question.strip(): p.answer for p in bm.load_benchmark("math500")}
    hpt = {p.question.strip(): p.answer for p in bm.load_benchmark("math500", "hpt")}
    assert luffy == hpt                                           # PROVENANCE: 500/500 identical


def test_limit_and_names():
    assert [p.id for p in bm.load_benchmark("amc", limit=3)] == ["amc-0", "amc-1", "amc-2"]
    assert bm.parse_names("ood,aime24") == ["arc_c", "gpqa", "aime24"]
    assert bm.parse_names("all") == list(bm.BENCHMARKS)
    with pytest.raises(bm.BenchmarkError, match="unknown benchmark 'aime26'.*valid: aime24"):
        bm.parse_names("aime26")
    with pytest.raises(bm.BenchmarkError, match="no 'hpt' copy.*--source luffy"):
        bm.load_benchmark("arc_c", "hpt")


# ------------------------------------------------------------------------------- bad input

def test_missing_data_dir_names_the_path(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(bm.ENV_VAR, str(missing))
    with pytest.raises(bm.BenchmarkError, match=re.escape(str(missing)) + r".*UPGE_EVAL_DATA"):
        bm.load_benchmark("aime24")
    with pytest.raises(bm.BenchmarkError, match="from --data-dir"):
        bm.data_dir(str(missing))


def _fake_dir(tmp_path, rows):
    d = tmp_path / "data" / "Unify-Post-Training" / "data" / "AIME24"
    d.mkdir(parents=True)
    (d / "test.json").write_text(json.dumps(rows))
    return str(tmp_path / "data")


def test_list_answer_is_refused_with_a_clear_message(tmp_path):
    data = _fake_dir(tmp_path, [{"prompt": "1+1?", "answer": "2"}, {"prompt": "x?", "answer": ["1", "2"]}])
    with pytest.raises(bm.BenchmarkError, match=r"row 1: field 'answer' is a list.*one ground-truth string"):
        bm.load_benchmark("aime24", "hpt", data=data)


def test_empty_answer_and_missing_prompt(tmp_path):
    data = _fake_dir(tmp_path, [{"prompt": "", "answer": "2"}])
    with pytest.raises(bm.BenchmarkError, match="row 0: field 'prompt'"):
        bm.load_benchmark("aime24", "hpt", data=data)
