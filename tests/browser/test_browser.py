"""The study as a reader meets it, in a real browser (`make test-browser`, which runs `pytest tests/browser`; plain
`pytest` does not collect this folder: pyproject.toml's norecursedirs).

Starts `jupyter lab` on localhost (its own port, token, runtime, config, settings and workspace folders; stopped at
the end however the test ends) and drives Debian's Chromium through Playwright:

1. every chapter of nbs/ opens in JupyterLab and renders: no raw TeX left (MathJax typeset it), every image output
   loaded (natural width > 0), no error output, its headings present;
2. as a reader runs a training: nbs/train.ipynb, its parameters cell edited through the editor to the smoke profile
   and a temporary runs folder, Run All: the run's record appears in that folder and the last cell prints the final
   error; then `unit = "nope"`: the notebook shows the clear error and nothing is written to the runs folder. The
   notebook file itself is never saved (autosave is off) and is checked to be unchanged;
3. every page of the HTML edition (`make html`, _site/) renders the same way, served from a local folder with no
   network, and every link between its pages leads to a page.

A screenshot of each page goes to .browser-shots/ (git-ignored), taken where a check failed when one did. Select
with `-k` (`make test-browser PYTEST_ARGS="-k html"`); BROWSER_CHAPTERS="08d_sweep_slurm ..." opens only those chapters.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from identity_study.records import read_runs
from scripts.chapters import REPO, chapters

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SHOTS = REPO / ".browser-shots"
TIMEOUT_MS = 120_000

# visible text that is TeX MathJax did not typeset: $…$ with a backslash, ^ or _ inside, $$…$$, \(…\), \[…\]
RAW_TEX = re.compile(r"\$\$.+?\$\$|\$[^$\n]*[\\^_{][^$\n]*\$|\\\(|\\\[|\\(?:frac|mathcal|sum|prod|partial)\b", re.S)
MATH_ERRORS = ("Math Processing Error", "Math input error", "Undefined control sequence")


class Results:
    "Each check passes or fails with a reason; the summary line is the 'N passed, N failed' of a test runner."
    def __init__(self):
        self.passed, self.failed = [], []

    def check(self, name: str, problems: list):
        if problems:
            self.failed.append(name)
            print(f"FAIL {name}")
            for p in problems:
                print(f"     - {p}")
        else:
            self.passed.append(name)
            print(f"ok   {name}")
        sys.stdout.flush()
        return not problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyter_lab(workdir: Path, env: dict):
    """`jupyter lab` on a free localhost port with a random token, everything it writes under `workdir`; the server
    and its kernels (one process group) are stopped on the way out, whatever happened."""
    port, token = free_port(), secrets.token_hex(16)
    settings = workdir / "settings"
    # every cell in the DOM (no windowing), and no autosave: the test edits train.ipynb and must never save it
    (settings / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (settings / "@jupyterlab" / "docmanager-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings").write_text(
        json.dumps({"autosave": False}))
    (settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True)
    (settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**env, "JUPYTER_RUNTIME_DIR": str(workdir / "runtime"), "JUPYTER_CONFIG_DIR": str(workdir / "config"),
           "JUPYTER_DATA_DIR": str(workdir / "data"), "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(workdir / "workspaces"), "IPYTHONDIR": str(workdir / "ipython")}
    log = open(workdir / "jupyter.log", "w")
    cmd = [str(REPO / ".venv/bin/jupyter"), "lab", "--no-browser", f"--port={port}", "--port-retries=0",
           "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={REPO}",
           "--ServerApp.open_browser=False", "--LabApp.news_url=", "--allow-root"]
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).read()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"jupyter lab did not start; its log:\n{(workdir / 'jupyter.log').read_text()}")
                time.sleep(0.5)
        yield url, token
    finally:
        with contextlib.suppress(Exception):
            for kernel in api(url, token, "/api/kernels"):
                api(url, token, f"/api/kernels/{kernel['id']}", "DELETE")
        stop_group(server)
        # kernels run in sessions of their own: any still alive (its connection file lies in our runtime folder)
        for pid in processes_mentioning(str(workdir / "runtime")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        log.close()


def processes_mentioning(text: str) -> list[int]:
    "The ids of the processes whose command line contains `text`."
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                    found.append(int(proc.name))
    return found


def stop_group(proc: subprocess.Popen):
    "Stop `proc` and everything in its process group (a server's kernels): SIGTERM, then SIGKILL after 10 s."
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)       # kernels left behind by a server that did not stop them
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


def api(url: str, token: str, path: str, method: str = "GET", tries: int = 5):
    """A call to the Jupyter server's REST API. A server error on a read is tried again: listing the kernels while one
    is still shutting down can answer 500 for a moment (the kernel is gone between listing and describing it)."""
    req = urllib.request.Request(f"{url}{path}", method=method, headers={"Authorization": f"token {token}"})
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                body = r.read()
            return json.loads(body) if body else None
        except urllib.error.HTTPError as e:
            if method != "GET" or e.code < 500 or attempt == tries - 1:
                raise
            time.sleep(1 + attempt)


def shut_down_kernels(url: str, token: str, timeout_s: float = 30):
    "End every session, then wait until their kernels are gone, so that the next check starts on a quiet server."
    for session in api(url, token, "/api/sessions"):
        with contextlib.suppress(urllib.error.HTTPError):        # already ended by the page closing
            api(url, token, f"/api/sessions/{session['id']}", "DELETE")
    deadline = time.monotonic() + timeout_s
    while api(url, token, "/api/kernels") and time.monotonic() < deadline:
        time.sleep(0.5)


def headings(nb: dict) -> list[str]:
    "The plain-text headings of the notebook's markdown cells (those without maths or markup that render differently)."
    found = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        in_code = False
        for line in "".join(cell["source"]).splitlines():
            if line.startswith("```"):
                in_code = not in_code
            m = re.match(r"#{1,6}\s+(.+)", line)
            if m and not in_code and "$" not in m.group(1):
                found.append(re.sub(r"[`*_]", "", m.group(1)).strip())
    return found


def normal(text: str) -> str:
    return re.sub(r"[^0-9a-z]+", "", text.lower())


# The page's state as the checks need it, read in the browser. `root`: what holds rendered cells; the markdown's
# visible text without code, and what MathJax made of the maths.
PAGE_STATE = """([markdown, outputs, headings]) => {
  const visible = el => {
    const copy = el.cloneNode(true);
    copy.querySelectorAll('code, pre, script, style, mjx-container, .MathJax, .MathJax_CHTML, .MathJax_Preview,'
      + ' .MJX_Assistive_MathML, math').forEach(e => e.remove());
    return copy.textContent;
  };
  const md = [...document.querySelectorAll(markdown)];
  const imgs = [...document.querySelectorAll(outputs + ' img')];
  return {
    markdownCells: md.length,
    text: md.map(visible).join('\\n'),
    allText: document.body.innerText,
    math: document.querySelectorAll('mjx-container, .MathJax_CHTML, .MathJax, math').length,
    // MathJax 2 (the HTML edition) first turns $...$ into a script, then typesets it into a frame beside it
    pendingMath: [...document.querySelectorAll('script[type^="math/tex"]')]
      .filter(s => !document.getElementById(s.id + '-Frame')).length,
    images: imgs.map(i => ({complete: i.complete, width: i.naturalWidth, src: i.src.slice(0, 40)})),
    headings: [...document.querySelectorAll(headings)].map(h => h.textContent),
    errors: [...document.querySelectorAll('[data-mime-type="application/vnd.jupyter.stderr"], .output_error,'
      + ' .jp-OutputArea-output.jp-RenderedText[data-mime-type*="error"]')]
      .map(e => e.textContent).filter(t => /Traceback|Error\\b|Exception\\b/.test(t)),
  };
}"""


def page_problems(page, nb: dict | None, markdown: str, outputs: str, heading_sel: str, wait_s: float = 60):
    "Poll the page until its maths is typeset and its images loaded (or `wait_s` passed); what is still wrong."
    deadline = time.monotonic() + wait_s
    while True:
        state = page.evaluate(PAGE_STATE, [markdown, outputs, heading_sel])
        problems = []
        raw = [m.group(0) for m in RAW_TEX.finditer(state["text"])]
        if raw:
            problems.append(f"raw TeX not typeset: {raw[:3]}")
        if state["pendingMath"]:
            problems.append(f"{state['pendingMath']} formulas not typeset")
        problems += [f"MathJax: {e}" for e in MATH_ERRORS if e in state["allText"]]
        broken = [i for i in state["images"] if not (i["complete"] and i["width"] > 0)]
        if broken:
            problems.append(f"{len(broken)} of {len(state['images'])} images not loaded: {broken[:2]}")
        if state["errors"]:
            problems.append(f"error output: {state['errors'][0][:200]!r}")
        if state["markdownCells"] == 0:
            problems.append("no rendered markdown cell")
        if nb is not None:
            shown = {normal(h) for h in state["headings"]}
            missing = [h for h in headings(nb) if not any(normal(h) in s for s in shown)]
            if missing:
                problems.append(f"headings missing: {missing[:3]}")
            expected = sum(1 for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
            if len(state["images"]) < expected:
                problems.append(f"{len(state['images'])} images shown, the notebook has {expected}")
        if not problems or time.monotonic() > deadline:
            return problems, state
        page.wait_for_timeout(1000)


def shot(page, name: str, at_first_figure: bool = False):
    "A screenshot of the page, scrolled to its first image output (a result) when it has one and that is asked for."
    SHOTS.mkdir(exist_ok=True)
    if at_first_figure:
        page.evaluate("() => document.querySelector('.jp-OutputArea-output img')?.scrollIntoView()")
        page.wait_for_timeout(300)
    page.screenshot(path=str(SHOTS / f"{name}.png"))


def open_notebook(page, url: str, token: str, rel: str):
    page.goto(f"{url}/lab/tree/{rel}?token={token}&reset", wait_until="domcontentloaded", timeout=TIMEOUT_MS)
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=TIMEOUT_MS)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator, .jp-Toolbar", timeout=TIMEOUT_MS)


@contextlib.contextmanager
def lab_page(browser, url: str, token: str, results: Results, label: str, shot_name: str):
    """A JupyterLab page for one check: a page that fails to open or to run is a failure of this check (with its
    screenshot), not of all; the page and the kernels it started are closed whatever happens."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        yield page
    except Exception as e:
        with contextlib.suppress(Exception):
            shot(page, shot_name)
        detail = ""
        if isinstance(e, urllib.error.HTTPError):       # the server's own account of the error (its traceback)
            with contextlib.suppress(Exception):
                detail = "\n" + e.read().decode(errors="replace")[-2000:]
        results.check(label, [f"{type(e).__name__}: {e}{detail}"])
    finally:
        page.close()
        shut_down_kernels(url, token)


