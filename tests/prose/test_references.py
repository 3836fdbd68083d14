"""No dead ends for the reader (part of `make test`): every reference the study makes can be followed from a clone.

Scanned: every notebook of nbs/ (the source of its markdown and code cells, and its committed outputs) and README.md.
One test case per file, each failing with the list of (file, cell, text) it found:

* **a file outside the repository.** `paper-facts`, `prior-art.md` and `slurm-facts` (notes that live beside the
  repository, never in it), and any `../shared` path but the data copy `../shared/data` — the Makefile's `SHARED`
  default, which the reader is told how to replace. Cite the paper (its sections, tables, figures, equations, its
  appendix) or the official code by name instead.
* **a section the paper does not have.** `§N` must be a section of the paper (§1–§6, §3.1, §3.2, §4.1, §4.2) or a
  numbered section of the same notebook (a heading `## N. ...`): a `§4.4`, `§5.1` or `§8` points into those notes.
* **a path of the machine it ran on.** `/work/`, `/home/`, `/root/`, `/Users/`, `/mnt/`, `/scratch/`, and `/tmp/`
  anywhere but in a command of a fenced code block of markdown (where `/tmp/...` is a scratch folder the reader's
  machine has too). In outputs all of them count (a printout shows the path as it was); in code cells `/work/`,
  `/home/`, `/root/` and `/Users/` (a message prints the path as it is; system folders such as `/tmp` or
  `/scratch/local` may be named by code that checks them).
* **a chapter that does not exist.** `nbs/NAME.ipynb`, `NN_name.ipynb` and a chapter's stem `NN_name` must name a
  notebook of nbs/; "chapter N" (also "chapters N and M", "chapters 3, 4 and 5", "chapter 8a", ranges "00-08") must
  be a chapter, the chapters being the numbers of the files nbs/NN_*.ipynb and their sections nbs/NNa_*.ipynb (8a).

`test_chapter10_computes_its_numbers`: chapter 10 (nbs/10_mini_reproduction.ipynb) says that nothing in it is typed
by hand, so its markdown holds no numeral but those that name something. The rule, on the markdown cells' text
without fenced code blocks, inline code spans (commands, identifiers, file names) and link targets:

* a numeral is a run of digits, with thousands separators, a decimal part, an exponent (`1e-4`) and a sign
  (`-5`, `−5`) as they come, that is not glued to a word on its left: the digits of `fp32`, `x_0`, `H100`, and a
  number joined by a hyphen to a word (`ResNet-110`, `CIFAR-10`, `top-1`: names, depths in net names among them),
  are not numerals; one glued on its right (`64k`, `2-core`, `1,001-layer`) is;
* allowed are: references — `Table(s)`, `Fig.`/`Figs.`/`Figure(s)`, `§`, `Sec.`/`Section(s)`, `Eq.`/`Eqs.`/
  `Equation(s)`, `chapter(s)` and `claim(s)` followed by numbers and lists of them (`Tables 1 and 2`, `Eq. 1–2`,
  `Fig. 4(e)`, `claims 10b and 10d`); a claim id on its own (one or two digits and a letter a–e: `10c`); the
  paper's reference numbers in brackets (`[1]`, `[23]`); years (1900–2099, without a separator); the numbers of
  headings (`## 3. ...`) and of ordered-list items at a line's start;
* every other numeral is a number a cell should compute and print, or a markdown cell written by code (`Markdown(...)`)
  should carry.

Known failures, until the files they are in are cleaned, are marked `xfail(strict=True)` in `REMAINING` (one entry
per file, with its reason): such a case passes as "xfailed" while the file still fails, and turns into a failure as
soon as it is clean — then its entry must be deleted, so that the file stays checked.
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NBS = ROOT / "nbs"
CHAPTER10 = "nbs/10_mini_reproduction.ipynb"

# files with references not yet replaced (their authors are editing them): xfail until clean, then delete the entry
REMAINING = {
}

PAPER_SECTIONS = {"1", "2", "3", "3.1", "3.2", "4", "4.1", "4.2", "5", "6"}
OUTSIDE = re.compile(r"paper-facts|prior-art\.md|slurm-facts|\.\./shared(?!/data\b)")
MACHINE = re.compile(r"(?<![\w.~:/-])/(?:work|home|root|Users|mnt|scratch|tmp)/")
MACHINE_NOT_TMP = re.compile(r"(?<![\w.~:/-])/(?:work|home|root|Users|mnt|scratch)/")
SECTION = re.compile(r"§\s*(\d+(?:\.\d+)*)")
HEADING = re.compile(r"^#{1,6}\s*(\d+(?:\.\d+)*)\.?\s", re.M)
NB_FILE = re.compile(r"(?:nbs/)?\b(\d\d[a-z]?_[A-Za-z]\w*|[A-Za-z]\w*)\.ipynb\b")
NB_STEM = re.compile(r"(?<![\w/.-])(\d\d[a-z]?_[a-z][a-z_]*)(?![\w.-])")
_NUM = r"\d+[a-z]?"
CHAPTER = re.compile(rf"\b[Cc]hapters?\s+({_NUM}(?:\s*(?:,|–|-|and|or|to)\s*{_NUM})*)")
FENCE = re.compile(r"^```.*?^```[^\n]*$", re.M | re.S)


def chapter_files() -> list[Path]:
    return sorted(p for p in NBS.glob("*.ipynb") if re.fullmatch(r"\d\d[a-z]?", p.stem.split("_", 1)[0]))


@lru_cache
def chapter_ids() -> frozenset:
    "The chapters that exist: 0, 1, ... 11 and the sections 8a, 8b, ... as the files of nbs/ number them."
    ids = set()
    for p in chapter_files():
        prefix = p.stem.split("_", 1)[0]
        ids.add(str(int(prefix[:2])) + prefix[2:])
    return frozenset(ids)


@lru_cache
def load(rel: str) -> dict:
    return json.loads((ROOT / rel).read_text(encoding="utf-8"))


def output_text(output: dict) -> str:
    "What a reader sees of one output: streams, errors and text-like data (images are base64, not text)."
    parts = ["".join(output["text"])] if "text" in output else []
    if output.get("output_type") == "error":
        parts.append(output.get("evalue", "") + "\n" + "\n".join(output.get("traceback", [])))
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("+xml"):
            parts.append("".join(value) if isinstance(value, list) else str(value))
    return "\n".join(parts)


def pieces(rel: str):
    "(where, kind, text) of a file: each cell's source ('markdown' or 'code') and each output ('output'), or README."
    if rel.endswith(".md"):
        yield "", "markdown", (ROOT / rel).read_text(encoding="utf-8")
        return
    for i, cell in enumerate(load(rel)["cells"]):
        yield f"cell {i}", cell["cell_type"], "".join(cell["source"])
        for k, output in enumerate(cell.get("outputs", [])):
            yield f"cell {i}, output {k}", "output", output_text(output)


def _line(text: str, start: int) -> tuple[int, str]:
    n = text.count("\n", 0, start)
    lines = text.splitlines() or [""]
    return n + 1, lines[min(n, len(lines) - 1)].strip()[:160]


def findings(rel: str) -> list[str]:
    "Every dead end of one file, as 'file, cell, line: what — the line'."
    return check(rel, list(pieces(rel)))


def check(rel: str, parts: list) -> list[str]:
    "The dead ends in `parts`, the (where, kind, text) of file `rel`."
    headings = set()
    for _, kind, text in parts:
        if kind == "markdown":
            headings |= set(HEADING.findall(text))
    ids, notebooks = chapter_ids(), {p.stem for p in NBS.glob("*.ipynb")}
    found = []

    def add(where, text, start, what):
        n, line = _line(text, start)
        found.append(f"{rel}, {where + ', ' if where else ''}line {n}: {what} — {line}")

    for where, kind, text in parts:
        for m in OUTSIDE.finditer(text):
            add(where, text, m.start(), f"a file outside the repository ({m.group(0)})")
        for m in SECTION.finditer(text):
            if m.group(1) not in PAPER_SECTIONS and m.group(1) not in headings:
                add(where, text, m.start(), f"§{m.group(1)} is no section of the paper nor of this notebook")
        if kind == "markdown":
            fenced = [(f.start(), f.end()) for f in FENCE.finditer(text)]
            for m in MACHINE.finditer(text):
                in_fence = any(a <= m.start() < b for a, b in fenced)
                if not in_fence or MACHINE_NOT_TMP.match(text, m.start()):
                    add(where, text, m.start(), f"a path of a machine ({m.group(0)}...)")
        else:
            for m in (MACHINE_NOT_TMP if kind == "code" else MACHINE).finditer(text):
                if kind != "code" or not m.group(0).endswith(("/mnt/", "/scratch/")):
                    add(where, text, m.start(), f"a path of a machine ({m.group(0)}...)")
        for m in NB_FILE.finditer(text):
            if m.group(0).startswith("nbs/") or re.match(r"\d\d", m.group(1)):
                if m.group(1) not in notebooks:
                    add(where, text, m.start(), f"no notebook {m.group(0)}")
        for m in NB_STEM.finditer(text):
            if m.group(1) not in notebooks:
                add(where, text, m.start(), f"no chapter {m.group(1)}")
        for m in CHAPTER.finditer(text):
            for number in re.findall(_NUM, m.group(1)):
                key = str(int(re.match(r"\d+", number).group(0))) + number.lstrip("0123456789")
                if key not in ids:
                    add(where, text, m.start(), f"no chapter {number}")
    return found


def files() -> list[str]:
    return [f"nbs/{p.name}" for p in sorted(NBS.glob("*.ipynb"))] + ["README.md"]


def _case(rel: str):
    marks = [pytest.mark.xfail(strict=True, reason=REMAINING[rel])] if rel in REMAINING else []
    return pytest.param(rel, id=rel, marks=marks)


@pytest.mark.parametrize("rel", [_case(rel) for rel in files()])
def test_no_dead_ends(rel):
    found = findings(rel)
    assert not found, f"{len(found)} dead end(s) in {rel}:\n" + "\n".join(found)


@pytest.mark.parametrize("kind, text, what", [
    ("markdown", "the paper's appendix (`../shared/paper-facts.md` §4.3)", "outside the repository"),
    ("markdown", "see §8 of the notes", "§8 is no section"),
    ("code", "# the first unit (§4.3)", "§4.3 is no section"),
    ("output", "saved to /work/main/figures/x.png", "a path of a machine"),
    ("code", 'raise FileNotFoundError("run /root/x.py")', "a path of a machine"),
    ("markdown", "run `papermill nbs/07_figures.ipynb out.ipynb`", "no notebook nbs/07_figures.ipynb"),
    ("markdown", "as chapters 3 and 13 show", "no chapter 13"),
    ("markdown", "the sections of chapter 8z", "no chapter 8z"),
    ("markdown", "`14_extra` draws it", "no chapter 14_extra"),
])
def test_dead_end_rules_catch(kind, text, what):
    found = check("nbs/x.ipynb", [("cell 0", kind, text)])
    assert len(found) >= 1 and any(what in f for f in found), found


@pytest.mark.parametrize("kind, text", [
    ("markdown", "the compact copy in `../shared/data`; the paper's §3.1, Table 2, Fig. 4(e), Eq. 5, its appendix"),
    ("markdown", "## 6. Six\nas in §6 below; chapters 0-11, chapter 8a, `nbs/train.ipynb`, `09_figures`"),
    ("markdown", "```bash\npython x.py --out /tmp/acceptance\n```"),
    ("code", 'NODE_LOCAL_DIRS = ("/tmp", "/scratch/local")'),
])
def test_dead_end_rules_pass(kind, text):
    assert check("nbs/x.ipynb", [("cell 0", kind, text)]) == []


def test_remaining_entries_name_existing_files():
    assert set(REMAINING) <= set(files()), set(REMAINING) - set(files())


# ---------------------------------------------------------------------------------------------- chapter 10's numbers
_LIST = r"\d+(?:\.\d+)?[a-z]?(?:\([a-z]\))?"
_REFERENCE = re.compile(
    rf"(?:\b(?i:tables?|figs?\.|figures?|sec\.|sections?|eqs?\.|equations?|chapters?|claims?)|§)\s*"
    rf"{_LIST}(?:\s*(?:,|–|-|and|or|to|&)\s*{_LIST})*")
_CODE_SPAN = re.compile(r"``.+?``|`[^`\n]+`")
_LINK_TARGET = re.compile(r"\]\([^)]*\)")
_ALLOWED = [_REFERENCE,
            re.compile(r"(?<![\w.])\d{1,2}[a-e](?![\w−-])"),          # a claim id on its own: 10c
            re.compile(r"\[\d+(?:\s*,\s*\d+)*\]"),                    # the paper's references: [1], [13, 14]
            re.compile(r"(?<![\w.,])(?:19|20)\d\d(?![\w.,]\d)"),      # a year
            re.compile(r"^#{1,6}\s*\d+(?:\.\d+)*\.?", re.M),          # a heading's number
            re.compile(r"^\s*\d+\.(?=\s)", re.M)]                     # an ordered-list item
NUMERAL = re.compile(r"(?<![\w.,])(?<![A-Za-z]-)(?<![A-Za-z]‑)[−-]?\d+(?:[.,]\d+)*(?:e[−-]?\d+)?")


def typed_numbers(markdown: str) -> list[str]:
    "The numerals of one markdown cell that no rule allows, each with its context (see the module's docstring)."
    text = FENCE.sub(lambda m: " " * len(m.group(0)), markdown)
    for pattern in (_CODE_SPAN, _LINK_TARGET, *_ALLOWED):
        text = pattern.sub(lambda m: " " * len(m.group(0)), text)
    return [f"{m.group(0)!r} in …{markdown[max(0, m.start() - 40):m.end() + 40]}…".replace("\n", " ")
            for m in NUMERAL.finditer(text)]


def test_chapter10_computes_its_numbers():
    found = [f"{CHAPTER10}, cell {i}: {hit}" for i, cell in enumerate(load(CHAPTER10)["cells"])
             if cell["cell_type"] == "markdown" for hit in typed_numbers("".join(cell["source"]))]
    assert not found, f"{len(found)} typed number(s) in chapter 10's prose:\n" + "\n".join(found)


@pytest.mark.parametrize("text, typed", [
    ("Tables 1 and 2, Fig. 4(e), Eq. 1–2, §3.1, chapters 3, 4 and 5, claim 10 (10c, 10e), [1], ECCV 2016", []),
    ("ResNet-110 and ResNet-1001 on CIFAR-10 in fp32, `--seeds 3`, [fig](figures/fig1.png)", []),
    ("## 3. Claim by claim\n1. first\n", []),
    ("21 distinct runs: 14,400 core-seconds, 0.7 %, about 1.2 epochs on a 2-core CPU, b = −5, 64k, decay 1e-4",
     ["21", "14,400", "0.7", "1.2", "2", "−5", "64", "1e-4"]),
    ("the original unit trained the same way (section 3)", []),
])
def test_typed_numbers_rule(text, typed):
    assert [hit.split(" in ")[0].strip("'") for hit in typed_numbers(text)] == typed
