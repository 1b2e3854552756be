"""Measure how long each chapter takes to execute, top to bottom, in a fresh kernel.

    python tools/chapter_times.py [chapters/*.ipynb]

Prints a Markdown table (chapter, seconds) for the instructors' page; nothing is written to the
notebooks. Run it on an otherwise idle machine: the numbers are wall-clock times.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main(paths: list[str]) -> None:
    paths = paths or sorted(str(p) for p in Path("chapters").glob("*.ipynb"))
    print("| chapter | seconds |\n|---|---|")
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, timeout=600, resources={"metadata": {"path": str(Path(path).parent)}}
        )
        start = time.perf_counter()
        client.execute()
        print(f"| {Path(path).stem} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