def check_chapters_in_lab(browser, url, token, results: Results, only=None):
    for path in chapters():
        if only and path.stem not in only:
            continue
        nb = json.loads(path.read_text(encoding="utf-8"))
        with lab_page(browser, url, token, results, f"JupyterLab {path.stem}", f"lab-{path.stem}") as page:
            open_notebook(page, url, token, f"nbs/{path.name}")
            problems, state = page_problems(page, nb, ".jp-RenderedMarkdown",
                                            ".jp-OutputArea-output", ".jp-RenderedMarkdown :is(h1,h2,h3,h4,h5,h6)")
            shot(page, f"lab-{path.stem}", at_first_figure=not problems)
            results.check(f"JupyterLab {path.stem}: {state['math']} formulas, {len(state['images'])} images",
                          problems)


def wait_kernel_idle(url: str, token: str, timeout_s: float = 120):
    "Until the notebook's kernel has started and is idle."
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        kernels = api(url, token, "/api/kernels")
        if kernels and all(k.get("execution_state") == "idle" for k in kernels):
            return
        time.sleep(0.5)
    raise TimeoutError(f"the kernel did not become idle within {timeout_s:.0f} s")


def replace_cell_text(page, cell, text: str):
    "Select everything in the cell's editor and type `text` in its place, as a reader edits a cell."
    editor = cell.locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(text)        # inserted as typed text, without the editor's auto-closing brackets
    page.keyboard.press("Escape")


