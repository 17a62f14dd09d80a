"""``mara train``: train an agent on MARA-v1 (or MARA-v0), with checkpoints, TensorBoard logs and resumption.

Settings come from :data:`agents.training.run_config.DEFAULT_RUN`, then ``--config FILE``, then flags:
every :class:`mara_env.MARAConfig` field (``--top-k``, ``--kl-coef``, ``--llm``, ...), every
hyperparameter of the registered algorithms (``--learning-rate``, ``--buffer-size``, ...) and the
train settings (``--total-decisions``, ``--num-envs``, ...). This module parses the flags; the run
itself (its folder, checkpoints, resumption) is :mod:`agents.training.runner`.

Examples::

    mara train                                         # the default run
    mara train --algo ppo --out runs/ppo --total-decisions 50000
    mara train --out runs/ppo --resume                 # after Ctrl-C or a kill
    mara train --collectors 4 --ray-address HEAD:6379  # Ray collectors feeding one learner (agents.distributed)
"""

from __future__ import annotations

import argparse
import inspect
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from agents.cli.flags import docstring_params, metavar, show_default, with_default
from agents.hyperparameters import RANGES
from agents.registry import ALGORITHMS, KL_COEF, NON_HYPERPARAMETERS, SHAPING_GAMMA, hyperparameter_owners
from agents.training.resume import resume_run
from agents.training.run_config import (
    DEFAULT_RUN,
    ENV_ID,
    RunConfig,
    TrainSettings,
    parse_value,
)
from agents.training.run_folder import CONFIG_FILE, check_out, put_back_replaced
from agents.training.run_lock import run_lock
from agents.training.runner import train_run
from mara_env import MARA_V1, VERSIONS, MARAConfig
from mara_env.config import setting_help

DEFAULT_OUT = "runs/mara-default"
_ENV, _AGENT, _TRAIN = "env__", "agent__", "train__"


# ------------------------------------------------------------------------------------------ arguments


def _help(cls: type) -> dict[str, str]:
    """Each setting's help text (its field's metadata), without its final full stop (a default follows)."""
    return {name: text.rstrip().rstrip(".") for name, text in setting_help(cls).items()}


