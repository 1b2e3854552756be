"""The instructors' page lists, for every chapter, exactly the checkers its exercises use."""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def _checkers_used(path: Path) -> set[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    found = set()
    for names in re.findall(r"from birl_lite\.exercises(?:\.\w+)? import ([^\n]+)", code):
        found |= {n.strip() for n in names.strip("()").split(",") if n.strip().startswith("check_")}
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_instructors_page_lists_the_checkers_of_each_chapter(path):
    page = (ROOT / "instructors.md").read_text(encoding="utf-8")
    line = next((ln for ln in page.splitlines() if f"{{doc}}`chapters/{path.stem}`" in ln), None)
    assert line is not None, f"{path.stem} is not listed on the instructors page"
    listed = set(re.findall(r"`(check_\w+)`", line))
    assert listed == _checkers_used(path), (
        f"instructors.md lists {sorted(listed)} for {path.stem}, "
        f"the chapter uses {sorted(_checkers_used(path))}"
    )
