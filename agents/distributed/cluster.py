"""The Ray cluster of distributed training: joining or starting it, and fitting the collectors on it.

- :func:`require_ray`: Ray, or an error naming the extra to install;
- :func:`check_address`: an unreachable ``--ray-address`` fails in seconds, naming the address;
- :func:`connect`: ``ray.init`` on a running cluster (``ray start --head``) or a new local one;
- :func:`plan_collectors`: the GPUs and CPUs each collector asks for, refused when the cluster
  cannot hold them (Ray would otherwise wait forever for resources that never come);
- :func:`check_distributed`: settings that distributed training cannot honour, refused before Ray starts.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from agents.distributed.scorer_service import model_roles
from agents.registry import get_spec
from agents.training.run_config import RunConfig

__all__ = [
    "CollectorPlan",
    "check_address",
    "check_distributed",
    "connect",
    "plan_collectors",
    "plan_scorer_gpus",
    "require_ray",
    "worker_niceness",
]

#: Ray's default GCS port (``ray start --head``) and Ray Client's (``ray://``).
DEFAULT_PORTS = {"": 6379, "ray://": 10001}
#: Seconds to wait for a TCP answer from ``--ray-address`` before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0
#: Ray's setting of its workers' niceness (ray_constants.RAY_WORKER_NICENESS).
_NICENESS = "RAY_worker_niceness"
#: Torch threads (and Ray CPUs) per collector.
CPUS_PER_COLLECTOR = 1


def require_ray() -> ModuleType:
    """``import ray``, or ``ModuleNotFoundError`` saying how to install it."""
    try:
        import ray
    except ModuleNotFoundError as error:
        if error.name != "ray":
            raise
        raise ModuleNotFoundError(
            "--collectors trains on a Ray cluster, but Ray is not installed: pip install 'mara-rl[ray]' "
            "(or pip install 'ray>=2.9'), or omit --collectors to train in this process.",
            name="ray",
        ) from None
    return ray


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ``ValueError`` unless something answers at ``address`` (``host:port`` or ``ray://host:port``).

    ``"auto"`` (the cluster ``ray start`` left on this machine) is left to ``ray.init``.
    """
    if address in ("auto", "local"):
        return
    scheme = "ray://" if address.startswith("ray://") else ""
    rest = address[len(scheme) :]
    host, _, port_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError(
            f"--ray-address {address!r} is not an address: use HOST:PORT (e.g. 10.0.0.1:6379, what `ray start "
            "--head` prints), ray://HOST:10001 for Ray Client, or auto for the cluster started on this machine."
        ) from None
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as error:
        raise ValueError(
            f"--ray-address {address}: no Ray cluster answers at {host}:{port} ({error.strerror or error}). Start "
            "one there with `ray start --head` (it prints the address to pass), check the host and port, or omit "
            "--ray-address to start a local cluster on this machine."
        ) from None


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Connect this process to Ray: the cluster at ``address``, else a new local one.

    An already connected process (a user's own ``ray.init``) keeps its connection.

    :param address: ``host:port``, ``ray://host:port``, ``auto``, or ``None`` for a local cluster.
    :param num_cpus: CPUs of a new local cluster (``None``: all of this machine's).
    :return: whether this call started the connection (then :func:`ray.shutdown` is the caller's).
    """
    ray = require_ray()
    if address is not None:
        check_address(address)
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.WARNING)
    try:
        if address is None:
            with worker_niceness(0):
                ray.init(num_cpus=num_cpus, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except (ConnectionError, TimeoutError, RuntimeError) as error:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise ValueError(
            f"could not connect to {where}: {' '.join(str(error).split())}. Start one with `ray start --head`, "
            "or omit --ray-address to start a local one."
        ) from None
    return True


@contextlib.contextmanager
def worker_niceness(value: int) -> Iterator[None]:
    """Start Ray's processes within this block with workers at niceness ``value`` (unless the user set one).

    Ray runs its workers at niceness 15, below every other process: on a machine shared with other
    jobs one collector then delivered 20.2 decisions/s against 27.3 at niceness 0
    (``benchmarks/distributed.py``). The collectors are the work here, so a local cluster started by
    :func:`connect` runs them at 0. For ``ray start``, set ``RAY_worker_niceness=0`` in its environment.
    """
    if _NICENESS in os.environ:
        yield
        return
    os.environ[_NICENESS] = str(value)  # read by the raylet that ray.init spawns
    try:
        yield
    finally:
        del os.environ[_NICENESS]


@dataclass(frozen=True)
class CollectorPlan:
    """The resources each collector asks Ray for.

    :param collectors: number of collector actors.
    :param gpus: GPUs per collector (0: CPU collectors).
    :param cpus: CPUs per collector.
    :param cluster_gpus: GPUs of the cluster.
    :param cluster_cpus: CPUs of the cluster.
    """

    collectors: int
    gpus: float
    cpus: float
    cluster_gpus: float
    cluster_cpus: float


def plan_collectors(
    collectors: int, collector_gpus: float | None, resources: Mapping[str, float], cpus: float = CPUS_PER_COLLECTOR
) -> CollectorPlan:
    """Fit ``collectors`` on a cluster with ``resources`` (``ray.cluster_resources()``).

    :param collector_gpus: GPUs per collector; ``None``: one when the cluster has GPUs, else none.
    :raises ValueError: more GPUs or CPUs asked for than the cluster has (the message says how many exist).
    """
    have_gpus = float(resources.get("GPU", 0.0))
    have_cpus = float(resources.get("CPU", 0.0))
    gpus = (1.0 if have_gpus > 0 else 0.0) if collector_gpus is None else float(collector_gpus)
    if gpus > 0 and collectors * gpus > have_gpus + 1e-9:
        fits = math.floor(have_gpus / gpus + 1e-9)
        advice = f"--collectors {fits}" if fits >= 1 else "--collector-gpus 0 (CPU collectors)"
        raise ValueError(
            f"--collectors {collectors} with {gpus:g} GPU each needs {collectors * gpus:g} GPUs, but the Ray cluster "
            f"has {have_gpus:g}. Use {advice}, a fraction per collector (--collector-gpus "
            f"{have_gpus / collectors:.2g} shares them), --collector-gpus 0 for CPU collectors, or add GPU nodes."
        )
    if collectors * cpus > have_cpus + 1e-9:
        raise ValueError(
            f"--collectors {collectors} needs {collectors * cpus:g} CPUs ({cpus:g} each), but the Ray cluster has "
            f"{have_cpus:g}. Use --collectors {max(1, math.floor(have_cpus / cpus))} or add nodes."
        )
    return CollectorPlan(collectors, gpus, cpus, have_gpus, have_cpus)


#: CPUs of the shared scorer actor (``train.scorer_placement="shared"``).
SCORER_CPUS = 1.0


def plan_scorer_gpus(scorer_gpus: float | None, plan: CollectorPlan) -> float:
    """GPUs for the shared scorer service (``train.scorer_placement="shared"``) beside the collectors of ``plan``.

    :param scorer_gpus: ``None``: one when a whole GPU is left after the collectors, else none (CPU).
    :raises ValueError: more GPUs asked for than the collectors leave, or no CPU left for the service (the
        message says what is left).
    """
    if plan.collectors * plan.cpus + SCORER_CPUS > plan.cluster_cpus + 1e-9:
        fits = math.floor((plan.cluster_cpus - SCORER_CPUS) / plan.cpus + 1e-9)
        advice = f"--collectors {fits}" if fits >= 1 else "more CPUs"
        raise ValueError(
            f"the shared scorer needs {SCORER_CPUS:g} CPU beside the {plan.collectors * plan.cpus:g} of --collectors "
            f"{plan.collectors}, but the Ray cluster has {plan.cluster_cpus:g}. Use {advice}, add nodes, or "
            "--scorer-placement collector."
        )
    left = max(0.0, plan.cluster_gpus - plan.collectors * plan.gpus)
    if scorer_gpus is None:
        return 1.0 if left >= 1.0 - 1e-9 else 0.0
    if scorer_gpus > left + 1e-9:
        raise ValueError(
            f"--scorer-gpus {scorer_gpus:g} for the shared scorer, but the Ray cluster's {plan.cluster_gpus:g} GPUs "
            f"leave {left:g} after --collectors {plan.collectors} with {plan.gpus:g} each. Use --scorer-gpus "
            f"{left:g}, fewer GPUs per collector (--collector-gpus), --scorer-placement collector (each collector "
            "scores on its own GPU), or add GPU nodes."
        )
    return float(scorer_gpus)


def check_distributed(config: RunConfig) -> None:
    """Refuse settings that training with collectors cannot honour (before any cluster starts).

    :raises ValueError: an on-policy algorithm, or a replay buffer that needs each env's steps in one stream.
    """
    algo = config.agent.algo
    spec = get_spec(algo)
    if spec.on_policy:
        from agents.registry import ALGORITHMS

        off_policy = ", ".join(name for name, s in ALGORITHMS.items() if not s.on_policy)
        raise ValueError(
            f"--collectors trains off-policy algorithms ({off_policy}) from a replay buffer; {algo} learns only "
            "from fresh rollouts of its current policy. Omit --collectors to train it in this process."
        )
    kwargs = config.agent.resolved()
    if int(kwargs.get("n_steps", 1)) > 1 or kwargs.get("optimize_memory_usage"):
        raise ValueError(
            "--collectors interleaves batches of several collectors in the replay buffer, so n_steps > 1 and "
            "optimize_memory_usage (which read consecutive slots as one trajectory) cannot be used with it; "
            "set n_steps 1 and optimize_memory_usage false, or omit --collectors."
        )
    if config.train.scorer_placement == "shared" and not model_roles(config.env_kwargs):
        raise ValueError(
            "--scorer-placement shared serves reward and cost *models* from one actor, but reward_model "
            f"{config.env.get('reward_model')!r} and cost_model {config.env.get('cost_model')!r} are built-in "
            "scorers or none, which each collector runs itself; leave --scorer-placement at collector."
        )
    train_freq = kwargs.get("train_freq", 1)
    if isinstance(train_freq, (tuple, list)) and str(train_freq[1]) == "episode":
        raise ValueError(
            f"--collectors counts train_freq in vector steps; train_freq={list(train_freq)} counts episodes. "
            "Use a number of steps, e.g. --train-freq 4."
        )
