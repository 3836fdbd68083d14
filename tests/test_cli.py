"""The console scripts (identity_study.cli): every bad argument of `identity-study-data` is one line on standard
error and exit status 2 with nothing written; `--download` takes the official CIFAR files through torchvision
(stubbed here: there is no network), md5-checked; `make data` picks the offline copy when there is one, else the
download; `identity-study-sweep` on an install without the [sweep] extra says which extra to install, in one line."""
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torchvision.datasets.cifar as tv_cifar

from identity_study import data as study_data
from identity_study.cli import data_main, sweep_main

ROOT = Path(__file__).resolve().parent.parent


def tree(folder: Path) -> list[str]:
    "Every path under `folder`, relative: what a command wrote there."
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def data_cli(argv, capsys):
    "(exit status, stdout, stderr) of `identity-study-data argv`, in this process."
    capsys.readouterr()
    code = data_main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def place(tmp_path):
    "A folder with an offline copy (its rebuild scripts only), a plain file and an existing data root."
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    for script in ("make_torchvision_layout.py", "make_tiny_imagenet_tree.py"):
        (shared / script).write_text("raise SystemExit('not run by these tests')\n")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "existing").mkdir()
    (tmp_path / "bare-copy").mkdir()
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    (["--shared", "{t}/no-such-copy", "--root", "{t}/data"], "the offline copy {t}/no-such-copy does not exist: "),
    (["--shared", "{t}/a-file", "--root", "{t}/data"], "the offline copy {t}/a-file does not exist as a folder"),
    (["--shared", "{t}/bare-copy", "--root", "{t}/data"],
     "{t}/bare-copy is not the offline copy: it has no make_torchvision_layout.py"),
    (["--shared", "{t}/shared/data", "--root", "{t}/missing/data"],
     "the data root's parent folder {t}/missing does not exist"),
    (["--download", "--root", "{t}/missing/deeper/data"], "the data root's parent folder {t}/missing/deeper does not"),
    (["--download", "--root", "{t}/a-file"], "the data root {t}/a-file is not a folder"),
    (["--download", "--root", "{t}/data", "--tiny-imagenet"], "Tiny ImageNet comes from the offline copy only"),
    (["--shared", "{t}/shared/data", "--root", "{t}/shared/data"], "is the offline copy itself"),
])
def test_a_bad_data_argument_is_one_line_exit_2_and_nothing_written(place, capsys, argv, message):
    before = tree(place)
    code, out, err = data_cli([a.format(t=place) for a in argv], capsys)
    assert code == 2
    assert err.startswith("identity-study-data: error: ") and err.count("\n") == 1, err
    assert message.format(t=place) in err, err
    assert out == ""
    assert tree(place) == before


def test_the_data_root_defaults_to_the_environment(place, capsys, monkeypatch):
    monkeypatch.setenv(study_data.DATA_ENV, str(place / "missing" / "data"))
    before = tree(place)
    code, _, err = data_cli(["--download"], capsys)
    assert code == 2 and f"the data root's parent folder {place / 'missing'} does not exist" in err
    assert tree(place) == before


def test_the_data_command_line_needs_a_source(capsys):
    with pytest.raises(SystemExit) as e:
        data_main([])
    assert e.value.code == 2 and "one of the arguments --shared --download is required" in capsys.readouterr().err


# --- the download, with torchvision's download stubbed -----------------------------------------------------------

def _fake_cifar(cls) -> dict[str, bytes]:
    "A small CIFAR archive's files as torchvision lays them out: {file name: bytes}, 4 images a batch."
    rng = np.random.default_rng(0)
    labels = "labels" if cls is tv_cifar.CIFAR10 else "fine_labels"
    classes = 10 if cls is tv_cifar.CIFAR10 else 100

    def batch(n=4):
        return pickle.dumps({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                             labels: rng.integers(0, classes, n).tolist()})
    files = {f: batch() for f, _ in [*cls.train_list, *cls.test_list]}
    files[cls.meta["filename"]] = pickle.dumps({cls.meta["key"]: [f"class{i}" for i in range(classes)]})
    return files


