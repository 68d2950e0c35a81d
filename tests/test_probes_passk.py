"""pass@k: brute force over k-subsets, bootstrap coverage, crossing point, CLI and bad input."""
import itertools
import json
import math

import numpy as np
import pytest
from scipy import integrate, stats

import records
from probes import passk as PK


@pytest.mark.parametrize("n,c", [(5, 0), (5, 2), (6, 5), (7, 7), (8, 3)])
def test_pass_at_k_equals_enumeration_of_k_subsets(n, c):
    outcomes = [1] * c + [0] * (n - c)
    cur = PK.curves(np.array([n]), np.array([c]), n)[0]
    for k in range(1, n + 1):
        subsets = list(itertools.combinations(outcomes, k))
        brute = sum(any(s) for s in subsets) / len(subsets)
        assert PK.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12)
        assert cur[k - 1] == pytest.approx(brute, abs=1e-12)
    assert PK.pass_at_k(n, c, 1) == pytest.approx(c / n)


def test_k_larger_than_n_fails():
    with pytest.raises(PK.PassKError, match="k=9 > n=8"):
        PK.pass_at_k(8, 2, 9)
    with pytest.raises(PK.PassKError, match="k=9 > n=8"):
        PK.analyse([PK.Counts([0], np.array([8]), np.array([2]))], ["a"], [1, 9])


def _true_passk(a, b, k):
    """E_p[1 − (1−p)^k] for p ∼ Beta(a, b)."""
    return integrate.quad(lambda p: (1 - (1 - p) ** k) * stats.beta.pdf(p, a, b), 0, 1)[0]


def test_bootstrap_ci_covers_truth_at_nominal_rate():
    """Problems with p ∼ Beta(0.5, 2), n = 16 samples each: the 95% CI of pass@k (k = 1, 4)
    covers the known population value in ≈ 95% of 300 synthetic benchmarks."""
    rng = np.random.default_rng(0)
    a, b, n, P, T = 0.5, 2.0, 16, 60, 300
    ks = [1, 4]
    truth = [_true_passk(a, b, k) for k in ks]
    hits = np.zeros(len(ks))
    for t in range(T):
        p = rng.beta(a, b, P)
        c = rng.binomial(n, p)
        res = PK.analyse([PK.Counts(list(range(P)), np.full(P, n), c)], ["m"], ks, B=400, seed=t)
        m = res["models"]["m"]
        hits += [m["lo"][i] <= truth[i] <= m["hi"][i] for i in range(len(ks))]
    rate = hits / T
    se = math.sqrt(0.95 * 0.05 / T)
    assert np.all(np.abs(rate - 0.95) < 3.5 * se), rate


def test_crossing_point():
    a = np.array([0.1, 0.3, 0.6, 0.8])
    b = np.array([0.4, 0.5, 0.6, 0.7])
    assert PK.crossing(a, b) == 3
    assert math.isnan(PK.crossing(a * 0, b))


def _write(path, probs, n, seed):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i, p in enumerate(probs):
            for _ in range(n):
                f.write(json.dumps({"problem": f"q{i}", "correct": bool(rng.random() < p)}) + "\n")


def test_cli_two_models_paired_with_crossing(tmp_path, capsys):
    """An 'RL' model sharp on easy problems, a 'base' model broad: base overtakes at larger k."""
    base = [0.15] * 30 + [0.08] * 30
    rl = [0.6] * 30 + [0.0] * 30
    _write(tmp_path / "base.jsonl", base, 64, 1)
    _write(tmp_path / "rl.jsonl", rl, 64, 2)
    out = tmp_path / "rec"
    rc = PK.main([str(tmp_path / "base.jsonl"), str(tmp_path / "rl.jsonl"), "--labels", "base,rl",
                  "--k", "all", "--bootstrap", "300", "--format", "json", "--out", str(out)])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["models"]["rl"]["pass@k"][0] > res["models"]["base"]["pass@k"][0]
    assert res["models"]["base"]["pass@k"][-1] > res["models"]["rl"]["pass@k"][-1]
    cr = res["crossing"]
    assert 1 < cr["k_star"] < 64 and cr["lo"] <= cr["k_star"] <= cr["hi"] and cr["p_exists"] > 0.9
    rows, _ = records.read_probes(out, "passk")
    assert {r["metric"] for r in rows} == {"pass@k", "pass@k_diff", "k_star"}


def test_cli_reads_run_samples_and_rejects_k_above_n(tmp_path, capsys):
    w = records.RunWriter(tmp_path / "run")
    rows = [{"step": s, "prompt_id": f"p{i}", "sample_idx": j, "source": src, "reward": 1.0,
             "correct": (i + j + s) % 3 == 0, "n_tokens": 5, "gate": "rl"}
            for s in (0, 1) for i in range(4) for j in range(8) for src in ("rollout", "demo")]
    w.log_samples(rows)
    assert PK.main([str(tmp_path / "run"), "--k", "1,8", "--no-records", "--format", "json"]) == 0
    res = json.loads(capsys.readouterr().out)
    want = np.mean([PK.pass_at_k(8, sum((i + j + 1) % 3 == 0 for j in range(8)), 1) for i in range(4)])
    assert res["models"]["run"]["pass@k"][0] == pytest.approx(want)
    assert PK.main([str(tmp_path / "run"), "--k", "1,16", "--no-records"]) == 2
    assert "k=16 > n=8" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["false", "true", None, 2, [True]])
def test_cli_rejects_a_correct_that_is_not_a_bool(tmp_path, capsys, bad):
    """'false' (a string) is truthy: it once counted as correct and gave pass@k = 1.0."""
    rows = [{"problem": f"p{i // 4}", "correct": False} for i in range(8)]
    rows[5]["correct"] = bad
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert PK.main([str(path), "--k", "1,4", "--no-records"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: row 6: field 'correct' must be true or false, got {bad!r}" in err
    assert err.count("\n") == 1


def test_cli_names_the_run_file_and_record_of_a_bad_sample(tmp_path, capsys):
    w = records.RunWriter(tmp_path / "run")
    rows = [{"step": 1, "prompt_id": f"p{i % 2}", "source": src, "correct": True}
            for i in range(4) for src in ("demo", "rollout")]
    rows[5]["correct"] = "false"                       # the third rollout, sixth record
    w.log_samples(rows)
    assert PK.main([str(tmp_path / "run"), "--k", "1", "--no-records"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / records.SAMPLES}: row 6: field 'correct'" in err
    rows[5]["correct"], rows[3]["step"] = False, "one"
    (tmp_path / "run" / records.SAMPLES).unlink()
    w.log_samples(rows)
    assert PK.main([str(tmp_path / "run"), "--k", "1", "--no-records"]) == 2
    assert "row 4: field 'step' must be an integer, got 'one'" in capsys.readouterr().err
