"""Where a chapter finds the book's committed results, wherever the notebook runs.

The heavy experiments of chapters 5, 6 and 9 write one file per run into the repository's
``results/`` folder, and the chapters plot those files. A notebook opened elsewhere (downloaded on
its own, or in Colab) has no ``../results``: :func:`results_folder` then looks in the places below,
and, when allowed, fetches the folder from the book's repository with ``git`` (a sparse, shallow
clone of ``results/`` only, into ``~/.cache/birl-book``). Offline, it returns ``None`` and the
chapter falls back to a small live run of the same experiment, and says so.

Search order for ``results/<name>``:

1. ``$BIRL_BOOK_RESULTS/<name>`` (a folder you point to);
2. ``../results/<name>`` and ``./results/<name>`` (a checkout of the repository: the chapters run
   from ``chapters/``);
3. the cache ``~/.cache/birl-book/results/<name>`` (a previous fetch);
4. a fetch from :data:`REPOSITORY` (skipped when ``fetch=False`` or ``$BIRL_BOOK_OFFLINE`` is set).

The fetch clones ``$BIRL_BOOK_REPOSITORY`` when that is set (any URL ``git clone`` accepts: a fork,
a mirror, or ``file:///path/to/repo.git`` for a local copy), :data:`REPOSITORY` otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

__all__ = ["REPOSITORY", "results_folder", "fetch_results"]

#: The book's repository (the results live in its ``results/`` folder on the ``main`` branch);
#: ``$BIRL_BOOK_REPOSITORY`` overrides it.
REPOSITORY = "https://github.com/birl-book/birl-book"


def _repository() -> str:
    return os.environ.get("BIRL_BOOK_REPOSITORY") or REPOSITORY


_CACHE = Path.home() / ".cache" / "birl-book"


def _has_files(folder: Path) -> bool:
    return folder.is_dir() and any(folder.glob("**/*.json"))


def fetch_results(dest: str | os.PathLike | None = None, timeout: float = 120.0) -> Path | None:
    """Fetch the repository's ``results/`` folder (a shallow, sparse ``git`` clone).

    The repository is ``$BIRL_BOOK_REPOSITORY`` if set, else :data:`REPOSITORY` (its default branch).

    Args:
        dest: where to put the clone (default ``~/.cache/birl-book``).
        timeout: seconds before giving up.

    Returns:
        the ``results`` folder of the clone, or ``None`` when ``git`` is missing, the network is
        unreachable or the clone fails (never raises for those).
    """
    dest = Path(dest) if dest is not None else _CACHE
    if _has_files(dest / "results"):
        return dest / "results"
    if shutil.which("git") is None:
        return None
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    commands = [
        ["git", "clone", "--quiet", "--depth", "1", "--filter=blob:none", "--sparse", _repository(),
         str(tmp)],
        ["git", "-C", str(tmp), "sparse-checkout", "set", "results"],
    ]  # fmt: skip
    try:
        for cmd in commands:
            subprocess.run(cmd, check=True, timeout=timeout, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest / "results" if _has_files(dest / "results") else None


def results_folder(name: str, *, fetch: bool = True) -> Path | None:
    """The folder ``results/<name>`` of the book (module docstring), or ``None`` if unavailable.

    Args:
        name: the experiment's folder, e.g. ``"rlhf_tabular"``.
        fetch: allow a fetch (from ``$BIRL_BOOK_REPOSITORY`` or :data:`REPOSITORY`) when no local
            copy is found.

    Returns:
        the absolute path of a folder that holds at least one results file, or ``None``.
    """
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ValueError(f"name must be a folder name under results/, got {name!r}")
    candidates = []
    if os.environ.get("BIRL_BOOK_RESULTS"):
        candidates.append(Path(os.environ["BIRL_BOOK_RESULTS"]) / name)
    candidates += [Path("..") / "results" / name, Path("results") / name, _CACHE / "results" / name]
    for folder in candidates:
        if _has_files(folder):
            return folder.resolve()
    if not fetch or os.environ.get("BIRL_BOOK_OFFLINE"):
        return None
    root = fetch_results()
    return root / name if root is not None and _has_files(root / name) else None
