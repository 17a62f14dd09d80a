"""``mara push``: share a training run's agent on the Hugging Face Hub, with a model card.

Examples::

    mara push --repo-id me/mara-smollm2                      # runs/mara-default -> hf:me/mara-smollm2
    mara push --run runs/my-run --repo-id me/mara-agent --revision v1 --private

Uploads the agent file (safetensors weights + JSON settings, never a pickle), ``config.yaml``,
``summary.json``, the evaluation report when ``mara evaluate`` wrote one, and a model card
(:mod:`agents.hub_push`). Needs a Hub token with write access (``huggingface-cli login`` or ``$HF_TOKEN``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from agents.cli.common import DEFAULT_RUN_DIR, searched
from agents.cli.flags import with_default


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (__doc__ or "").split("\n\n")[0]
    parser.add_argument(
        "--run",
        type=Path,
        metavar="DIR",
        default=DEFAULT_RUN_DIR,
        help=with_default("training run folder to share", None, shown=f"{DEFAULT_RUN_DIR} under the current directory"),
    )
    parser.add_argument("--repo-id", metavar="ID", required=True, help="Hub repository, owner/name (required)")
    parser.add_argument(
        "--revision",
        metavar="TEXT",
        help=with_default("branch to commit to (created if missing)", None, shown="the repository's default branch"),
    )
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument(
        "--token", metavar="TEXT", help=with_default("Hub token", None, shown="huggingface-cli login or $HF_TOKEN")
    )
    parser.add_argument(
        "--message", metavar="TEXT", help=with_default("commit message", None, shown="names the algorithm and budget")
    )


def run(args: argparse.Namespace) -> int:
    from agents.hub_push import push_to_hub

    if not args.run.exists():
        raise FileNotFoundError(
            f"no training run at {searched(args.run)}: pass --run with the folder `mara train` wrote."
        )
    info = push_to_hub(
        args.run,
        args.repo_id,
        revision=args.revision,
        private=True if args.private else None,
        token=args.token,
        commit_message=args.message,
    )
    at = f"@{args.revision}" if args.revision else ""
    print(f"pushed {args.run} to hf:{args.repo_id}{at} (commit {getattr(info, 'oid', info)})")
    print(f'use it with: mara generate --agent hf:{args.repo_id}{at} "Hello"')
    return 0
