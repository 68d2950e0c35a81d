"""Probes: measure what each estimator in `estimators` actually estimates.

* `testbed`  — the exact-enumeration tree testbed (probes-spec §6): J, ∇J, ∇J_μ, pass@k exactly.
* `registry` — the probed estimators: project presets (and documented variants) with their targets.
* `moments`  — exact first/second moments of an estimator's gradient through `estimators.Batch`
               (binomial sums over group reward configurations, probes-spec §2.2 / App. A) and
               Monte Carlo moments; the bias/variance metrics of probes-spec §1.2 / §2.1.
* `variance` — ``python -m probes.variance``: the table of probes-spec §7.
* `lm`       — the same metrics on a small causal LM via per-sample gradients (torch.func) and
               per-sample norms / inner products from activations (`ghost`).
* `dynamics` — ``python -m probes.dynamics``: train the testbed policy with each estimator.
* `passk`    — ``python -m probes.passk``: unbiased pass@k, bootstrap CIs, crossing point k*.

Every measured gradient is ``−∇ est(batch).loss`` of a project estimator object; nothing here
re-implements an estimator.
"""