def _typed(annotation: str, flag: str) -> Any:
    """An argparse ``type=`` for a dataclass field annotation: clear errors, ``none`` for optional fields."""
    allowed = {part.strip() for part in annotation.split("|")}

    def convert(text: str) -> Any:
        if "None" in allowed and text.strip().lower() in ("none", "null"):
            return None
        if "Any" in allowed:
            return parse_value(text)
        for name, parse in (("int", int), ("float", float)):
            if name in allowed:
                try:
                    return parse(text)
                except ValueError:
                    pass
        if "str" in allowed:
            return text
        expected = " or ".join(sorted(allowed - {"None"})) + (" or none" if "None" in allowed else "")
        raise argparse.ArgumentTypeError(f"{flag} expects {expected}, got {text!r}")

    return convert


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``mara train``."""
    parser.description = (__doc__ or "").split("\n\n")[0]
    run = parser.add_argument_group("run")
    run.add_argument(
        "--config",
        metavar="FILE",
        help=with_default("settings file (.toml, .yaml, .yml) with [env] [agent] [train]", None),
    )
    run.add_argument(
        "--out", metavar="DIR", default=DEFAULT_OUT, help=with_default("run folder, relative to here", DEFAULT_OUT)
    )
    run.add_argument("--overwrite", action="store_true", help="clear an existing run folder first")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument(
        "--algo",
        choices=list(ALGORITHMS),
        default=argparse.SUPPRESS,
        help=with_default("algorithm", DEFAULT_RUN["agent"]["algo"]),
    )
    run.add_argument("-v", "--verbose", action="count", default=0, help="print SB3's log table (-vv: debug)")

    train = parser.add_argument_group("training")
    train_docs = _help(TrainSettings)
    for field in fields(TrainSettings):
        if field.name == "progress_bar":
            continue
        flag = "--" + field.name.replace("_", "-")
        train.add_argument(
            flag,
            dest=_TRAIN + field.name,
            type=_typed(str(field.type), flag),
            metavar=metavar(str(field.type)),
            default=argparse.SUPPRESS,
            help=with_default(train_docs.get(field.name), DEFAULT_RUN["train"][field.name]),
        )
    train.add_argument(
        "--no-progress", dest=_TRAIN + "progress_bar", action="store_false", default=argparse.SUPPRESS,
        help="no progress bar",
    )  # fmt: skip

    env = parser.add_argument_group("environment (MARA settings, see mara_env/config.py)")
    default_id = DEFAULT_RUN["env"][ENV_ID]
    env.add_argument(
        "--env-id",
        dest=_ENV + ENV_ID,
        choices=list(VERSIONS),
        default=argparse.SUPPRESS,
        help=with_default(f"task version; it sets the defaults of {', '.join(sorted(MARA_V1))}", default_id),
    )
    env_docs = _help(MARAConfig)
    for field in fields(MARAConfig):
        flag = "--" + field.name.replace("_", "-")
        default = DEFAULT_RUN["env"].get(field.name, VERSIONS[default_id].get(field.name, field.default))
        kwargs: dict[str, Any] = dict(dest=_ENV + field.name, default=argparse.SUPPRESS)
        if str(field.type) == "bool":
            # argparse adds "(default: ...)" itself to BooleanOptionalAction, but not with SUPPRESS
            kwargs["help"] = with_default(env_docs.get(field.name), default)
            env.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
        else:
            kwargs["help"] = with_default(env_docs.get(field.name), default)
            env.add_argument(flag, type=_typed(str(field.type), flag), metavar=metavar(str(field.type)), **kwargs)

    agent = parser.add_argument_group(
        "agent hyperparameters (values read as YAML: 1e-3, none, [64, 64], {net_arch: [256]}; "
        "defaults per algorithm, from agents/registry.py)"
    )
    env_names = {field.name for field in fields(MARAConfig)}
    for name, owners in sorted(hyperparameter_owners().items()):
        if name in DEAD_HYPERPARAMETERS:
            continue
        assert name not in env_names and name not in NON_HYPERPARAMETERS, name  # one flag, one meaning
        agent.add_argument(
            "--" + name.replace("_", "-"),
            dest=_AGENT + name,
            type=parse_value,
            metavar=_hyperparameter_metavar(name, owners),
            default=argparse.SUPPRESS,
            help=_hyperparameter_help(name, owners),
        )


#: Hyperparameters offered by an algorithm but meaningless on MARA's Discrete(2) actions: gSDE
#: (generalised state-dependent exploration) exists for continuous actions only, and SB3 refuses it here.
DEAD_HYPERPARAMETERS = frozenset({"use_sde", "sde_sample_freq"})

#: Registry defaults resolved from the environment when the model is built, as the help shows them.
_RESOLVED = {KL_COEF: "env's kl_coef", SHAPING_GAMMA: "env's shaping_gamma"}


def _hyperparameter_defaults(name: str, owners: list[str]) -> dict[str, Any]:
    """Each owner's default of hyperparameter ``name``: the registry's MARA default, else the class's own."""
    found = {}
    for owner in owners:
        spec = ALGORITHMS[owner]
        found[owner] = spec.defaults.get(name, inspect.signature(spec.cls.__init__).parameters[name].default)
    return found


def _hyperparameter_metavar(name: str, owners: list[str]) -> str:
    """The types the owners' constructors annotate (``FLOAT|none``, ``INT``, ...; YAML for mappings)."""
    words: set[str] = set()
    for owner in owners:
        annotation = str(inspect.signature(ALGORITHMS[owner].cls.__init__).parameters[name].annotation)
        words |= _annotation_words(annotation)
    if any(isinstance(v, str) for v in _hyperparameter_defaults(name, owners).values()):
        words.add("TEXT")  # e.g. ent_coef "kl_coef", resolved from the environment
    if "YAML" in words or not words:
        return "YAML"
    return "|".join(w for w in ("BOOL", "INT", "FLOAT", "TEXT", "none") if w in words)


