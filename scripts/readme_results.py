"""The README's "What we found", written from what chapter 10 computed — its sentences (figures/findings.md) and its
table of verdicts (figures/findings.csv) — so that the README can never claim more than the verdict column says.

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
    return "" if pd.isna(value) else str(value).replace("|", "\\|")


def block(claims: pd.DataFrame, sentences: str) -> str:
    lines = [BEGIN, "", sentences.strip(), "",
             "| claim | the paper | the study: a − b [interval], seeds | agrees | verdict | collapsed (a, b) |",
             "|---|---|---|---|---|---|"]
    for r in claims.itertuples():
        lines.append(f"| {_cell(r.id)}. {_cell(r.paper_claim)} | {_cell(r.paper)} | {_cell(r.study)} | "
                     f"{_cell(r.agrees)} | {_cell(r.verdict)} | {_cell(r.collapsed)} |")
    lines += ["", END]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--claims", type=Path, default=ROOT / "figures" / "findings.csv")
    ap.add_argument("--sentences", type=Path, default=ROOT / "figures" / "findings.md")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{args.readme}: no verdict block ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + block(pd.read_csv(args.claims, dtype=str), args.sentences.read_text()) + tail
    if args.check:
        if new != text:
            sys.exit(f"{args.readme}'s \"What we found\" differs from {args.claims.name} and {args.sentences.name}: "
                     "run scripts/readme_results.py")
        print("README verdicts: in step with", args.claims.relative_to(ROOT), "and", args.sentences.relative_to(ROOT))
        return
    args.readme.write_text(new)


if __name__ == "__main__":
    main()
