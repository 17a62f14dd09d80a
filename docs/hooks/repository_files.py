"""MkDocs hook: the benchmark figures and result files under ``benchmarks/results/`` become part of the site.

The benchmark pages show the figures the benchmark scripts wrote; this adds them to the build where
they are in the repository (``benchmarks/results/...`` from the docs root), instead of a copy under ``docs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
SUFFIXES = (".png", ".svg", ".json", ".csv")


def on_files(files: Files, config: Any) -> Files:
    for path in sorted(RESULTS.rglob("*")):
        if path.is_file() and path.suffix in SUFFIXES:
            files.append(
                File(
                    path.relative_to(ROOT).as_posix(),
                    src_dir=str(ROOT),
                    dest_dir=config["site_dir"],
                    use_directory_urls=config["use_directory_urls"],
                )
            )
    return files
