"""``mara pull``: download an agent shared on the Hugging Face Hub (``mara push``) into a folder.

Examples::

    mara pull me/mara-smollm2                          # into huggingface_hub's cache; prints the folder
    mara pull me/mara-smollm2 --revision v1 --out my-agent
    mara generate --run my-agent "Hello"               # the pulled folder is a run: agent and settings

Only the agent file (safetensors + JSON), ``config.yaml``, ``summary.json``, the evaluation report and the
model card come down; nothing in them runs code when loaded (:mod:`agents.hub`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.cli.flags import with_default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.add_argument("repo_id", metavar="ID", help="Hub repository, owner/name or hf:owner/name[@revision]")
    parser.add_argument(
        "--revision",
        metavar="TEXT",
        help=with_default("branch, tag or commit sha to pin", None, shown="the repository's default branch"),
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help=with_default("folder to put the files in", None, shown="the Hub cache")
    )
    parser.add_argument(
        "--token", metavar="TEXT", help=with_default("Hub token, for private repositories", None, shown="$HF_TOKEN")
    )


def run(args: argparse.Namespace) -> int:
    from agents.hub import pull_from_hub

    folder = pull_from_hub(args.repo_id, revision=args.revision, local_dir=args.out, token=args.token)
    print(folder)
    print(f'use it with: mara generate --run {folder} "Hello"', flush=True)
    return 0
