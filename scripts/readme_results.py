"""The README's table of verdicts, written from the verdicts chapter 10 computed (figures/claims_mini.csv), so that the
README can never claim more than the verdict column says.

  .venv/bin/python scripts/readme_results.py           # rewrite the block between the markers in README.md
  .venv/bin/python scripts/readme_results.py --check   # fail if README.md and figures/claims_mini.csv disagree
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


def block(claims: pd.DataFrame) -> str:
    counts = claims.verdict.value_counts()
    lines = [BEGIN, "",
             "| claim (chapter 10's numbering) | tested at this scale | paper | study, mini | Holm p | verdict |",
             "|---|---|---|---|---|---|"]
    for r in claims.itertuples():
        p = "" if pd.isna(r.p_holm) else f"{r.p_holm:.3g}"
        lines.append(f"| {_cell(r.id)}. {_cell(r.claim)} | {_cell(r.tested_here)} | {_cell(r.paper)} | "
                     f"{_cell(r.study)} | {p} | {_cell(r.verdict)} |")
    lines += ["", "Verdicts: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", "", END]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--claims", type=Path, default=ROOT / "figures" / "claims_mini.csv")
    ap.add_argument("--readme", type=Path, default=ROOT / "README.md")
    args = ap.parse_args(argv)
    text = args.readme.read_text()
    if BEGIN not in text or END not in text:
        sys.exit(f"{args.readme}: no verdict block ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    new = head + block(pd.read_csv(args.claims)) + tail
    if args.check:
        if new != text:
            sys.exit(f"{args.readme}'s verdict table differs from {args.claims}: run scripts/readme_results.py")
        print("README verdicts: in step with", args.claims.relative_to(ROOT))
        return
    args.readme.write_text(new)


if __name__ == "__main__":
    main()
