"""The student edition of the chapters: solutions removed, exercise cells left as stubs, no outputs.

    python tools/student_edition.py OUT_DIR [chapters/NN_*.ipynb ...] [--no-check]
    make student                      # every chapter, into student/ (ignored by git)

What it does to each chapter notebook (nothing in ``chapters/`` is modified):

* **Solutions removed.** Every ``{dropdown} Solution`` block of a markdown cell (fenced with three
  or more backticks or colons, any nesting of shorter fences inside) is deleted; other dropdowns
  stay.
* **Solution cells removed.** A code cell is a solution cell, and is deleted, if it is tagged
  ``solution``; or if it comes after an exercise cell and redefines that exercise's function (the
  book must have none: ``tests/test_student_edition.py``); or if it is a hidden cell
  (``hide-input``, ``hide-cell``, ``remove-input``, ``remove-cell``) of the Exercises section that
  calls a checker.
* **Stubs.** An exercise cell is a code cell that defines a function and passes it to an exercise
  checker (``check_...(my_function)``). Its stub is the cell as the book has it: the book's
  convention is that an exercise cell holds a deliberately wrong *first attempt*, described by the
  exercise's text ("the version below forgets ..."), that its checker rejects. The student edits
  that attempt until the checker prints ``PASS``. Checkers print ``FAIL`` and return ``False``,
  they never raise, so the notebook still runs top to bottom.
* **Outputs cleared** (and execution counts); a note under the ``## Exercises`` heading says how the
  exercises work.

Then, unless ``--no-check``, each student notebook is executed in a fresh kernel (not written back),
and the command fails if any cell raises (cells tagged ``raises-exception`` excepted): every cell
before ``## Exercises`` must run, and the exercise cells must not crash. It prints, per chapter, what
each checker said (an exercise cell whose stub already passes would give the answer away: it is
reported as a problem too). The kernel's working directory is the source chapter's folder, as when
the book is built: chapters read committed results by relative paths (``../results/``), so the
student notebooks belong at the level of ``chapters/`` in a checkout of the repository (``make
student`` writes ``student/``, a sibling of ``chapters/``).
"""

from __future__ import annotations

import argparse
import ast
import copy
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]

STUDENT_NOTE = (
    "*Student edition.* The solutions are removed. Each coding exercise's cell holds a first\n"
    "attempt that its checker rejects (it prints `FAIL` with the first mismatching case): edit it\n"
    "until the checker prints `PASS`."
)
HIDDEN_TAGS = {"hide-input", "hide-cell", "remove-input", "remove-cell"}
_EXERCISES = re.compile(r"^## Exercises\b", re.M)
_H2 = re.compile(r"^## ", re.M)
_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|:{3,})\{dropdown\}[ \t]*Solution\b", re.I)


def chapter_paths(root: Path = ROOT) -> list[Path]:
    """The chapter notebooks of the book: ``chapters/NN_*.ipynb`` (drafts such as ``_x`` skipped)."""
    return sorted(p for p in (root / "chapters").glob("*.ipynb") if re.match(r"\d\d_", p.name))


# --- markdown -------------------------------------------------------------------------------------


def strip_solution_dropdowns(markdown: str) -> tuple[str, int]:
    """Remove every ``{dropdown} Solution`` block; returns the text and the number removed.

    A block opens with a fence of three or more backticks or colons followed by
    ``{dropdown} Solution`` and closes at the first line holding only the same character, at least
    as many times (MyST's rule: shorter fences inside, such as a ```` ```python ```` block in a
    ```` ````{dropdown} ```` one, do not close it). An unclosed block is an error.
    """
    lines = markdown.split("\n")
    out: list[str] = []
    removed = 0
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        char, n = m["fence"][0], len(m["fence"])
        close = re.compile(rf"^[ \t]*{re.escape(char)}{{{n},}}[ \t]*$")
        j = i + 1
        while j < len(lines) and not close.match(lines[j]):
            j += 1
        if j == len(lines):
            raise ValueError(f"unclosed solution dropdown: {lines[i]!r}")
        removed += 1
        i = j + 1
        # one blank line where the block was, not two
        if out and not out[-1].strip() and i < len(lines) and not lines[i].strip():
            i += 1
    text = "\n".join(out)
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n") if removed else markdown, removed


