"""What the benchmark scripts share: the machine a result was measured on, in one format.

Imported as a sibling (``from common import machine_info``): the benchmarks run as scripts,
``python benchmarks/<name>.py``, with the package installed (``scripts/setup.sh``).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["machine_info"]


def machine_info(replicas: Sequence[Any] = (), *, threads: int | None = None) -> dict[str, Any]:
    """The hardware and software a result was measured on: every benchmark's ``machine`` entry, in this one format.

    ``cpu``, ``cpu_count``, ``gpus``, ``torch_threads``, ``python``, ``torch``, ``platform``; with replicas,
    ``llm_devices`` and ``llm_dtype``. A script adds what belongs to its run (a date, the load) beside it.

    :param replicas: the LLM replicas of the run (:class:`mara_env.LLMReplica`); their devices and dtype are
        added as ``llm_devices`` and ``llm_dtype``.
    :param threads: the torch threads the measured work ran with, where it is not this process's setting
        (e.g. training subprocesses started with ``--threads``).
    """
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "torch_threads": torch.get_num_threads() if threads is None else int(threads),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if replicas:
        info["llm_devices"] = sorted({str(r.device) for r in replicas})
        info["llm_dtype"] = str(replicas[0].model.dtype)
    return info
