"""The exact tree testbed (probes-spec §6): sizes, the spec's base pass rates, exact scores."""
import pytest
import torch

from probes.testbed import Tree, TreeConfig

SPEC_P_TRAIN = [0.0372, 0.1436, 0.0368, 0.0922, 0.0095, 0.0206, 0.0136, 0.0020]
SPEC_P_HELDOUT = [0.0734, 0.1635, 0.0113, 0.0169]


@pytest.fixture(scope="module")
def tree():
    return Tree()


def test_sizes_and_normalisation(tree):
    th = tree.base_theta()
    assert tree.J == 63 and tree.n_nodes == 31 and th.numel() == 1209
    assert torch.allclose(tree.probs(th).sum(-1), torch.ones(12, dtype=torch.float64), atol=1e-12)
    small = Tree(TreeConfig(V=4, H=3, train=(("ab",), ("c",)), heldout=(("ba",),)))
    assert small.J == (3 ** 3 - 1) // 2 + 3 ** 3 and small.n_nodes == 13
    assert torch.allclose(small.probs(small.base_theta()).sum(-1), torch.ones(3, dtype=torch.float64))


def test_base_pass_rates_match_spec(tree):
    p = tree.pass_rate(tree.base_theta())
    assert torch.allclose(p[:8], torch.tensor(SPEC_P_TRAIN, dtype=torch.float64), atol=6e-5)
    assert torch.allclose(p[8:], torch.tensor(SPEC_P_HELDOUT, dtype=torch.float64), atol=6e-5)


def test_tabular_score_closed_form(tree):
    """∂log π(y_t|s_t)/∂z_s = e_{y_t} − π(·|s_t), at W[s_t] and U[x,s_t] (probes-spec §2.2)."""
    th = tree.base_theta()
    S = tree.token_scores(th)
    pi = torch.softmax(tree.policy.logits(th), -1)
    for x, j, t in [(0, 5, 0), (3, 40, 2), (9, 62, 4), (11, 0, 0)]:
        n, a = int(tree.node[j, t]), int(tree.tok[j, t])
        want = -pi[x, n].clone()
        want[a] += 1
        W, U = tree.policy.split(S[x, j, t])
        assert torch.allclose(W[n], want, atol=1e-14) and torch.allclose(U[x, n], want, atol=1e-14)
        assert float(W.abs().sum() - W[n].abs().sum()) < 1e-14
        assert float(U.abs().sum() - U[x, n].abs().sum()) < 1e-14


def test_mlp_scores_equal_autograd():
    """Random vector-Jacobian products of the MLP policy's token log-probs match its scores."""
    tb = Tree(TreeConfig(policy="mlp"))
    th = tb.base_theta().requires_grad_(True)
    S = tb.token_scores(th.detach())
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        v = torch.randn(tb.X, tb.J, tb.cfg.H, generator=gen, dtype=torch.float64)
        (vjp,) = torch.autograd.grad((tb.token_logp(th) * v).sum(), th)
        assert torch.allclose(torch.einsum("xjt,xjtd->d", v, S), vjp, atol=1e-12)


def test_objectives_and_exact_passk(tree):
    th = tree.checkpoint("mid")
    gp = tree.grad_p(th)
    assert torch.allclose(tree.grad_J(th), gp[tree.train_idx].mean(0), atol=1e-14)
    p = tree.pass_rate(th)
    ks = [1, 4, 1024]
    want = torch.stack([(1 - (1 - p[tree.heldout_idx]) ** k).mean() for k in ks])
    assert torch.allclose(tree.pass_at_k(th, ks, tree.heldout_idx), want)
    assert torch.allclose(tree.values(th)[:, 0, 0], p)  # V(root) = p_x
    # ∇p_x = Σ_{y∈C} π(y) s(y) with the enumerated scores
    S = tree.token_scores(th).sum(2)
    assert torch.allclose(torch.einsum("xj,xjd->xd", tree.probs(th) * tree.correct, S), gp, atol=1e-13)


def test_bad_config():
    with pytest.raises(ValueError, match="V must be"):
        TreeConfig(V=7)
    with pytest.raises(ValueError, match="shorter than H"):
        TreeConfig(H=3)
