"""Held-out evaluation, one stack for the training loop and the paper's benchmark harness.

=================  ===========================================================================
module             holds
=================  ===========================================================================
``heldout``        `evaluate`: k samples per held-out problem → avg@k and pass@k per level (the
                   training loop's eval every ``--eval-every`` steps)
``datasets``       the paper's evaluation data sets (AIME, AMC, MATH-500, ..., GPQA, ARC-c):
                   `load_benchmark`, the `BENCHMARKS` table
``harness``        ``python -m training.eval``: a model on those benchmarks with the paper's
                   protocol, engines from `training.rollout.make_engine`
``tables``         the paper-shaped markdown tables of a harness run
=================  ===========================================================================

pass@k and its bootstrap CIs are `records.passk`'s (the one implementation). Speed benchmarks
are elsewhere: the top-level ``benchmarks/`` folder.
"""
