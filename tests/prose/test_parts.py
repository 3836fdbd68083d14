"""The study reads in two parts (scripts/chapters.py PARTS): Part I, the science, then Part II, the machinery. Every
chapter belongs to one part and says so at its top, asks its question, ends with what it established and the next
chapter in reading order; README.md's chapter tables list the parts in the same order."""
import json
import re
from pathlib import Path

import pytest

from scripts.chapters import PARTS, part_of, reading_order

ROOT = Path(__file__).resolve().parents[2]

ORDER = reading_order()
STEMS = [p.stem for p in ORDER]


def markdown(path: Path) -> list[str]:
    nb = json.loads(path.read_text(encoding="utf-8"))
    return ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]


def test_every_chapter_is_in_exactly_one_part():
    listed = [s for stems in PARTS.values() for s in stems]
    assert len(listed) == len(set(listed)) == len(ORDER)


@pytest.mark.parametrize("path", ORDER, ids=lambda p: p.stem)
def test_a_chapter_names_its_part_and_asks_its_question(path):
    first = markdown(path)[0]
    assert re.match(r"# Chapter \d+[a-z]? ", first), "the first cell opens with the chapter's title"
    assert f"**{part_of(path.stem)}**" in first, f"the first cell names {part_of(path.stem)!r}"
    assert "**The question.**" in first, "the first cell states the chapter's question"


@pytest.mark.parametrize("path", ORDER, ids=lambda p: p.stem)
def test_a_chapter_ends_with_its_answer_and_the_next_step(path):
    last = markdown(path)[-1]
    assert last.startswith("## What this chapter established"), "the last cell says what the chapter established"
    nxt = re.search(r"\*\*Next:\*\*[^\n]*?\]\((\d\d[a-z]?_\w+)\.ipynb\)", last)
    assert nxt, "the last cell links the next chapter"
    i = STEMS.index(path.stem)
    if i + 1 < len(STEMS):
        assert nxt.group(1) == STEMS[i + 1], f"next in reading order is {STEMS[i + 1]}, not {nxt.group(1)}"
    else:
        assert nxt.group(1) in STEMS


def test_the_readme_lists_the_parts_in_reading_order():
    readme = (ROOT / "README.md").read_text()
    chapters = readme[readme.index("## The chapters"):readme.index("## Reading the study")]
    for part, stems in PARTS.items():
        assert f"**{part}**" in chapters
        block = chapters[chapters.index(f"**{part}**"):]
        listed = re.findall(r"^\| `(\d\d[a-z]?_\w+)` \|", block, re.M)
        assert listed[:len(stems)] == stems, f"{part}: {listed[:len(stems)]}"
