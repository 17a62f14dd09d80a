"""A run's settings in TensorBoard: the HParams tab (SB3's ``HParam``) and the resolved config as text.

TensorBoard compares runs by their hyperparameters only when each run writes them as an HParams
"session": :func:`log_run_config` writes every resolved setting of a :class:`RunConfig` (``env/top_k``,
``agent/learning_rate``, ``train/num_envs``, ...) with the metrics the HParams tab tabulates against them
(:data:`HPARAM_METRICS`, the scalars :class:`~agents.training.callbacks.MARALoggingCallback` logs), and
the config file itself under the text tab (``config.yaml``), so a run's TensorBoard folder says how it
was made even without its run folder.

Example::

    >>> flat = hparam_values({"env": {"top_k": 50, "devices": None}, "agent": {"policy_kwargs": {"net_arch": [64]}}})
    >>> flat["env/top_k"], flat["env/devices"], flat["agent/policy_kwargs"]
    (50, 'none', '{"net_arch": [64]}')
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import yaml
from stable_baselines3.common.logger import HParam, Logger, TensorBoardOutputFormat

if TYPE_CHECKING:
    from agents.training.run_config import RunConfig

__all__ = ["HPARAM_METRICS", "hparam_values", "log_run_config"]

#: Scalars the HParams tab shows beside the settings: a run's learning curves' last values.
HPARAM_METRICS: tuple[str, ...] = (
    "mara/reward_score",
    "mara/cost_score",
    "mara/kl",
    "mara/terminal_reward",
    "rollout/ep_rew_mean",
)


def hparam_values(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, bool | int | float | str]:
    """The settings as TensorBoard's HParams take them: ``section/key`` -> a bool, number or text.

    ``None`` becomes ``"none"`` and lists or mappings their JSON text (HParams hold only scalars).
    """
    flat: dict[str, bool | int | float | str] = {}
    for section, values in sections.items():
        for key, value in values.items():
            if value is None:
                flat[f"{section}/{key}"] = "none"
            elif isinstance(value, (bool, int, float, str)):
                flat[f"{section}/{key}"] = value
            else:
                flat[f"{section}/{key}"] = json.dumps(value, sort_keys=True, default=str)
    return flat


def log_run_config(logger: Logger, config: RunConfig, step: int = 0) -> bool:
    """Write ``config``'s resolved settings to the logger's TensorBoard output: HParams and ``config.yaml`` as text.

    Only the TensorBoard output is written to (``progress.csv`` keeps one row per dump).

    :param logger: the run's SB3 logger.
    :param config: the run's settings.
    :param step: the decision count it starts from (a resumed run writes its settings again there).
    :return: whether the logger has a TensorBoard output (``False``: nothing was written).
    """
    outputs = [f for f in logger.output_formats if isinstance(f, TensorBoardOutputFormat)]
    if not outputs:
        return False
    sections = config.to_sections()
    hparams = HParam(hparam_values(sections), {metric: 0.0 for metric in HPARAM_METRICS})
    text = yaml.safe_dump(sections, sort_keys=True)
    for output in outputs:
        output.write({"hparams": hparams}, {"hparams": None}, step)
        # Markdown code block: the text tab would otherwise run the YAML's lines together
        output.writer.add_text("config.yaml", "```yaml\n" + text + "```", step)
        output.writer.flush()
    return True
