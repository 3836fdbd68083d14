"""Execute the chapters of nbs/ on their full path and commit their outputs into the notebooks (`make chapters`).

    .venv/bin/python -m scripts.chapters                  # every chapter, 00 .. 10 (from the repository root)
    .venv/bin/python -m scripts.chapters 09_figures 10    # some of them (a name, its number, or its file)

Each chapter runs in a fresh kernel from nbs/ (as nbdev_test and JupyterLab run it), without IN_TEST, so the
outputs are those of the full run a reader needs. The executed notebook is cleaned as `nbdev_clean` cleans it (so
`scripts/check_export.sh` finds nothing to change), stamped in its metadata with the code it ran against (see
`code_stamp`) and written atomically over the source. A chapter that fails keeps its previous file. nbs/train.ipynb
is not a chapter: it is papermill's template, run by every training run.

`python -m scripts.check_chapters` (part of `make test`) reads the stamps back and lists every chapter whose outputs are
missing or older than the code.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NBS = REPO / "nbs"
META_KEY = "identity_study"        # the notebook-level metadata key; settings.ini's allowed_metadata_keys keeps it


def chapters() -> list[Path]:
    """The chapters in reading order: nbs/NN_*.ipynb, each followed by its sections nbs/NNa_*.ipynb, NNb_...
    (chapter 8 and its 8a-8e); train.ipynb, papermill's template, is not one."""
    return sorted(p for p in NBS.glob("[0-9][0-9]*_*.ipynb") if re.fullmatch(r"\d\d[a-z]?", p.stem.split("_", 1)[0]))


# The study's two parts, each in reading order. Each chapter's first cell names its part, README.md's chapter tables
# and the HTML edition follow this order, and tests/test_parts.py holds them to it.
PARTS = {
    "Part I — The science": ["00_propagation", "01_units", "02_models", "07_experiments", "10_mini_reproduction"],
    "Part II — The machinery": ["03_data", "04_records", "05_params", "06_train", "07a_protocol", "08_sweep",
                                "08a_sweep_plan",
                                "08b_sweep_local", "08c_sweep_checks", "08d_sweep_slurm", "08e_sweep_status",
                                "09_figures", "09a_findings", "11_diagrams"],
}


def reading_order() -> list[Path]:
    "The chapters in the order a reader meets them: Part I, then Part II (every chapter in exactly one part)."
    by_stem = {p.stem: p for p in chapters()}
    listed = [stem for stems in PARTS.values() for stem in stems]
    if sorted(listed) != sorted(by_stem):
        raise SystemExit(f"scripts/chapters.py PARTS lists {sorted(set(listed) ^ set(by_stem))} wrongly: every "
                         "chapter of nbs/ belongs to exactly one part")
    return [by_stem[stem] for stem in listed]


def part_of(stem: str) -> str:
    return next(part for part, stems in PARTS.items() if stem in stems)


def select(names) -> list[Path]:
    """The chapters named by `names` (a stem such as 09_figures, its number 09, which takes its sections 09a, ...
    too, a section's 08b, or a file name); all when empty."""
    every = chapters()
    if not names:
        return every
    chosen = []
    for name in names:
        stem = Path(name).name.removesuffix(".ipynb")
        found = [p for p in every if p.stem == stem or p.stem.split("_", 1)[0] in (stem, stem + p.stem[2:3])]
        if not found:
            raise SystemExit(f"no chapter {name!r}; the chapters are: {', '.join(p.stem for p in every)}")
        chosen += [p for p in found if p not in chosen]
    return chosen


def _fingerprint(source: str) -> str:
    from identity_study.records import source_fingerprint
    return source_fingerprint(source)


def package_fingerprint() -> dict:
    """{module: fingerprint} of every module of identity_study (but the generated index _modidx) and of the example
    plugins in examples/: the code any chapter's outputs can depend on. The same AST fingerprint as a run record's
    (chapter 4), so comments, docstrings and prose do not count."""
    modules = {f"identity_study.{p.stem}": p for p in sorted((REPO / "identity_study").glob("*.py"))
               if p.stem != "_modidx"}
    modules.update({f"examples.{p.stem}": p for p in sorted((REPO / "examples").glob("*.py"))})
    return {name: _fingerprint(path.read_text(encoding="utf-8")) for name, path in modules.items()}


_MAGIC = re.compile(r"^\s*[%!]")


def cells_fingerprint(nb: dict) -> str:
    """A hash of the chapter's own code cells, in order: what its non-exported cells compute changes its outputs
    too. Each cell counts by its syntax tree where it parses (IPython magics left out), else by its text."""
    digest = hashlib.sha256()
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        code = "\n".join(line for line in source.splitlines() if not _MAGIC.match(line))
        try:
            part = _fingerprint(code)
        except SyntaxError:
            part = hashlib.sha256(source.strip().encode()).hexdigest()[:12]
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:12]