def run_all(page):
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def wait_idle(page, timeout_s: float):
    "Until no cell is queued or running ([*]) and the kernel is idle."
    deadline = time.monotonic() + timeout_s
    page.wait_for_timeout(1500)
    while time.monotonic() < deadline:
        busy = page.evaluate("""() => [...document.querySelectorAll('.jp-InputArea-prompt')]
                                        .some(p => p.textContent.includes('*'))""")
        if not busy:
            return True
        page.wait_for_timeout(1000)
    return False


def cell_outputs_text(page) -> list[str]:
    return page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')]
                                   .map(c => c.querySelector('.jp-OutputArea')?.innerText || '')""")


def check_train_notebook(browser, url, token, results: Results, workdir: Path):
    "Run nbs/train.ipynb as a reader: smoke profile through the UI, then a bad unit."
    nb_path = REPO / "nbs" / "train.ipynb"
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    params_source = "".join(next(c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", []))["source"])

    def with_values(**values):
        text = params_source
        for name, value in values.items():
            text, n = re.subn(rf"(?m)^{name} = [^#\n]*?(\s*#)", lambda m: f"{name} = {value}{m.group(1)}", text)
            assert n == 1, f"no line for {name} in the parameters cell"
        return text

    for case, unit, run_dir in (("smoke", '"preact"', workdir / "runs-smoke"), ("bad", '"nope"', workdir / "runs-bad")):
        with lab_page(browser, url, token, results, f"JupyterLab train.ipynb ({case})", f"lab-train-{case}") as page:
            open_notebook(page, url, token, "nbs/train.ipynb")
            wait_kernel_idle(url, token)
            cell = page.locator(".jp-Notebook .jp-CodeCell").first
            replace_cell_text(page, cell, with_values(unit=unit, depth="20", profile='"smoke"',
                                                      run_dir=json.dumps(str(run_dir)), progress="False"))
            run_all(page)
            done = wait_idle(page, 300)
            texts = cell_outputs_text(page)
            if case == "bad":          # the screenshot shows the error, not the cells it stopped before
                with contextlib.suppress(Exception):
                    page.locator('[data-mime-type="application/vnd.jupyter.stderr"]').first.scroll_into_view_if_needed()
            shot(page, f"lab-train-{case}")
            problems = [] if done else ["Run All did not finish within 300 s"]
            found = read_runs(run_dir) if run_dir.exists() else None
            records = sorted(found.index) if found is not None else []
            if case == "smoke":
                if len(records) != 1 or found.status.iloc[0] != "completed":
                    problems.append(f"expected one completed record in the runs folder, found {records}")
                if not re.search(r"final test error \d+\.\d+%", texts[-1] if texts else ""):
                    problems.append(f"the last cell did not print the final error: {texts[-1:]!r}")
                results.check("JupyterLab train.ipynb, smoke profile set in the parameters cell: record "
                              f"{records[0] if records else '-'}", problems)
            else:
                shown = "\n".join(texts)
                if "ValueError" not in shown or "'nope'" not in shown or "preact" not in shown:
                    problems.append(f"no clear error naming 'nope' and the valid units in the outputs: "
                                    f"{shown[-400:]!r}")
                if run_dir.exists() and any(run_dir.iterdir()):
                    problems.append(f"the bad run wrote into its runs folder: {sorted(os.listdir(run_dir))}")
                results.check("JupyterLab train.ipynb, unit = \"nope\": the error is shown, nothing written", problems)


@contextlib.contextmanager
def serve(folder: Path):
    "The folder over HTTP on a free localhost port, in a thread (as any static host would serve the site)."
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass
    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def check_the_checks(browser, results: Results):
    "A negative control: a page with untypeset TeX, a broken image and an error output must fail the page checks."
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "control.html").write_text(
            '<html><body><div class="jp-RenderedMarkdown"><h1>Control</h1><p>Eq. $\\frac{a}{b}$ here</p></div>'
            '<div class="jp-OutputArea-output"><img src="missing.png"></div>'
            '<div data-mime-type="application/vnd.jupyter.stderr">Traceback: ValueError: x</div></body></html>')
        with serve(Path(d)) as base:
            page = browser.new_page()
            try:
                page.goto(f"{base}/control.html", wait_until="load")
                problems, _ = page_problems(page, None, ".jp-RenderedMarkdown", ".jp-OutputArea-output",
                                            "h1", wait_s=2)
            finally:
                page.close()
    caught = [what for what in ("raw TeX", "images not loaded", "error output") if any(what in p for p in problems)]
    results.check("the page checks fail a page with raw TeX, a broken image and an error",
                  [] if len(caught) == 3 else [f"only caught {caught}: {problems}"])


def check_site(browser, site: Path, results: Results):
    pages = sorted(site.glob("*.html"))
    if not (site / "index.html").exists():
        results.check("HTML edition", [f"no {site.name}/index.html: run make html first"])
        return
    with serve(site) as base:
        # no network: only the site's own server answers
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        outside = []
        context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(base)
                      or route.request.url.startswith("data:") else (outside.append(route.request.url),
                                                                      route.abort()))
        for html_page in pages:
            page = context.new_page()
            stem = html_page.stem
            failed = []
            page.on("response", lambda r, failed=failed: failed.append(f"{r.status} {r.url}") if r.status >= 400
                    and not r.url.endswith("/favicon.ico") else None)
            try:
                page.goto(f"{base}/{html_page.name}", wait_until="load", timeout=TIMEOUT_MS)
                nb_path = REPO / "nbs" / f"{stem}.ipynb"
                nb = json.loads(nb_path.read_text(encoding="utf-8")) if nb_path.exists() else None
                problems, state = page_problems(page, nb, ".jp-RenderedMarkdown" if nb else "body",
                                                ".jp-OutputArea-output", ":is(h1,h2,h3,h4,h5,h6)")
                links = page.evaluate("""() => [...document.querySelectorAll('a[href]')].map(a => a.href)
                                         .filter(h => h.startsWith(location.origin))""")
                for link in sorted(set(links)):
                    target = link.split("#")[0][len(base) + 1:]
                    if target and not (site / target).exists():
                        problems.append(f"broken link to {target}")
                chapter_links = sum(1 for h in links if re.search(r"/\d\d[a-z]?_[\w-]+\.html", h))
                if stem == "index" and chapter_links < len(pages) - 1:
                    problems.append(f"the contents page links {chapter_links} chapters, the site has {len(pages) - 1}")
                problems += [f"not found: {f}" for f in failed]
                shot(page, f"site-{stem}", at_first_figure=not problems)
                results.check(f"HTML {html_page.name}: {state['math']} formulas, {len(state['images'])} images, "
                              f"{len(set(links))} local links", problems)
            except Exception as e:
                with contextlib.suppress(Exception):
                    problems += [f"not found: {f}" for f in failed]
                shot(page, f"site-{stem}")
                results.check(f"HTML {html_page.name}", [f"{type(e).__name__}: {e}"])
            finally:
                page.close()
        context.close()
        results.check("HTML edition needs no network", [f"requests outside the site: {outside[:5]}"] if outside
                      else [])


# ---------------------------------------------------------------------------------------------------------------
# the tests: one browser and one JupyterLab for the module


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs Playwright (the dev extra)")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no browser at {CHROMIUM}: install Debian's chromium (bash scripts/system_packages.sh)")
    shutil.rmtree(SHOTS, ignore_errors=True)
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                      "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()
    print(f"screenshots in {SHOTS.relative_to(REPO)}/")


@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="identity-study-browser-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def lab(workdir):
    "(url, token) of a JupyterLab of this checkout, stopped at the end of the module."
    env = {k: v for k, v in os.environ.items() if k != "IN_TEST"}
    env.setdefault("IDENTITY_STUDY_DATA", str(REPO / "data"))
    env.setdefault("OMP_NUM_THREADS", "1")
    with jupyter_lab(workdir, env) as (url, token):
        yield url, token


def _notebooks() -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((REPO / "nbs").glob("*.ipynb"))}


@pytest.fixture(scope="module", autouse=True)
def notebooks_unchanged():
    "No notebook of nbs/ changes on disk while the module runs (JupyterLab never saves one)."
    before = _notebooks()
    yield
    after = _notebooks()
    changed = [name for name in before if before[name] != after.get(name)]
    assert not changed, f"notebooks of nbs/ changed on disk: {changed}"


def _passed(results: Results) -> bool:
    print(f"{len(results.passed)} passed, {len(results.failed)} failed")
    return not results.failed


def test_the_page_checks_catch_a_bad_page(browser):
    results = Results()
    check_the_checks(browser, results)
    assert _passed(results), results.failed


def test_every_chapter_renders_in_jupyterlab(browser, lab):
    "BROWSER_CHAPTERS='08d_sweep_slurm 10_mini_reproduction' opens only those."
    results = Results()
    check_chapters_in_lab(browser, *lab, results, os.environ.get("BROWSER_CHAPTERS", "").split() or None)
    assert _passed(results), results.failed


def test_a_reader_trains_through_the_notebook(browser, lab, workdir):
    results = Results()
    check_train_notebook(browser, *lab, results, workdir)
    assert _passed(results), results.failed


def test_the_html_edition_renders_offline(browser):
    "The pages of `make html` (_site/, or BROWSER_SITE)."
    results = Results()
    check_site(browser, Path(os.environ.get("BROWSER_SITE", REPO / "_site")), results)
    assert _passed(results), results.failed
