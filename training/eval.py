"""``python -m training.eval``: the benchmark harness (`training.evaluation.harness`)."""
import sys

from .evaluation.harness import main

if __name__ == "__main__":
    sys.exit(main())