def count_outputs(nb: dict) -> int:
    return sum(len(c.get("outputs", [])) for c in nb["cells"] if c["cell_type"] == "code")


def code_stamp(nb: dict) -> dict:
    "What the metadata records about an execution: the package's and the chapter's own code, and what it output."
    return dict(code=package_fingerprint(), cells=cells_fingerprint(nb), outputs=count_outputs(nb))


def _clean(nb: dict) -> str:
    """`nb` as `nbdev_clean` writes it: nbdev's public `clean_nb` with the rules of this repository's settings.ini
    (outputs kept, execution counts and stray metadata removed), read as nbdev_clean reads them
    (tests/test_check_chapters.py checks the two give the same file)."""
    from execnb.nbio import nb2str
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    cfg = get_config(path=REPO)
    clean_nb(nb, clear_all=cfg.clear_all, allowed_metadata_keys=cfg.get("allowed_metadata_keys", "").split(),
             allowed_cell_metadata_keys=cfg.get("allowed_cell_metadata_keys", "").split(), clean_ids=cfg.clean_ids)
    return nb2str(nb)


def write_atomically(path: Path, text: str):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)   # mkstemp's file is private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# run in every kernel before the chapter (an IPython startup file): a warning names the file that raised it relative
# to the repository, not where this machine keeps it ("identity_study/data.py:131: UserWarning: ...")
_RELATIVE_WARNINGS = f"""
import os, warnings
_format = warnings.formatwarning
def _relative(message, category, filename, lineno, line=None):
    filename = str(filename)
    if os.path.isabs(filename):
        rel = os.path.relpath(filename, {str(REPO)!r})
        if os.path.basename(os.path.dirname(filename)).startswith("ipykernel_"):
            filename = "<notebook cell>"           # IPython's file for a cell of this notebook
        elif rel.startswith(".."):
            filename = os.path.join("...", os.path.basename(filename))
        else:
            filename = rel
    return _format(message, category, filename, lineno, line)
warnings.formatwarning = _relative
del _relative
"""


def execute(path: Path, timeout: int, data_root: Path) -> float:
    "Execute the chapter at `path` in a fresh kernel from nbs/, full path; write it back cleaned and stamped."
    import nbformat
    from nbclient import NotebookClient
    original = path.read_bytes()
    nb = nbformat.reads(original.decode("utf-8"), as_version=4)
    os.environ.pop("IN_TEST", None)     # the full path: nbdev_test sets IN_TEST for the small one
    # the data root as the kernel sees it from nbs/, relative, so that no output shows where this machine keeps it
    os.environ["IDENTITY_STUDY_DATA"] = os.path.relpath(data_root, path.parent)
    ipython_dir = Path(tempfile.mkdtemp(prefix="identity-study-ipython-"))
    (ipython_dir / "profile_default" / "startup").mkdir(parents=True)
    (ipython_dir / "profile_default" / "startup" / "00-relative-warnings.py").write_text(_RELATIVE_WARNINGS)
    os.environ["IPYTHONDIR"] = str(ipython_dir)
    code = package_fingerprint()       # taken before: the code the kernel imports
    start = time.monotonic()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False,
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        shutil.rmtree(ipython_dir, ignore_errors=True)
    seconds = time.monotonic() - start
    if path.read_bytes() != original:   # someone edited the notebook meanwhile: their edit is not overwritten
        raise RuntimeError(f"{path.name} was changed while it ran; its edit is kept, run the chapter again")
    if package_fingerprint() != code:
        raise RuntimeError("the code changed while the chapter ran: its outputs may mix both versions; run it again")
    nb = json.loads(nbformat.writes(nb))
    nb["metadata"][META_KEY] = dict(code_stamp(nb), code=code)
    write_atomically(path, _clean(nb))
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapters to execute (default: all); 09_figures, 09 or a file")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may take (default 3600)")
    args = parser.parse_args(argv)
    todo = select(args.chapters)
    # the data root as the caller means it (relative to the working folder), handed to each kernel relative to nbs/
    data_root = Path(os.environ.get("IDENTITY_STUDY_DATA") or REPO / "data").resolve()
    failed, total = [], time.monotonic()
    for path in todo:
        print(f"{path.stem}: executing ...", flush=True)
        try:
            seconds = execute(path, args.timeout, data_root)
        except Exception as e:          # one failed chapter must not stop the others; its file is left as it was
            failed.append(path.stem)
            message = str(e).strip().splitlines()
            print(f"{path.stem}: FAILED ({type(e).__name__}); its notebook is unchanged\n  "
                  + "\n  ".join(message[-15:]), flush=True)
            continue
        print(f"{path.stem}: {seconds:.0f} s", flush=True)
    print(f"{len(todo) - len(failed)} of {len(todo)} chapters executed in {time.monotonic() - total:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
