"""Fail when a committed chapter does not show what its code computes now (part of `make test`).

Every chapter of nbs/ must carry the outputs of a full execution by `make chapters`, stamped with the code it ran
against. Listed, with the reason and the command that fixes it, is every chapter that:

* was never executed by `make chapters` (no stamp), or has lost outputs since (fewer than were stamped);
* is older than the code: a module of identity_study or examples/ (fingerprinted as in a run record, chapter 4) or
  one of the chapter's own code cells differs from what it ran against;
* shows an error, or a path of the machine it ran on (/work/..., /root/..., /tmp/..., the repository's own
  location): outputs print paths relative to the repository;
* carries an oversized output (an image above MAX_IMAGE bytes or a text above MAX_TEXT: a tensor dump).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from scripts.chapters import META_KEY, REPO, cells_fingerprint, chapters, count_outputs, package_fingerprint

MAX_IMAGE = 600_000          # bytes of base64 in one image output
MAX_TEXT = 200_000           # characters in one text output
# an absolute path of a machine: a top-level folder that holds user, temporary or installed files
MACHINE_PATH = re.compile(r"(?<![\w.~:/-])/(?:work|root|tmp|home|Users|usr|opt|mnt|srv|var|private|scratch)/")


def _texts(output: dict):
    "The text of one output that a reader sees (stream, error, text/* and SVG data); images are base64, not text."
    if "text" in output:
        yield "".join(output["text"])
    if output.get("output_type") == "error":
        yield "\n".join(output.get("traceback", [])) + output.get("evalue", "")
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("+xml") or mime.endswith("json"):
            yield value if isinstance(value, str) else "".join(value) if isinstance(value, list) else json.dumps(value)


def problems(path: Path, now: dict | None = None) -> list[str]:
    "What is wrong with the committed chapter at `path` (empty when nothing is)."
    nb = json.loads(path.read_text(encoding="utf-8"))
    stamp = nb.get("metadata", {}).get(META_KEY)
    found = []
    if not stamp:
        found.append("no outputs from `make chapters` (no execution stamp in its metadata)")
    else:
        if count_outputs(nb) < stamp.get("outputs", 0):
            found.append(f"outputs missing: {count_outputs(nb)} of the {stamp['outputs']} it was executed with")
        now = package_fingerprint() if now is None else now
        recorded = stamp.get("code", {})
        changed = sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
        if changed:
            found.append(f"older than the code of {', '.join(changed)}")
        if stamp.get("cells") != cells_fingerprint(nb):
            found.append("older than its own code cells (edited since it was executed)")
    own = str(REPO)
    for i, cell in enumerate(nb["cells"]):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                found.append(f"cell {i}: an error output ({output.get('ename')}: {output.get('evalue', '')[:80]})")
            for text in _texts(output):
                hit = MACHINE_PATH.search(text) or (own in text and re.search(re.escape(own), text))
                if hit:
                    line = next(ln for ln in text.splitlines() if hit.group(0) in ln)
                    found.append(f"cell {i}: shows a path of the machine: {line.strip()[:140]!r}")
                if len(text) > MAX_TEXT:
                    found.append(f"cell {i}: a text output of {len(text):,} characters (over {MAX_TEXT:,})")
            for mime, value in output.get("data", {}).items():
                if mime.startswith("image/") and not mime.endswith("+xml"):
                    size = len("".join(value) if isinstance(value, list) else value)
                    if size > MAX_IMAGE:
                        found.append(f"cell {i}: a {mime} output of {size:,} bytes (over {MAX_IMAGE:,})")
    return found


def main() -> int:
    now = package_fingerprint()
    bad = {}
    for path in chapters():
        found = problems(path, now)
        if found:
            bad[path.stem] = found
    if not bad:
        print(f"chapters: all {len(chapters())} show outputs of the current code")
        return 0
    print(f"chapters: {len(bad)} of {len(chapters())} do not show what the current code computes:", file=sys.stderr)
    for stem, found in bad.items():
        print(f"  {stem}:", file=sys.stderr)
        for line in found:
            print(f"    - {line}", file=sys.stderr)
    print(f"Regenerate them with: make chapters ONLY=\"{' '.join(bad)}\"", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