# --- code -----------------------------------------------------------------------------------------


def _parse(source: str) -> ast.Module | None:
    # IPython magics and shell escapes are not Python
    code = "\n".join(re.sub(r"^(\s*)[%!].*", r"\1pass", line) for line in source.split("\n"))
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def defined_names(source: str) -> set[str]:
    """Names a cell binds at top level: ``def``/``class``, assignments, imports, ``for`` targets."""
    tree = _parse(source)
    if tree is None:
        return set()
    names: set[str] = set()

    def targets(node):
        for n in ast.walk(node):
            if isinstance(n, ast.Name):
                names.add(n.id)

    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                targets(t)
        elif isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets(node.target)
        elif isinstance(node, ast.For | ast.With):
            targets(node.target if isinstance(node, ast.For) else node)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def checked_functions(source: str) -> list[tuple[str, str]]:
    """``(checker, function)`` for every call ``check_x(function, ...)`` whose first argument is a name."""
    tree = _parse(source)
    if tree is None:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Name):
            f = node.func
            name = (
                f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
            )
            if name.startswith("check_"):
                found.append((name, node.args[0].id))
    return found


def exercise_functions(source: str) -> list[tuple[str, str]]:
    """``(checker, function)`` pairs of an exercise cell: checked functions the cell itself defines."""
    own = defined_names(source)
    return [(c, f) for c, f in checked_functions(source) if f in own]


@dataclass
class Layout:
    """Where the exercises of one notebook are, by cell index."""

    exercises_start: int | None  # the markdown cell with '## Exercises'
    exercises_end: int  # the next '## ' markdown cell after it (or the number of cells)
    exercise_cells: dict[int, list[str]] = field(default_factory=dict)  # index -> functions
    solution_cells: dict[int, str] = field(default_factory=dict)  # index -> why

    def in_exercises(self, i: int) -> bool:
        return self.exercises_start is not None and self.exercises_start < i < self.exercises_end


def layout(nb) -> Layout:
    """Find the Exercises section, the exercise cells and the solution cells of a notebook."""
    cells = nb.cells
    start = next(
        (
            i
            for i, c in enumerate(cells)
            if c.cell_type == "markdown" and _EXERCISES.search(c.source)
        ),
        None,
    )
    end = len(cells)
    if start is not None:
        after = _EXERCISES.search(cells[start].source).end()
        if _H2.search(cells[start].source, after):
            end = start + 1  # another section starts in the same cell (unusual)
        else:
            end = next(
                (
                    i
                    for i in range(start + 1, len(cells))
                    if cells[i].cell_type == "markdown" and _H2.search(cells[i].source)
                ),
                len(cells),
            )
    lay = Layout(start, end)
    exercise_names: set[str] = set()
    for i, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        tags = set(cell.metadata.get("tags", []))
        redefined = defined_names(cell.source) & exercise_names
        if "solution" in tags:
            lay.solution_cells[i] = "tagged 'solution'"
        elif redefined:
            lay.solution_cells[i] = f"redefines {', '.join(sorted(redefined))}"
        elif tags & HIDDEN_TAGS and lay.in_exercises(i) and checked_functions(cell.source):
            lay.solution_cells[i] = "hidden cell of the exercises that calls a checker"
        else:
            pairs = exercise_functions(cell.source)
            if pairs:
                lay.exercise_cells[i] = [f for _, f in pairs]
                exercise_names.update(f for _, f in pairs)
    return lay


# --- the student notebook -------------------------------------------------------------------------


@dataclass
class Edition:
    nb: object
    source: Path | None  # the book's notebook it was made from
    dropdowns_removed: int
    solution_cells_removed: dict[int, str]
    exercise_cells: list[int]  # indices in the student notebook
    exercises_start: int | None  # index in the student notebook


