"""Post-training with any estimator preset, and held-out evaluation. A map, by job:

Launch (the commands)
    ``run``          ``python -m training.run PRESET``: builds the run's objects, launches the loop
    ``eval``         ``python -m training.eval``: the paper's benchmark evaluation (the harness)
    ``compare``      ``python -m training.compare``: several presets × seeds, one table
    ``config``       `RunConfig`: every flag, one typed dataclass; ``profiles``: the paper's set-ups;
                     ``ranges``: the flags' allowed values; ``resume``: what a resume may change
    ``config_file``  ``--config run.yaml``: fields from YAML; ``configs/``: the profiles as YAML
    ``custom``       ``--estimator module:object`` and ``--reward module:function``

The loop (the paper's Algorithm 1)
    ``loop``         `Trainer.step`: sample → score → gate → plan → micro-batches → backward →
                     optimizer step → log; evaluation, checkpoints, resume
    ``stages``       what is trained when: the preset with this run's options, its batch-level steps
    ``batching``     rows → groups → `estimators.Batch`; the values the step's phases hand on
                     (`Rollouts`, `StepBatch`, `MiniBatch`, `StepMetrics`)
    ``backends``     chosen at construction: process layout (`Replicated` | `Sharded` FSDP),
                     `Critic` | `NoCritic`, `NoReference`
    ``distributed``  data parallelism (`SingleProcess` | `TorchDistributed`), FSDP helpers
    ``diagnostics``  live gradient diagnostics of the step (``--diagnostics-every``): SNR and noise
                     scale from the micro-batch gradients, SFT vs RL parts, realised w(p)
    ``policy``       the HF model: packing, log-probs at the rollout temperature, LoRA/full
                     loading (SDPA, gradient checkpointing), value head, π_ref
    ``logprobs``     the chunked output layer: token log-probs and entropies, never [B, T, V]
    ``precision``    ``--dtype``: bf16/fp16 autocast over float32 master weights
    ``checkpoint``   save/restore in the ecosystem's formats (checksummed); ``model_card``: each
                     checkpoint's README.md, ``--push-to-hub``; ``machine``: device,
                     versions; ``resources``: the torch thread count;
    ``progress``     timers and the progress bar

Rollout engines (``rollout/``)
    ``engines``      `make_engine` (one factory for training and evaluation), `make_sampler`
    ``hf``, ``vllm_engine``   HF ``generate`` and vLLM; ``prompts``: templates, stop tokens
    ``fast``         small models: static KV cache, batched decode loop (the embedded default's)

Data and rewards
    ``task``         the built-in arithmetic task; ``base``: the embedded tiny base model
    ``data``         examples from the task or a file; ``reward``: ``\\boxed{}`` + math-verify;
    ``grading``      benchmark grading (math and multiple choice), ``--reward module:function``

Held-out evaluation (``evaluation/``)
    ``heldout``      avg@k / pass@k during training; ``datasets``: the paper's evaluation sets;
    ``harness``      the benchmark harness behind ``python -m training.eval``; ``tables``

Speed benchmarks are the top-level ``benchmarks/`` folder, not evaluation sets.
"""
