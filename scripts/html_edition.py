"""The offline HTML edition (`make html`): every executed chapter of nbs/ as a static page, a contents page in
chapter order, maths rendered by a copy of Debian's MathJax inside the site, images embedded in the pages, and the
links between chapters pointing at their pages. Open _site/index.html; nothing is fetched from the network.

    .venv/bin/python -m scripts.html_edition [--out _site]

The pages show the outputs committed in the notebooks (`make chapters` regenerates them); nothing is executed here.
"""
from __future__ import annotations

import argparse
import html
import json
import re
import shutil
from pathlib import Path

from scripts.chapters import PARTS, REPO, part_of, reading_order

MATHJAX = Path("/usr/share/javascript/mathjax")      # Debian's libjs-mathjax (MathJax 2.7)
# what the pages use of it: the loader, the TeX input, the CommonHTML output and its web fonts
MATHJAX_PARTS = ["MathJax.js", "config", "extensions", "jax/input/TeX", "jax/output/CommonHTML", "jax/element",
                 "fonts/HTML-CSS/TeX/woff", "localization/en"]
MATHJAX_URL = "mathjax/MathJax.js?config=TeX-AMS_CHTML"


def copy_mathjax(site: Path):
    "Copy the parts of MathJax the pages load into the site (Debian's tree is links into other packages: resolved)."
    if not (MATHJAX / "MathJax.js").exists():
        raise SystemExit(f"MathJax is missing ({MATHJAX}/MathJax.js): install Debian's libjs-mathjax "
                         "(bash scripts/system_packages.sh)")
    target = site / "mathjax"
    shutil.rmtree(target, ignore_errors=True)
    for part in MATHJAX_PARTS:
        src = MATHJAX / part
        if src.is_dir():
            shutil.copytree(src, target / part, symlinks=False)
        elif src.exists():
            (target / part).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, target / part)


def title_and_summary(nb: dict) -> tuple[str, str]:
    "The chapter's H1 and its one-line summary (the `> ...` line nbdev uses as the module docstring)."
    first = "".join(next(c for c in nb["cells"] if c["cell_type"] == "markdown")["source"])
    title = next((ln[2:].strip() for ln in first.splitlines() if ln.startswith("# ")), "")
    summary = next((ln[1:].strip() for ln in first.splitlines() if ln.startswith(">")), "")
    return title, summary


_CHAPTER_LINK = re.compile(r'href="(?:\./|\.\./nbs/)?([0-9][0-9][a-z]?_[\w-]+)\.ipynb(#[^"]*)?"')
_REMOTE = re.compile(r'<script[^>]+src="https?://[^"]*"[^>]*>\s*</script>\s*|<link[^>]+href="https?://[^"]*"[^>]*>\s*')


def rewrite_links(page: str, stems: set) -> str:
    "Links to another chapter's notebook point at its page; scripts and styles from the network are dropped."
    page = _CHAPTER_LINK.sub(lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"' if m.group(1) in stems
                             else m.group(0), page)
    return _REMOTE.sub("", page)


_CODE_OR_MATH = re.compile(r"(`[^`]*`|\$\$.*?\$\$|\$[^$]*\$|\[[^\]]*\]\([^)]*\))", re.S)
_CHAPTER_MENTION = re.compile(r"\b([Cc]hapters?) (\d{1,2})([a-z]?)\b(?!\.\d)")


def link_chapters(markdown: str, pages: dict) -> str:
    """Make every "chapter N" (or "chapter 8b", a section) of the prose a link to that chapter's page (`pages`:
    number -> stem, and '8b' -> stem for a section). Headings, code, maths and existing links are left alone."""
    def key(m):
        return f"{int(m.group(2))}{m.group(3)}" if m.group(3) else int(m.group(2))

    def in_text(segment: str) -> str:
        return _CHAPTER_MENTION.sub(lambda m: f"[{m.group(1)} {m.group(2)}{m.group(3)}]({pages[key(m)]}.ipynb)"
                                    if key(m) in pages else m.group(0), segment)
    lines = []
    for line in markdown.split("\n"):
        if line.lstrip().startswith("#"):
            lines.append(line)
            continue
        parts = _CODE_OR_MATH.split(line)
        lines.append("".join(p if i % 2 else in_text(p) for i, p in enumerate(parts)))
    return "\n".join(lines)