@pytest.fixture
def offline_torchvision(monkeypatch):
    """torchvision's CIFAR download replaced: `mode` 'fake' writes small archives whose md5s torchvision's classes
    are told (as if they were the official files), 'corrupt' writes files whose md5s match nothing, 'offline'
    raises what urllib raises without a network. Returns the calls made, and a setter for the mode."""
    fakes = {cls: _fake_cifar(cls) for cls in (tv_cifar.CIFAR10, tv_cifar.CIFAR100)}
    for cls, files in fakes.items():
        md5 = {f: hashlib.md5(b).hexdigest() for f, b in files.items()}
        monkeypatch.setattr(cls, "train_list", [[f, md5[f]] for f, _ in cls.train_list])
        monkeypatch.setattr(cls, "test_list", [[f, md5[f]] for f, _ in cls.test_list])
        monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=md5[cls.meta["filename"]]))
    state = dict(mode="fake", calls=[])

    def download_and_extract_archive(url, download_root, extract_root=None, filename=None, md5=None, **kw):
        state["calls"].append(filename)
        if state["mode"] == "offline":
            raise URLError("[Errno -3] Temporary failure in name resolution")
        cls = next(c for c in fakes if c.filename == filename)
        folder = Path(download_root) / cls.base_folder
        folder.mkdir(parents=True, exist_ok=True)
        for f, b in fakes[cls].items():
            (folder / f).write_bytes(b if state["mode"] == "fake" else b + b"corrupt")
    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", download_and_extract_archive)
    return state


def test_download_puts_the_official_files_under_the_root(place, capsys, offline_torchvision):
    root = place / "data"
    code, out, err = data_cli(["--download", "--root", root], capsys)
    assert code == 0, err
    assert offline_torchvision["calls"] == ["cifar-10-python.tar.gz", "cifar-100-python.tar.gz"]
    assert out.splitlines() == [f"cifar10: official copy under {root}", f"cifar100: official copy under {root}"]
    images, labels = study_data.load_cifar("cifar10", root)
    assert tuple(images.shape) == (20, 3, 32, 32) and len(labels) == 20          # five batches of 4
    code, out, _ = data_cli(["--download", "--root", root], capsys)                # again: nothing is downloaded
    assert code == 0 and len(offline_torchvision["calls"]) == 2


def test_a_download_without_a_network_is_one_line_exit_1_and_nothing_written(place, capsys, offline_torchvision):
    offline_torchvision["mode"] = "offline"
    before = tree(place)
    code, out, err = data_cli(["--download", "--root", place / "data"], capsys)
    assert code == 1 and out == ""
    assert err.startswith("identity-study-data: error: cifar10 is not under ") and err.count("\n") == 1, err
    assert "could not be downloaded (URLError: " in err
    assert tree(place) == before


def test_a_download_whose_files_do_not_match_their_md5s_is_refused(place, capsys, offline_torchvision):
    offline_torchvision["mode"] = "corrupt"
    code, out, err = data_cli(["--download", "--root", place / "data"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1, err
    # torchvision checks the md5s of what it downloaded and refuses them (data.py's message says "downloaded")
    assert "could not be downloaded (RuntimeError: Dataset not found or corrupted" in err, err


# --- make data: the offline copy when there is one, else the download ---------------------------------------------

def _make_n_data(shared: Path, data: Path) -> str:
    proc = subprocess.run(["make", "-n", "-C", str(ROOT), "data", f"SHARED={shared}", f"DATA={data}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return next(ln for ln in proc.stdout.splitlines() if "identity_study.cli data" in ln)


@pytest.mark.skipif(not (ROOT / "Makefile").is_file() or shutil.which("make") is None,
                    reason="needs the checkout's Makefile and make")
def test_make_data_takes_the_offline_copy_when_there_is_one_else_the_download(place):
    line = _make_n_data(place / "shared", place / "d")
    assert line.endswith(f"-m identity_study.cli data --shared {place}/shared/data --tiny-imagenet --root {place}/d")
    line = _make_n_data(place / "nowhere", place / "d")
    assert line.endswith(f"-m identity_study.cli data --download --root {place}/d")
    assert not (place / "d").exists()


# --- identity-study-sweep without the [sweep] extra ---------------------------------------------------------------

BARE = "import sys; sys.modules['submitit'] = None\n"      # what importing submitit does where it is not installed


def test_the_sweep_command_on_a_bare_install_names_the_extra_in_one_line(tmp_path):
    code = BARE + "from identity_study.cli import sweep_main\nsys.exit(sweep_main(['--help']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr == ("identity-study-sweep: error: submitit is not installed: the sweeps need the sweep extra, "
                           "install identity_study[sweep] (pip install 'identity_study[sweep]')\n"), proc.stderr
    assert not any(tmp_path.iterdir())
    # python -m identity_study.sweep: a traceback, whose last line says the same
    code = BARE + "import runpy\nrunpy.run_module('identity_study.sweep', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    assert "install identity_study[sweep]" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not any(tmp_path.iterdir())


def test_the_sweep_command_with_its_extra_is_the_sweep(capsys):
    with pytest.raises(SystemExit) as e:
        sweep_main(["--help"])
    assert e.value.code == 0 and "run" in capsys.readouterr().out
