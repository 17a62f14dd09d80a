"""Training runs: the application that trains an agent on MARA (``mara train`` is its command line).

- :mod:`agents.training.run_config`: :class:`~agents.training.run_config.RunConfig`, every setting of a run;
- :mod:`agents.training.callbacks`: logging, checkpoint and periodic-evaluation callbacks;
- :mod:`agents.training.checkpoints`: a run's checkpoint files, atomic and verified;
- :mod:`agents.training.runner`: :func:`~agents.training.runner.train_run`, resumption, the published model
  (with ``train.collectors``, on Ray collectors: :mod:`agents.distributed`).
"""