def navigation(prev: tuple | None, nxt: tuple | None, part: str = "") -> str:
    "Links to the previous and next chapter in reading order, and to the contents, with the part this page is in."
    parts = [f'<a href="{p[0]}.html">← {html.escape(p[1])}</a>' if (p := prev) else "<span></span>",
             f'<span><a href="index.html">Contents</a>{" · " + html.escape(part) if part else ""}</span>',
             f'<a href="{n[0]}.html">{html.escape(n[1])} →</a>' if (n := nxt) else "<span></span>"]
    return ('<nav class="study-nav" style="display:flex;justify-content:space-between;gap:1em;'
            'padding:0.6em 1em;border-bottom:1px solid #ddd;font-family:sans-serif;font-size:14px">'
            + "".join(parts) + "</nav>")


INDEX = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>identity-study: the chapters</title>
<link rel="icon" href="data:,">
<style>
body {{ font-family: sans-serif; max-width: 52em; margin: 2em auto; padding: 0 1em; line-height: 1.45; color: #222 }}
li {{ margin: 0.7em 0 }} .summary {{ color: #555; font-size: 0.95em }} a {{ color: #1a5fb4 }}
</style></head>
<body>
<h1>identity-study</h1>
<p>A literate, reproducible study of <em>Identity Mappings in Deep Residual Networks</em> (He, Zhang, Ren, Sun,
ECCV 2016). The chapters below are the notebooks of <code>nbs/</code> with the outputs of their last full run
(<code>make chapters</code>); this edition needs no network and no Jupyter.</p>
{items}
</body></html>
"""


def build(site: Path) -> list[Path]:
    from nbconvert import HTMLExporter
    import nbformat
    site.mkdir(parents=True, exist_ok=True)
    copy_mathjax(site)
    paths = reading_order()
    stems = {p.stem for p in paths}
    books = []
    for path in paths:
        nb = json.loads(path.read_text(encoding="utf-8"))
        books.append((path, nb, *title_and_summary(nb)))
    pages = {}          # "chapter 8": 08_sweep; "chapter 8b", a section: 08b_sweep_local
    for p in paths:
        section = p.stem.split("_", 1)[0][2:]
        pages.setdefault(f"{int(p.stem[:2])}{section}" if section else int(p.stem[:2]), p.stem)
    for _, nb, *_ in books:
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                cell["source"] = link_chapters("".join(cell["source"]), pages)
    exporter = HTMLExporter(template_name="lab", mathjax_url=MATHJAX_URL, embed_images=True)
    written = []
    for i, (path, nb, title, _) in enumerate(books):
        body, _ = exporter.from_notebook_node(nbformat.reads(json.dumps(nb), as_version=4),
                                              resources={"metadata": {"name": title, "path": str(path.parent)}})
        prev = (books[i - 1][0].stem, books[i - 1][2]) if i > 0 else None
        nxt = (books[i + 1][0].stem, books[i + 1][2]) if i + 1 < len(books) else None
        nav = navigation(prev, nxt, part_of(path.stem))
        body = rewrite_links(body, stems)
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, body, count=1)
        body = body.replace("</body>", nav + "</body>", 1)
        body = body.replace("</head>", '<link rel="icon" href="data:,">\n</head>', 1)   # no favicon to fetch
        out = site / f"{path.stem}.html"
        out.write_text(body, encoding="utf-8")
        written.append(out)
    items = []
    for part, stems in PARTS.items():      # each part in reading order; a section (08a_...) under its chapter
        listed = []
        for p, _, title, summary in (b for b in books if b[0].stem in stems):
            entry = (f'<a href="{p.stem}.html">{html.escape(title)}</a><br>'
                     f'<span class="summary">{html.escape(summary)}</span>')
            if re.match(r"\d\d[a-z]_", p.stem) and listed and listed[-1][0].startswith(f'<a href="{p.stem[:2]}'):
                listed[-1][1].append(entry)
            else:
                listed.append((entry, []))
        items.append(f"<h2>{html.escape(part)}</h2>\n<ul>\n" + "\n".join(
            f"<li>{entry}" + ("<ul>" + "".join(f"<li>{s}</li>" for s in sections) + "</ul>" if sections else "")
            + "</li>" for entry, sections in listed) + "\n</ul>")
    items = "\n".join(items)
    (site / "index.html").write_text(INDEX.format(items=items), encoding="utf-8")
    return [site / "index.html", *written]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "_site"), help="the site's folder (default: _site)")
    args = parser.parse_args(argv)
    site = Path(args.out)
    pages = build(site)
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
    shown = site.relative_to(REPO) if site.is_relative_to(REPO) else site
    print(f"{len(pages)} pages in {shown}/ ({size / 1e6:.1f} MB with MathJax); open {shown}/index.html")


if __name__ == "__main__":
    main()
