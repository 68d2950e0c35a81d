"""The exact-enumeration tree testbed (probes-spec §6).

Responses are strings over V−1 letters followed by EOS, or length-H letter strings with no EOS
(truncated, reward 0): |Y| = (L^H − 1)/(L − 1) + L^H with L = V − 1 letters (63 for V=3, H=5).
The policy is autoregressive over prefix nodes (all letter strings of length < H):

    logits(x, s) = W[s] + U[x, s]                   (tabular: W shared "strategy", U per prompt)

or a tiny MLP over (prompt embedding, prefix features) (``policy="mlp"``). Everything below is a
function of the flat parameter vector θ, so J, ∇J, ∇J_μ and the token scores
∂log π(y_t|s_t)/∂θ (via ``torch.func.jacrev``) are exact. For the tabular policy the score has
the closed form e_{y_t} − π(·|s_t) placed at W[s_t] and U[x, s_t] (probes-spec §2.2).

Defaults reproduce probes-spec §6: 8 train + 4 held-out prompts, root logits (1.5, −0.5, −3.0),
other entries N(0, 0.3²) from ``numpy.random.default_rng(0)`` (W drawn before U); base
p_x(train) = [0.0372, 0.1436, 0.0368, 0.0922, 0.0095, 0.0206, 0.0136, 0.0020].
"""
from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

LETTERS = "abcd"
TRAIN_ANSWERS = (("aab", "aba"), ("abb", "aa"), ("aaa", "abab"), ("ab", "aabb"), ("abaa",),
                 ("aabb", "abba"), ("bab",), ("bbaa",))
HELDOUT_ANSWERS = (("aab", "abb"), ("aba", "aa"), ("bba",), ("baa", "bab"))
ROOT_LOGITS = (1.5, -0.5, -3.0)
DEMONSTRATORS = ("first", "uniform")


@dataclass(frozen=True)
class TreeConfig:
    """V: vocabulary size incl. EOS (3..5); H: horizon; train/heldout: correct-answer sets per
    prompt (each answer is EOS-terminated); init_std/seed: base-model draw; policy:
    "tabular" | "mlp"; demonstrator: "first" (first correct answer) | "uniform" (over C_x)."""

    V: int = 3
    H: int = 5
    train: tuple = TRAIN_ANSWERS
    heldout: tuple = HELDOUT_ANSWERS
    init_std: float = 0.3
    seed: int = 0
    policy: str = "tabular"
    mlp_hidden: int = 16
    demonstrator: str = "first"

    def __post_init__(self):
        if not 3 <= self.V <= 5:
            raise ValueError(f"TreeConfig.V must be in 3..5 (letters + EOS), got {self.V}")
        if not 1 <= self.H <= 9:
            raise ValueError(f"TreeConfig.H must be in 1..9 (exact enumeration), got {self.H}")
        if self.policy not in ("tabular", "mlp"):
            raise ValueError(f"TreeConfig.policy must be 'tabular' or 'mlp', got {self.policy!r}")
        if self.demonstrator not in DEMONSTRATORS:
            raise ValueError(f"TreeConfig.demonstrator must be one of {DEMONSTRATORS}")
        letters = LETTERS[: self.V - 1]
        for ans in self.train + self.heldout:
            for a in ans:
                if len(a) >= self.H or set(a) - set(letters):
                    raise ValueError(f"answer {a!r} is not a string over {letters!r} shorter than H={self.H}")


