"""``python -m probes`` is ``python -m probes.variance``."""
import sys

from .variance import main

sys.exit(main())
