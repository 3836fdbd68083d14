"""The stale-output check of `make test` (scripts/check_chapters.py) catches what it is there to catch."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.chapters import META_KEY, cells_fingerprint, code_stamp, package_fingerprint
from scripts.check_chapters import problems


def notebook(outputs, source="x = 1\nprint(x)"):
    return {"cells": [{"cell_type": "markdown", "id": "a", "metadata": {}, "source": ["# A chapter"]},
                      {"cell_type": "code", "id": "b", "metadata": {}, "execution_count": None,
                       "outputs": outputs, "source": [source]}],
            "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


def stdout(text):
    return {"output_type": "stream", "name": "stdout", "text": [text]}


def written(tmp_path, nb, stamp=True):
    if stamp:
        nb["metadata"][META_KEY] = code_stamp(nb)
    path = tmp_path / "00_chapter.ipynb"
    path.write_text(json.dumps(nb))
    return path


def test_a_fresh_execution_passes(tmp_path):
    assert problems(written(tmp_path, notebook([stdout("runs under runs/\n")]))) == []


def test_a_chapter_never_executed_is_listed(tmp_path):
    assert "no execution stamp" in problems(written(tmp_path, notebook([]), stamp=False))[0]


def test_outputs_older_than_the_package_are_listed(tmp_path):
    path = written(tmp_path, notebook([stdout("1\n")]))
    nb = json.loads(path.read_text())
    nb["metadata"][META_KEY]["code"]["identity_study.units"] = "0" * 12
    path.write_text(json.dumps(nb))
    assert problems(path) == ["older than the code of identity_study.units"]


def test_a_cell_edited_since_the_execution_is_listed(tmp_path):
    path = written(tmp_path, notebook([stdout("1\n")]))
    nb = json.loads(path.read_text())
    nb["cells"][1]["source"] = ["x = 2\nprint(x)"]
    path.write_text(json.dumps(nb))
    assert problems(path) == ["older than its own code cells (edited since it was executed)"]


def test_a_comment_is_not_code():
    with_comment = notebook([], source="x = 1   # one\nprint(x)")
    assert cells_fingerprint(with_comment) == cells_fingerprint(notebook([]))


def test_stripped_outputs_are_listed(tmp_path):
    path = written(tmp_path, notebook([stdout("1\n")]))
    nb = json.loads(path.read_text())
    nb["cells"][1]["outputs"] = []
    path.write_text(json.dumps(nb))
    assert problems(path) == ["outputs missing: 0 of the 1 it was executed with"]


@pytest.mark.parametrize("text", ["runs under /work/main/runs\n", "see /root/.cache/x\n", "'/tmp/identity-x'\n",
                                  "/home/me/identity-study/data.py:131: UserWarning: rebuilt copy\n"])
def test_a_path_of_the_machine_is_listed(tmp_path, text):
    found = problems(written(tmp_path, notebook([stdout(text)])))
    assert len(found) == 1 and "shows a path of the machine" in found[0]


@pytest.mark.parametrize("text", ["runs/preact-110/metrics.csv\n", "https://example.org/tmp/x\n", "a/tmp/b\n"])
def test_relative_paths_and_urls_pass(tmp_path, text):
    assert problems(written(tmp_path, notebook([stdout(text)]))) == []


def test_errors_and_tensor_dumps_are_listed(tmp_path):
    error = {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": ["ValueError: bad"]}
    dump = stdout("tensor([" + "0.1234, " * 40_000 + "])\n")
    found = problems(written(tmp_path, notebook([error, dump])))
    assert any("an error output (ValueError: bad)" in f for f in found)
    assert any("a text output of" in f for f in found)


def test_the_package_fingerprint_covers_every_module():
    modules = set(package_fingerprint())
    assert {"identity_study.units", "identity_study.figures", "identity_study.diagrams", "examples.my_units"} <= modules
    assert "identity_study._modidx" not in modules


def test_chapters_clean_a_notebook_as_nbdev_clean_does(tmp_path):
    "scripts/chapters.py cleans through nbdev's public API: the same file as the nbdev_clean command writes."
    from scripts.chapters import REPO, _clean
    dirty = notebook([{"output_type": "execute_result", "execution_count": 3, "metadata": {},
                       "data": {"text/plain": ["<Thing at 0x7f3a2c1d9e80>"]}}, stdout("1\n")])
    dirty["cells"][1].update(execution_count=3, metadata={"tags": ["parameters"], "collapsed": True,
                                                          "ExecuteTime": {"end_time": "2026-12-05T11:00:00"}})
    dirty["metadata"].update({META_KEY: {"cells": "abc"}, "language_info": {"name": "python", "version": "3.11"},
                              "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                             "language": "python"}})
    path = tmp_path / "dirty.ipynb"
    path.write_text(json.dumps(dirty))
    ours = _clean(json.loads(path.read_text()))
    proc = subprocess.run([str(Path(sys.executable).parent / "nbdev_clean"), "--fname", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "Failed" not in proc.stderr, proc.stderr
    assert ours == path.read_text()
    cleaned = json.loads(ours)
    cell = cleaned["cells"][1]
    assert cell["execution_count"] is None and cell["metadata"] == {"tags": ["parameters"]}   # the papermill tag kept
    assert cell["outputs"][0]["execution_count"] is None and "0x7f3a2c1d9e80" not in ours     # ids cleaned
    assert set(cleaned["metadata"]) == {META_KEY, "kernelspec"}                               # the stamp kept