@dataclass
class Tree:
    """Enumerated sequences and the policy as a function of θ (float64 throughout).

    Sequence tensors: ``node`` [J, H] prefix-node index of each position, ``tok`` [J, H] token,
    ``mask`` [J, H] 1 on response tokens, ``length`` [J]; ``correct`` [X, J] rewards r(x, y)."""

    cfg: TreeConfig = field(default_factory=TreeConfig)

    def __post_init__(self):
        c = self.cfg
        self.L = c.V - 1
        self.eos = c.V - 1
        letters = LETTERS[: self.L]
        self.nodes = ["".join(p) for n in range(c.H) for p in itertools.product(letters, repeat=n)]
        nid = {s: i for i, s in enumerate(self.nodes)}
        seqs = [s + "$" for s in self.nodes] + ["".join(p) for p in itertools.product(letters, repeat=c.H)]
        self.strings = seqs
        J, H = len(seqs), c.H
        node = torch.zeros(J, H, dtype=torch.long)
        tok = torch.zeros(J, H, dtype=torch.long)
        mask = torch.zeros(J, H, dtype=torch.float64)
        for j, s in enumerate(seqs):
            for t, ch in enumerate(s):
                node[j, t] = nid[s[:t]]
                tok[j, t] = self.eos if ch == "$" else letters.index(ch)
                mask[j, t] = 1.0
        self.node, self.tok, self.mask = node, tok, mask
        self.length = mask.sum(-1)
        self.answers = tuple(c.train) + tuple(c.heldout)
        self.X, self.J, self.n_nodes = len(self.answers), J, len(self.nodes)
        self.train_idx = torch.arange(len(c.train))
        self.heldout_idx = torch.arange(len(c.train), self.X)
        index = {s: j for j, s in enumerate(seqs)}
        self.correct = torch.zeros(self.X, J, dtype=torch.float64)
        demo = torch.zeros(self.X, J, dtype=torch.float64)
        for x, ans in enumerate(self.answers):
            js = [index[a + "$"] for a in ans]
            self.correct[x, js] = 1.0
            if c.demonstrator == "first":
                demo[x, js[0]] = 1.0
            else:
                demo[x, js] = 1.0 / len(js)
        self.demo = demo  # π_β(y|x) [X, J]
        self.policy = TabularPolicy(self) if c.policy == "tabular" else MLPPolicy(self)

    # ------------------------------------------------------------------ parameters
    def base_theta(self) -> Tensor:
        return self.policy.init(self.cfg)

    @cached_property
    def fingerprint(self) -> str:
        """Short hash of the configuration and the base parameters (the table's "testbed hash")."""
        h = hashlib.sha256(repr(self.cfg).encode() + self.base_theta().numpy().tobytes())
        return h.hexdigest()[:10]

    # ------------------------------------------------------------------ the policy
    def token_logp(self, theta: Tensor) -> Tensor:
        """[X, J, H] log π_θ(y_t | x, y_<t), 0 on padding."""
        logits = self.policy.logits(theta)  # [X, nodes, V]
        lp = torch.log_softmax(logits, -1)
        per = lp[:, self.node, self.tok]  # [X, J, H]
        return per * self.mask

    def seq_logp(self, theta: Tensor) -> Tensor:
        return self.token_logp(theta).sum(-1)

    def probs(self, theta: Tensor) -> Tensor:
        """[X, J] π_θ(y|x); rows sum to 1."""
        return self.seq_logp(theta).exp()

    def pass_rate(self, theta: Tensor) -> Tensor:
        """[X] p_x = P_{π_θ}(r = 1 | x)."""
        return (self.probs(theta) * self.correct).sum(-1)

    def token_scores(self, theta: Tensor) -> Tensor:
        """[X, J, H, D] ∂ log π_θ(y_t|s_t)/∂θ = Σ_v (e_{y_t} − π(·|s_t))_v ∂logit_v(x, s_t)/∂θ
        (chain rule through the softmax; the logit Jacobian is the policy's own, exact)."""
        pi = torch.softmax(self.policy.logits(theta), -1)  # [X, nodes, V]
        onehot = torch.nn.functional.one_hot(self.tok, self.cfg.V).to(pi.dtype)  # [J, H, V]
        dz = (onehot[None] - pi[:, self.node]) * self.mask[None, :, :, None]  # [X, J, H, V]
        jac = self.policy.logit_jacobian(theta)  # [X, nodes, V, D]
        return torch.einsum("xjhv,xjhvd->xjhd", dz, jac[:, self.node])

    # ------------------------------------------------------------------ objectives
    def objective(self, theta: Tensor, prompts: Tensor | None = None) -> Tensor:
        """J(θ) = mean_x p_x over ``prompts`` (default: train prompts)."""
        prompts = self.train_idx if prompts is None else prompts
        return self.pass_rate(theta)[prompts].mean()

    def grad_J(self, theta: Tensor, prompts: Tensor | None = None) -> Tensor:
        """∇J = mean_x ∇p_x (probes-spec §1.1)."""
        th = theta.detach().requires_grad_(True)
        return torch.autograd.grad(self.objective(th, prompts), th)[0]

    def _per_prompt_grad(self, f, theta: Tensor) -> Tensor:
        """[X, D] ∇_θ f(θ)[x] for a per-prompt function f (one backward per prompt)."""
        th = theta.detach().requires_grad_(True)
        out = f(th)
        return torch.stack([torch.autograd.grad(out[x], th, retain_graph=True)[0] for x in range(self.X)])

    def grad_p(self, theta: Tensor) -> Tensor:
        """[X, D] ∇p_x for every prompt."""
        return self._per_prompt_grad(self.pass_rate, theta)

    def grad_demo_logp(self, theta: Tensor) -> Tensor:
        """[X, D] E_{y∼π_β}[∇log π_θ(y|x)] = −∇KL(π_β‖π_θ) per prompt (the SFT target)."""
        return self._per_prompt_grad(lambda th: (self.seq_logp(th) * self.demo).sum(-1), theta)

    def pass_at_k(self, theta: Tensor, ks, prompts: Tensor | None = None) -> Tensor:
        """[len(ks)] exact mean_x pass@k = 1 − (1 − p_x)^k (probes-spec §3.1)."""
        prompts = self.train_idx if prompts is None else prompts
        p = self.pass_rate(theta)[prompts]
        k = torch.as_tensor(list(ks), dtype=p.dtype)
        return (1 - (1 - p[None, :]) ** k[:, None]).mean(-1)

    def entropy(self, theta: Tensor) -> Tensor:
        """[X] sequence-level entropy H(π_θ(·|x)) in nats."""
        lp = self.seq_logp(theta)
        return -(lp.exp() * lp).sum(-1)

    def token_entropy(self, theta: Tensor) -> Tensor:
        """[X, J, H] H(π_θ(·|x, y_<t)) of the next-token distribution at each position, 0 on
        padding (what an entropy mask reads, arXiv 2506.01939)."""
        lp = torch.log_softmax(self.policy.logits(theta), -1)  # [X, nodes, V]
        h = -(lp.exp() * lp).sum(-1)
        return h[:, self.node] * self.mask

    def sum_pi_squared(self, theta: Tensor) -> Tensor:
        """[X, J, H] Σ_v π_θ(v | x, y_<t)² at each position (the optimal token baseline's input)."""
        pi = torch.softmax(self.policy.logits(theta), -1)  # [X, nodes, V]
        return (pi * pi).sum(-1)[:, self.node] * self.mask

    def greedy(self, theta: Tensor) -> Tensor:
        """[X] index of each prompt's greedy (argmax at every position) sequence."""
        top = self.policy.logits(theta).argmax(-1)  # [X, nodes]
        index = {s: j for j, s in enumerate(self.strings)}
        letters = LETTERS[: self.L]
        out = []
        for x in range(self.X):
            s = ""
            while len(s) < self.cfg.H:
                v = int(top[x, self.nodes.index(s)])
                if v == self.eos:
                    s += "$"
                    break
                s += letters[v]
            out.append(index[s])
        return torch.tensor(out)

    def values(self, theta: Tensor) -> Tensor:
        """[X, J, H] exact critic V(x, y_<t) = P(r=1 | prefix) under π_θ (for PPO/GAE)."""
        tl = self.token_logp(theta)
        suffix = torch.flip(torch.cumsum(torch.flip(tl, [-1]), -1), [-1])  # Σ_{t'≥t} log π
        contrib = suffix.exp() * self.correct[:, :, None] * self.mask  # mass of correct completions
        V = torch.zeros(self.X, self.n_nodes, dtype=tl.dtype)
        idx = self.node[None].expand(self.X, -1, -1).reshape(self.X, -1)
        V.scatter_add_(1, idx, contrib.reshape(self.X, -1))
        return V[:, self.node] * self.mask

    def mid_theta(self, steps: int = 60, lr: float = 1.0, G: int = 8) -> Tensor:
        """The ``mid`` checkpoint: ``steps`` exact Dr. GRPO expected-gradient steps,
        θ ← θ + lr·((G−1)/G)·∇J (probes-spec §6.3; E ĝ_DrGRPO = ((G−1)/G)∇J, §1.3)."""
        th = self.base_theta()
        for _ in range(steps):
            th = th + lr * (G - 1) / G * self.grad_J(th)
        return th

    def checkpoint(self, name: str) -> Tensor:
        if name == "base":
            return self.base_theta()
        if name == "mid":
            return self.mid_theta()
        raise ValueError(f"unknown checkpoint {name!r}; valid: base, mid")


