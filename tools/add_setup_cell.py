"""Make the first cell of every chapter the (hidden) set-up cell, idempotently.

The cell makes ``birl_lite`` importable when a chapter runs outside the repository (Colab, Binder,
a downloaded notebook): inside the repository's ``.venv`` the import succeeds and the cell does
nothing and prints nothing. It carries the ``remove-cell`` tag, so the book does not show it.

    python tools/add_setup_cell.py chapters/*.ipynb

Re-execute the notebooks afterwards (``jupyter execute --inplace``) so they stay committed with
outputs and execution counts in order.
"""

from __future__ import annotations

import sys

import nbformat

MARKER = "# birl-book setup cell"
REPOSITORY = "https://github.com/birl-book/birl-book"
SOURCE = f'''{MARKER}: makes birl_lite importable outside the repository (Colab, Binder, a download).
try:
    import birl_lite  # noqa: F401
except ImportError:
    %pip install --quiet "birl_lite @ git+{REPOSITORY}"'''


def ensure_setup_cell(path: str) -> bool:
    """Insert or refresh the set-up cell of one notebook; return whether the file changed."""
    nb = nbformat.read(path, as_version=4)
    cell = nbformat.v4.new_code_cell(SOURCE)
    cell.metadata["tags"] = ["remove-cell"]
    first = nb.cells[0] if nb.cells else None
    if first is not None and first.cell_type == "code" and first.source.startswith(MARKER):
        if first.source == SOURCE and "remove-cell" in first.metadata.get("tags", []):
            return False
        nb.cells[0] = cell
    else:
        nb.cells.insert(0, cell)
    nbformat.write(nb, path)
    return True


if __name__ == "__main__":
    for p in sys.argv[1:]:
        print(("updated " if ensure_setup_cell(p) else "unchanged ") + p)
