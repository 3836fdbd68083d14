"""The package as a user gets it: an sdist built from a copy of the checkout, the wheel built from the sdist and
installed into a fresh virtual environment, then a smoke run and a smoke sweep from a folder outside the checkout.

The fresh environment takes torch and the other dependencies from the one running the tests (a .pth file names its
site-packages), so nothing is downloaded: the build runs without isolation, on the setuptools of the dev extra."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from configparser import ConfigParser
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
_SETTINGS = ConfigParser(delimiters=["="])
_SETTINGS.read(ROOT / "settings.ini", encoding="utf-8")
NAME, VERSION = "identity_study", _SETTINGS["DEFAULT"]["version"]
ROW = "full pre-activation [ResNet-110]"      # one row of Table 2, run at depth 20 on the synthetic data set


def sh(cmd, timeout=300, **kw) -> subprocess.CompletedProcess:
    "Run `cmd`; fail the test with its output when it fails."
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def copy_checkout(dest: Path):
    "The checkout's files as git sees them (tracked, and untracked but not ignored): no .venv, data, build outputs."
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs a git checkout and git, to copy the checkout without its build outputs")
    files = sh(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout
    for rel in filter(None, files.split("\0")):
        src = ROOT / rel
        if src.is_file():                       # a file deleted in the working tree is still listed by --cached
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Build the sdist from a copy of the checkout, the wheel from the unpacked sdist, and install the wheel into a
    fresh virtual environment whose other packages are this environment's. Returns the paths and the environment of
    the commands to run there (outside the checkout: no PYTHONPATH, no data or runs folder of the checkout)."""
    tmp = tmp_path_factory.mktemp("package")
    src, dist = tmp / "checkout", tmp / "dist"
    copy_checkout(src)
    build_env = {**os.environ, "PIP_NO_INDEX": "1"}
    sh([sys.executable, "-m", "build", "--no-isolation", "--sdist", "--outdir", dist, src], env=build_env)
    sdist = dist / f"{NAME}-{VERSION}.tar.gz"
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "sdist", filter="data")
    unpacked = tmp / "sdist" / f"{NAME}-{VERSION}"
    # the wheel from the sdist, not from the checkout: the sdist must hold everything setup.py reads
    sh([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir", dist, unpacked], env=build_env)
    wheel = dist / f"{NAME}-{VERSION}-py3-none-any.whl"

    venv = tmp / "venv"
    sh([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    purelib = Path(sh([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # this environment's packages (torch, papermill, ...) after the venv's own: a directory named by a .pth file is
    # put on sys.path, but the .pth files inside it are not read, so the checkout's editable install stays out
    here = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (purelib / "_identity_study_test_base.pth").write_text("".join(f"{p}\n" for p in here))
    sh([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "--no-compile", wheel],
       env=build_env)

    work = tmp / "work"                         # an empty folder outside the checkout
    work.mkdir()
    run_env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "IDENTITY_STUDY_DATA", "IDENTITY_STUDY_RUNS", "VIRTUAL_ENV")}
    run_env.update(OMP_NUM_THREADS="1", PATH=f"{venv / 'bin'}{os.pathsep}{run_env.get('PATH', '')}")
    return dict(sdist=sdist, wheel=wheel, venv=venv, python=python, purelib=purelib, work=work, env=run_env)


def test_sdist_holds_what_the_wheel_needs(env):
    with tarfile.open(env["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"settings.ini", "setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "constraints.txt",
            "nbs/train.ipynb", f"{NAME}/__init__.py", f"{NAME}/train.py", f"{NAME}/py.typed", "CHANGELOG.md",
            "CITATION.cff"} <= names
    # the tests, with the conftest.py and the helper modules they import
    assert {"tests/conftest.py", "tests/test_package.py", "tests/bad_params.py", "tests/ddp_worker.py"} <= names
    assert not any(n.startswith(("runs/", "data/", ".venv/")) for n in names)


def test_wheel_contents_and_metadata(env):
    with zipfile.ZipFile(env["wheel"]) as whl:
        names = set(whl.namelist())
        info = f"{NAME}-{VERSION}.dist-info"
        metadata = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        packaged_nb = whl.read(f"{NAME}/train.ipynb")
    # the training notebook as package data, byte for byte the one of the checkout
    assert packaged_nb == (ROOT / "nbs" / "train.ipynb").read_bytes()
    assert f"{info}/licenses/LICENSE" in names
    assert f"{NAME}/py.typed" in names                             # PEP 561: type checkers read the annotations
    assert not any(n.startswith(("nbs/", "tests/")) for n in names)
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Operating System :: POSIX :: Linux" in metadata
    for extra in ("figures", "sweep", "dev"):
        assert f"Provides-Extra: {extra}" in metadata
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert "Requires-Dist: torch>=2.10" in requires and "Requires-Dist: torchvision>=0.25" in requires
    assert f"Version: {VERSION}" in metadata.splitlines()
    pinned = [r for r in requires if "==" in r.split(";")[0]]
    assert not pinned, f"pins belong in constraints.txt; the package declares ranges: {pinned}"
    assert "identity-study-sweep = identity_study.cli:sweep_main" in entry_points
    assert "identity-study-data = identity_study.cli:data_main" in entry_points


def test_installed_from_the_wheel(env):
    "The venv imports the wheel's identity_study, with the notebook as package data, not the checkout's."
    out = sh([env["python"], "-c", "import json, importlib.resources, identity_study; print(json.dumps(["
              "identity_study.__file__, str(importlib.resources.files('identity_study') / 'train.ipynb')]))"],
             cwd=env["work"], env=env["env"]).stdout
    module, notebook = map(Path, json.loads(out))
    assert module.is_relative_to(env["purelib"]), module
    assert not module.is_relative_to(ROOT)
    assert notebook.is_file() and notebook.is_relative_to(env["purelib"])
    assert (env["venv"] / "bin" / "identity-study-sweep").is_file()
    out = sh([env["python"], "-c", "import identity_study; print(identity_study.__version__)"], cwd=env["work"],
             env=env["env"]).stdout.strip()
    assert out == VERSION


def test_the_installed_data_command_says_a_bad_argument_in_one_line(env):
    "identity-study-data as installed: a data root whose parent is missing is one line, exit status 2, nothing written."
    before = sorted(env["work"].rglob("*"))
    proc = subprocess.run([env["venv"] / "bin" / "identity-study-data", "--download", "--root", "nowhere/data"],
                          capture_output=True, text=True, timeout=120, cwd=env["work"], env=env["env"])
    assert proc.returncode == 2 and proc.stdout == "", proc
    assert proc.stderr.startswith("identity-study-data: error: the data root's parent folder ")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert sorted(env["work"].rglob("*")) == before


def test_smoke_train_and_an_installed_unit_plugin(env):
    """train() from an empty folder, and a unit registered by another installed package through the entry-point
    group identity_study.units (a distribution written by hand into the venv)."""
    purelib = env["purelib"]
    (purelib / "wheel_test_units.py").write_text(
        "from identity_study.units import PreActUnit, register_unit\n\n\n"
        "@register_unit('entry_point_preact')\nclass EntryPointPreAct(PreActUnit):\n    pass\n")
    dist_info = purelib / "wheel_test_units-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: wheel-test-units\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[identity_study.units]\nentry_point_preact = wheel_test_units\n")
    code = ("import json\nfrom identity_study.train import train\nfrom identity_study.units import UNITS\n"
            "record = train(unit='preact', depth=20, profile='smoke', dataset='synthetic', run_dir='runs')\n"
            "print(json.dumps(dict(path=str(record.path), status=record.status,\n"
            "                      plugin='entry_point_preact' in UNITS)))")
    out = json.loads(sh([env["python"], "-c", code], cwd=env["work"], env=env["env"]).stdout.strip().splitlines()[-1])
    path = env["work"] / out["path"]            # relative to the working folder, as run_dir was given
    assert out["status"] == "completed"
    assert out["plugin"], "the unit of the installed plugin was not registered through its entry point"
    assert path.is_relative_to(env["work"] / "runs")
    for f in ("params.json", "metrics.csv", "summary.json"):
        assert (path / f).is_file(), f
    assert json.loads((path / "summary.json").read_text())["status"] == "completed"


def test_smoke_sweep(env):
    "One row of Table 2 through the packaged training notebook (papermill), then its status."
    args = ["table2", "--profile", "smoke", "--seeds", "1", "--only", ROW, "--set", "dataset=synthetic",
            "--set", "depth=20", "--runs-dir", "sweep-runs"]
    sh([env["python"], "-m", "identity_study.sweep", "run", *args], cwd=env["work"], env=env["env"], timeout=600)
    summaries = list((env["work"] / "sweep-runs").glob("*/summary.json"))
    swept = [s.parent for s in summaries if json.loads(s.read_text()).get("status") == "completed"
             and (s.parent / "notebook.ipynb").is_file()]
    assert swept, f"no completed run with its executed notebook under sweep-runs/: {summaries}"
    for f in ("params.json", "metrics.csv", "summary.json", "notebook.ipynb"):
        assert (swept[0] / f).is_file(), f
    status = sh([env["python"], "-m", "identity_study.sweep", "status", *args], cwd=env["work"], env=env["env"])
    assert "1 done" in status.stdout, status.stdout