class TabularPolicy:
    """θ = (W [nodes, V], U [X, nodes, V]) flattened; logits = W[s] + U[x, s]."""

    def __init__(self, tree: Tree):
        self.X, self.N, self.V = tree.X, tree.n_nodes, tree.cfg.V
        self.D = self.N * self.V * (1 + self.X)

    def init(self, cfg: TreeConfig) -> Tensor:
        rng = np.random.default_rng(cfg.seed)
        W = rng.normal(0.0, cfg.init_std, size=(self.N, self.V))
        U = rng.normal(0.0, cfg.init_std, size=(self.X, self.N, self.V))
        root = list(ROOT_LOGITS[:2]) + [ROOT_LOGITS[1]] * (self.V - 3) + [ROOT_LOGITS[2]]
        W[0] = root
        return torch.from_numpy(np.concatenate([W.ravel(), U.ravel()]))

    def split(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        n = self.N * self.V
        return theta[:n].view(self.N, self.V), theta[n:].view(self.X, self.N, self.V)

    def logits(self, theta: Tensor) -> Tensor:
        W, U = self.split(theta)
        return W[None] + U

    def logit_jacobian(self, theta: Tensor) -> Tensor:
        """[X, nodes, V, D]: ∂logit(x,s)_v/∂θ is 1 at W[s,v] and at U[x,s,v] (closed form)."""
        jac = torch.zeros(self.X, self.N, self.V, self.D, dtype=theta.dtype)
        x, s, v = torch.meshgrid(torch.arange(self.X), torch.arange(self.N), torch.arange(self.V), indexing="ij")
        jac[x, s, v, s * self.V + v] = 1.0
        jac[x, s, v, self.N * self.V + (x * self.N + s) * self.V + v] = 1.0
        return jac


class MLPPolicy:
    """logits(x, s) = W2·tanh(W1·[e_x, f(s)] + b1) + b2 + root-bias, with e_x a learned prompt
    embedding and f(s) the prefix features (one-hot letter per position + one-hot length).
    Tests function-approximation interference between prompts (probes-spec §6)."""

    def __init__(self, tree: Tree):
        cfg = tree.cfg
        self.X, self.N, self.V, self.h = tree.X, tree.n_nodes, cfg.V, cfg.mlp_hidden
        L, H = tree.L, cfg.H
        feats = torch.zeros(self.N, H * L + H, dtype=torch.float64)
        for i, s in enumerate(tree.nodes):
            for t, ch in enumerate(s):
                feats[i, t * L + LETTERS.index(ch)] = 1.0
            feats[i, H * L + len(s)] = 1.0
        self.feats = feats
        self.emb = 4
        self.shapes = {"E": (self.X, self.emb), "W1": (self.h, self.emb + feats.shape[1]), "b1": (self.h,),
                       "W2": (self.V, self.h), "b2": (self.V,)}
        self.D = sum(math.prod(s) for s in self.shapes.values())

    def init(self, cfg: TreeConfig) -> Tensor:
        rng = np.random.default_rng(cfg.seed)
        parts = [rng.normal(0.0, cfg.init_std, size=s).ravel() for s in self.shapes.values()]
        th = torch.from_numpy(np.concatenate(parts))
        b2 = self.unflatten(th)["b2"]
        b2.copy_(torch.tensor(list(ROOT_LOGITS[:2]) + [ROOT_LOGITS[1]] * (self.V - 3) + [ROOT_LOGITS[2]],
                              dtype=th.dtype))
        return th

    def unflatten(self, theta: Tensor) -> dict:
        out, i = {}, 0
        for k, s in self.shapes.items():
            n = math.prod(s)
            out[k] = theta[i:i + n].view(s)
            i += n
        return out

    def logits(self, theta: Tensor) -> Tensor:
        p = self.unflatten(theta)
        e = p["E"][:, None, :].expand(-1, self.N, -1)
        f = self.feats[None].expand(self.X, -1, -1)
        h = torch.tanh(torch.cat([e, f], -1) @ p["W1"].T + p["b1"])
        return h @ p["W2"].T + p["b2"]

    def logit_jacobian(self, theta: Tensor) -> Tensor:
        """[X, nodes, V, D] via torch.func.jacfwd (exact)."""
        return torch.func.jacfwd(self.logits)(theta)
