"""The import path of :mod:`agents.evaluation.pipeline` before ``agents/evaluation/`` was a package.

Kept so that code written against it (``from agents.comparison import run_comparison``) keeps working;
new code imports from :mod:`agents.evaluation`.
"""

import sys

from agents.evaluation import pipeline

# The same module object under both names, so that attributes set on one are seen through the other.
sys.modules[__name__] = pipeline
