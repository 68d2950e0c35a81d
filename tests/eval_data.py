"""Whether the paper's evaluation files (../shared/data/hpt_eval or $UPGE_EVAL_DATA) are here.

Tests that read them are skipped on a machine without them, unless UPGE_REQUIRE_EVAL_DATA=1
(set by .ci/run when the folder exists), which turns a missing folder into a failure.
"""
import os

import pytest

from training.evaluation import datasets as bm

PRESENT = (bm.DEFAULT_DATA_DIR / "PROVENANCE.md").is_file() or bool(os.environ.get(bm.ENV_VAR))
needs_eval_data = pytest.mark.skipif(
    not PRESENT and os.environ.get("UPGE_REQUIRE_EVAL_DATA") != "1",
    reason=f"evaluation data folder not present ({bm.DEFAULT_DATA_DIR}; set {bm.ENV_VAR})")