def _annotation_words(annotation: str) -> set[str]:
    """Metavar words of a signature annotation's outer types: ``"float | Callable[[float], float] | None"``
    gives FLOAT and none (a schedule cannot be typed on a command line; a tuple is written as a YAML list)."""
    depth, outer = 0, []
    for char in annotation:
        depth += char == "["
        if depth == 0:
            outer.append(char)
        depth -= char == "]"
    words = {"bool": "BOOL", "int": "INT", "float": "FLOAT", "str": "TEXT", "None": "none", "dict": "YAML"}
    return {word for token, word in words.items() if re.search(rf"\b{token}\b", "".join(outer))}


def _hyperparameter_help(name: str, owners: list[str]) -> str:
    """What the hyperparameter is (ours, else the owners' docstrings), its valid values, and each owner's default."""
    described = _OWN_HELP.get(name, "")
    for owner in owners:
        described = described or _DOCS[owner].get(name, "")
    described = described.replace("``", "")
    valid = f"; {RANGES[name][1]}" if name in RANGES else ""
    defaults = {
        owner: _RESOLVED.get(value, value) if isinstance(value, str) else show_default(value)
        for owner, value in _hyperparameter_defaults(name, owners).items()
    }
    applies = "" if len(owners) == len(ALGORITHMS) else f"({', '.join(owners)}) "
    if len(set(defaults.values())) == 1:
        shown = next(iter(defaults.values()))
    else:
        shown = ", ".join(f"{owner} {value}" for owner, value in defaults.items())
    return with_default(f"{applies}{described}{valid}", None, shown=shown)


#: Help of hyperparameters whose docstrings read badly on one line.
_OWN_HELP = {
    "target_kl": "stop an update's epochs early once the approximate KL between the old and new policy exceeds it",
    "clip_range": "PPO's clipping of the probability ratio",
    "clip_range_vf": "clipping of the value function's change (none: no clipping; depends on the reward scale)",
    "n_steps": "sac-discrete, dqn, qrdqn: n-step returns in the critic target; ppo, a2c: vector steps per rollout "
    "(n_steps * num_envs decisions)",
    "gamma": "discount factor; shaping_gamma: the environment's shaping discount (1.0 without shaping), which "
    "keeps potential shaping's optimum",
    "ent_coef": "entropy coefficient: a number, auto (learned from 1.0), auto_<init> (learned from <init>; "
    "sac-discrete), or kl_coef (the environment's KL weight: the exact MARA objective)",
}


_DOCS = {name: docstring_params(spec.cls) for name, spec in ALGORITHMS.items()}


def _flag_sections(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The settings given as flags, by section (flags not given are absent)."""
    sections: dict[str, dict[str, Any]] = {"env": {}, "agent": {}, "train": {}}
    for key, value in vars(args).items():
        for prefix, section in ((_ENV, "env"), (_AGENT, "agent"), (_TRAIN, "train")):
            if key.startswith(prefix):
                sections[section][key[len(prefix) :]] = value
    if "algo" in args:
        sections["agent"]["algo"] = args.algo
    return sections


# ------------------------------------------------------------------------------------------ command


def run(args: argparse.Namespace) -> int:
    """Run ``mara train`` with parsed arguments; returns the exit code."""
    out = Path(args.out)
    flags = _flag_sections(args)
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume continues the run in --out and --overwrite deletes it: pass only one.")
        if args.config:
            raise ValueError(f"--resume reads the run's own {out / CONFIG_FILE}; do not pass --config.")
    # One writer per run folder: the lock comes before anything reads or moves --out
    with run_lock(out):
        put_back_replaced(out)
        if args.resume:
            return resume_run(out, flags, verbose=args.verbose)

        config = RunConfig.from_file(args.config) if args.config else RunConfig.default()
        config = RunConfig.from_sections(flags, source="command line", base=config)
        check_out(out, overwrite=args.overwrite)
        return train_run(config, out, verbose=args.verbose, replace=args.overwrite)
