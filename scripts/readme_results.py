"""The README's "What we found", written from what chapter 10 computed — its one-page summary (figures/summary.md),
its sentences (figures/findings.md) and its table of verdicts (figures/findings.csv) — so that the README can never
claim more than the verdict column says.

  .venv/bin/python scripts/readme_results.py           # rewrite the block between the markers in README.md
  .venv/bin/python scripts/readme_results.py --check   # fail if README.md and chapter 10's files disagree
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- verdicts:begin (scripts/readme_results.py) -->", "<!-- verdicts:end -->"


def _cell(value) -> str:
    return "" if pd.isna(value) else str(value).replace("|", "\\|").replace("\n", " ")


def block(claims: pd.DataFrame, sentences: str, summary: str) -> str:
    lines = [BEGIN, "", "### The study on one page", "", summary.strip(), "", "### The verdicts", "",
             sentences.strip(), "",
             "| claim (the paper's words) | tested here, at | the paper | a: mean ± SD (seeds) | b: mean ± SD (seeds) "
             "| a − b [interval at the Holm level] | p (Holm p) | agrees | verdict | note | collapsed (a, b) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in claims.itertuples():
        tested = f"{_cell(r.tested_here)} ({_cell(r.scale)})" if _cell(r.scale) else _cell(r.tested_here)
        interval = f"{_cell(r.study)} ({_cell(r.holm_interval)})" if _cell(r.holm_interval) else _cell(r.study)
        p = f"{_cell(r.p_text)} ({_cell(r.p_holm_text)})" if _cell(r.p_text) else ""
        lines.append(f"| {_cell(r.id)}. {_cell(r.paper_claim)} | {tested} | {_cell(r.paper)} | {_cell(r.a_side)} | "
                     f"{_cell(r.b_side)} | {interval} | {p} | {_cell(r.agrees)} | {_cell(r.verdict)} | "
                     f"{_cell(r.note)} | {_cell(r.collapsed)} |")
    lines += ["", END]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--claims", type=Path, default=ROOT / "figures" / "findings.csv")
    ap.add_argument("--sentences", type=Path, default=ROOT / "figures" / "findings.md")
    ap.add_argument("--summary", type=Path, default=ROOT / "figures" / "summary.md")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{args.readme}: no verdict block ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + block(pd.read_csv(args.claims, dtype=str, keep_default_na=False), args.sentences.read_text(),
                       args.summary.read_text()) + tail
    if args.check:
        if new != text:
            sys.exit(f"{args.readme}'s \"What we found\" differs from {args.claims.name} and {args.sentences.name}: "
                     "run scripts/readme_results.py")
        print("README verdicts: in step with", args.claims.relative_to(ROOT), "and", args.sentences.relative_to(ROOT))
        return
    args.readme.write_text(new)


if __name__ == "__main__":
    main()
