"""Rollout engines: who samples completions, from which prompt, with which seed.

=================  ===========================================================================
module             holds
=================  ===========================================================================
``engines``        `make_engine` (one factory: training and ``training.eval``), `make_sampler`
                   (the run's engine, seeded per prompt), `engine_for` (``auto``), `with_tis`,
                   `edited_model_dir`
``hf``             `HFSampler`: batched ``model.generate`` on the training model; the
                   `Sampler` interface every engine has; the reference path
``fast``           `FastSampler`: small models on the training model itself: a static KV cache,
                   one prefill per prompt, a batched decode loop that drops ended rows and stops
                   when every row has ended (``--rollout-engine auto``: the embedded default's)
``vllm_engine``    `VLLMSampler`: a vLLM engine with weight sync after each step and the
                   sampled tokens' log-probs (for truncated importance sampling)
``prompts``        the prompt templates (chat | zero) and stop tokens, for training and evaluation
=================  ===========================================================================
"""
from .engines import ENGINES, SeededSampler, make_engine, make_sampler  # noqa: F401
from .prompts import TEMPLATES, make_prompt_fn, prompt_ids  # noqa: F401
