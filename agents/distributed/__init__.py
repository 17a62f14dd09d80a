"""Distributed training on Ray: LLM collector actors on many GPUs and machines, one off-policy learner.

- :mod:`agents.distributed.cluster`: joining or starting the Ray cluster, fitting the collectors on it;
- :mod:`agents.distributed.collector`: :class:`~agents.distributed.collector.Collector`, the Ray actor
  with its own LLM, vector env and policy copy;
- :mod:`agents.distributed.batch`: :class:`~agents.distributed.batch.TransitionBatch`, what it sends;
- :mod:`agents.distributed.policy_sync`: the learner's weights as collectors receive them;
- :mod:`agents.distributed.steps`: collected steps filed into the algorithm through SB3's public
  ``collect_rollouts`` (the learner's hook into SB3; the environment it builds the algorithm on is
  :class:`agents.spaces_env.SpacesOnlyVecEnv`);
- :mod:`agents.distributed.learner`: :class:`~agents.distributed.learner.DistributedLearner`, the driver loop.

``mara train --collectors N [--ray-address ADDR]`` (or a :class:`~agents.training.run_config.RunConfig`
with ``train.collectors`` given to :func:`agents.training.runner.train_run`) trains this way. Ray is
optional (``pip install 'mara-rl[ray]'``) and imported only when collectors start.
"""

from agents.distributed.batch import TransitionBatch
from agents.distributed.cluster import CollectorPlan, check_distributed, plan_collectors
from agents.distributed.collector import Collector
from agents.distributed.learner import DistributedLearner

__all__ = [
    "Collector",
    "CollectorPlan",
    "DistributedLearner",
    "TransitionBatch",
    "check_distributed",
    "plan_collectors",
]
