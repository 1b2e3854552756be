"""Every chapter runs top to bottom from a lone downloaded copy, offline.

A reader who downloads one notebook (or opens it in Colab without network) has the installed
package and nothing else: no ``../results``. Each chapter is copied into an empty temporary folder
and executed there with ``BIRL_BOOK_OFFLINE=1`` and ``HOME`` pointing into that folder (no cached
fetch of the results): the chapters that plot committed results must take their fallback path
(a small live run, or a printed note) and still finish without an error.
"""

import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

CHAPTERS = sorted((Path(__file__).resolve().parent.parent / "chapters").glob("[0-9][0-9]_*.ipynb"))


#: chapters without an offline fallback yet (each reads ../results unconditionally)
NO_FALLBACK_YET: set[str] = set()


@pytest.mark.parametrize(
    "chapter",
    [
        pytest.param(
            p,
            marks=pytest.mark.xfail(
                p.stem in NO_FALLBACK_YET, reason="no offline fallback yet", strict=True
            ),
        )
        for p in CHAPTERS
    ],
    ids=[p.stem for p in CHAPTERS],
)
def test_chapter_runs_from_a_lone_copy_offline(chapter, tmp_path, monkeypatch):
    copy = tmp_path / chapter.name
    shutil.copy(chapter, copy)
    monkeypatch.setenv("BIRL_BOOK_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("BIRL_BOOK_RESULTS", raising=False)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError on the first failing cell
    assert not (tmp_path / "results").exists() or not os.listdir(tmp_path / "results")
