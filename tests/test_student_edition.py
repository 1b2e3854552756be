"""The student edition (tools/student_edition.py) and the rule that makes it possible: no cell of a
chapter overwrites what the reader wrote in an exercise.

Chapter 6 is left out of the student-edition tests while it is being rewritten; the scan for cells
that overwrite an exercise covers every chapter."""

import ast
import json
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import student_edition as se  # noqa: E402

CHAPTERS = se.chapter_paths(ROOT)
NOT_CH6 = [p for p in CHAPTERS if not p.name.startswith("06_")]
#: the fastest chapter to execute (measured with the tool: about 10 s on an idle core)
FASTEST = ROOT / "chapters" / "02_bilevel_rl.ipynb"


def _code_cells(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    return [
        (i, "".join(c["source"])) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
    ]


def _bound_names(source):
    """Top-level names a cell binds (def, class, assignment, import), by its syntax tree."""
    code = "\n".join(re.sub(r"^(\s*)[%!].*", r"\1pass", line) for line in source.split("\n"))
    names = set()
    for node in ast.parse(code).body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_no_cell_after_an_exercise_redefines_the_readers_function(path):
    """An exercise cell defines `f` and calls `check_...(f)`; no later cell may bind `f` again
    (it would silently replace the reader's code with the book's)."""
    exercise_names = {}
    clobbers = []
    for i, source in _code_cells(path):
        bound = _bound_names(source)
        clobbers += [
            f"cell {i} redefines {n} (exercise cell {exercise_names[n]})"
            for n in bound & set(exercise_names)
        ]
        for name in re.findall(r"\bcheck_\w+\(\s*(\w+)", source):
            if name in bound and name not in exercise_names:
                exercise_names[name] = i
    assert not clobbers, clobbers


def test_the_scan_finds_a_redefinition(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("def my_f(x):\n    return x\n\n\n_ = check_f(my_f)"),
        nbformat.v4.new_code_cell("def my_f(x):\n    return 2 * x\n\n\n_ = check_f(my_f)"),
    ]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(AssertionError, match="cell 1 redefines my_f"):
        test_no_cell_after_an_exercise_redefines_the_readers_function(path)
    assert se.layout(nb).solution_cells == {1: "redefines my_f"}


def test_solution_dropdowns_are_removed_whatever_their_fence():
    md = (
        "**Exercise 1.**\n\n```{dropdown} Solution\nthree backticks\n```\n\n"
        "**Exercise 2.**\n\n````{dropdown} Solution\n```python\nx = 1\n```\nafter the code\n````\n\n"
        ":::{dropdown} Solution\ncolons\n:::\n\n```{dropdown} Hint\nkept\n```\nend"
    )
    out, n = se.strip_solution_dropdowns(md)
    assert n == 3
    assert "Solution" not in out and "backticks" not in out and "after the code" not in out
    assert "colons" not in out and "x = 1" not in out
    assert "**Exercise 1.**\n\n**Exercise 2.**" in out and "{dropdown} Hint\nkept" in out
    with pytest.raises(ValueError, match="unclosed"):
        se.strip_solution_dropdowns("````{dropdown} Solution\n```\nnever closed\n```")


@pytest.fixture(scope="module")
def editions():
    return {
        p: (nbformat.read(p, as_version=4), se.student_notebook(nbformat.read(p, 4)))
        for p in NOT_CH6
    }


@pytest.mark.parametrize("path", NOT_CH6, ids=lambda p: p.stem)
def test_student_edition_has_no_solutions_keeps_the_stubs_and_no_outputs(path, editions):
    book, ed = editions[path]
    student = ed.nb
    text = "\n".join(c.source for c in student.cells)
    assert ed.dropdowns_removed > 0
    assert not re.search(r"\{dropdown\}\s*Solution", text, re.I)
    assert not any("solution" in c.metadata.get("tags", []) for c in student.cells)
    assert se.STUDENT_NOTE in text
    # every exercise cell of the book is there, unchanged: its stub is the book's first attempt
    book_exercises = [book.cells[i].source for i in se.layout(book).exercise_cells]
    assert book_exercises, "no exercise cell found"
    assert [student.cells[i].source for i in ed.exercise_cells] == book_exercises
    # the stub fails its checker in the book (the committed output says so)
    for i in se.layout(book).exercise_cells:
        out = "".join(o.get("text", "") for o in book.cells[i].outputs)
        assert re.search(r"^FAIL", out, re.M), f"exercise cell {i} does not fail: {out[:200]}"
    # nothing else is lost: the book's cells minus the solution cells, in order
    kept = [c for i, c in enumerate(book.cells) if i not in ed.solution_cells_removed]
    assert [c.cell_type for c in student.cells] == [
        c.cell_type
        for c in kept
        if c.cell_type == "code" or se.strip_solution_dropdowns(c.source)[0].strip()
    ]
    for cell in student.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
    assert book.cells[0].source == student.cells[0].source  # the hidden set-up cell stays first


def test_chapter_3_solution_cells_are_removed(editions):
    path = ROOT / "chapters" / "03_hypergradient.ipynb"
    _, ed = editions[path]
    assert len(ed.solution_cells_removed) == 2
    code = "\n".join(c.source for c in ed.nb.cells if c.cell_type == "code")
    assert "solution_h1" not in code and "solution_lower_level_share" not in code


def test_the_fastest_chapter_runs_to_its_exercises_and_its_stubs_fail(tmp_path):
    ((target, ed),) = se.write_student_edition([FASTEST], tmp_path).items()
    assert nbformat.read(target, as_version=4).cells[1].source == ed.nb.cells[1].source
    report = se.run_student_notebook(ed, timeout=300)  # in chapters/, as the book
    assert report.errors == []
    assert report.verdicts and set(report.verdicts) == {"FAIL"}, report.verdicts
    assert report.ok
