"""The import path of :mod:`agents.training.run_config` before ``agents/training/`` was a package.

Kept so that code written against it (``from agents.run_config import RunConfig``) keeps working.
"""

import sys

from agents.training import run_config

# The same module object under both names, so that attributes set on one are seen through the other.
sys.modules[__name__] = run_config