def student_notebook(nb, source: Path | None = None) -> Edition:
    """The student edition of one notebook (a new notebook; ``nb`` is not modified)."""
    nb = copy.deepcopy(nb)
    lay = layout(nb)
    removed = 0
    cells = []
    exercise_cells: list[int] = []
    exercises_start = None
    for i, cell in enumerate(nb.cells):
        if i in lay.solution_cells:
            continue
        if cell.cell_type == "markdown":
            cell.source, k = strip_solution_dropdowns(cell.source)
            removed += k
            if i == lay.exercises_start:
                exercises_start = len(cells)
                m = _EXERCISES.search(cell.source)
                eol = cell.source.find("\n", m.end())
                eol = len(cell.source) if eol < 0 else eol
                rest = cell.source[eol:].strip("\n")
                cell.source = (
                    cell.source[:eol] + "\n\n" + STUDENT_NOTE + ("\n\n" + rest if rest else "")
                )
            if not cell.source.strip():
                continue  # a cell that held only a solution
        elif cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
            if i in lay.exercise_cells:
                exercise_cells.append(len(cells))
        cells.append(cell)
    nb.cells = cells
    return Edition(nb, source, removed, dict(lay.solution_cells), exercise_cells, exercises_start)


def write_student_edition(paths: list[Path], out_dir: Path) -> dict[Path, Edition]:
    """Write the student edition of each notebook into ``out_dir``; returns them by output path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    editions = {}
    for path in paths:
        edition = student_notebook(nbformat.read(path, as_version=4), source=Path(path))
        target = out_dir / path.name
        nbformat.write(edition.nb, target)
        editions[target] = edition
    return editions


# --- the check ------------------------------------------------------------------------------------


@dataclass
class RunReport:
    errors: list[str]  # cells that raised (cells tagged raises-exception excepted)
    verdicts: list[str]  # per exercise cell: "PASS" / "FAIL" / "?" from its output
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.errors and "PASS" not in self.verdicts


def run_student_notebook(
    edition: Edition, cwd: Path | None = None, timeout: int = 600
) -> RunReport:
    """Execute a student notebook in a fresh kernel (a copy: nothing is written) and report.

    ``cwd``: the kernel's working directory; by default the folder of the source chapter.
    """
    from nbclient import NotebookClient

    if cwd is None:
        cwd = edition.source.resolve().parent if edition.source is not None else Path.cwd()

    nb = copy.deepcopy(edition.nb)
    client = NotebookClient(
        nb, timeout=timeout, allow_errors=True, resources={"metadata": {"path": str(cwd)}}
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    errors = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or "raises-exception" in cell.metadata.get("tags", []):
            continue
        for out in cell.outputs:
            if out.output_type == "error":
                where = (
                    "before the exercises"
                    if edition.exercises_start is None or i < edition.exercises_start
                    else "in the exercises"
                )
                errors.append(f"cell {i} ({where}) raised {out.ename}: {out.evalue}"[:300])
    verdicts = []
    for i in edition.exercise_cells:
        text = "".join(o.get("text", "") for o in nb.cells[i].outputs if o.output_type == "stream")
        verdicts.append(
            "FAIL"
            if re.search(r"^FAIL", text, re.M)
            else "PASS"
            if re.search(r"^PASS", text, re.M)
            else "?"
        )
    return RunReport(errors, verdicts, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder for the student notebooks")
    parser.add_argument("chapters", nargs="*", type=Path, help="default: every chapters/NN_*.ipynb")
    parser.add_argument("--no-check", action="store_true", help="write only, do not execute")
    parser.add_argument("--timeout", type=int, default=600, help="per cell, seconds")
    args = parser.parse_args(argv)
    paths = args.chapters or chapter_paths()
    editions = write_student_edition(paths, args.out_dir)
    for target, ed in editions.items():
        print(
            f"{target}: {ed.dropdowns_removed} solution dropdowns and "
            f"{len(ed.solution_cells_removed)} solution cells removed, "
            f"{len(ed.exercise_cells)} exercise cells (stubs)",
            flush=True,
        )
    if args.no_check:
        return 0
    failed = 0
    for target, ed in editions.items():
        report = run_student_notebook(ed, timeout=args.timeout)
        status = "ok" if report.ok else "PROBLEM"
        failed += not report.ok
        print(
            f"{target.name}: {status}, ran in {report.seconds:.0f} s; "
            f"exercise checkers: {', '.join(report.verdicts) or 'none'}",
            flush=True,
        )
        for e in report.errors:
            print(f"    {e}")
        if "PASS" in report.verdicts:
            print("    an exercise cell's stub passes its checker: it gives the answer away")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
