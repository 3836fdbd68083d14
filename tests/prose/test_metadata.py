"""What a researcher who installs the package reads beside it agrees with the package: one version everywhere
(settings.ini, identity_study.__version__, CHANGELOG.md, CITATION.cff, the README), the paper cited, the declared
torch floor, the console scripts, py.typed. Fast: no build (tests/test_package.py builds and installs)."""
import importlib
import re
from configparser import ConfigParser
from pathlib import Path

import pytest

import identity_study

ROOT = Path(__file__).resolve().parents[2]


def settings() -> dict:
    cfg = ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return dict(cfg["DEFAULT"])


VERSION = settings()["version"]


def test_one_version_everywhere():
    assert identity_study.__version__ == VERSION
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d\d-\d\d$", changelog, re.M)
    assert releases and releases[0] == VERSION, releases
    assert f"[{VERSION}]: " in changelog                          # its link at the end (Keep a Changelog)
    assert re.search(rf"^version: {re.escape(VERSION)}$", (ROOT / "CITATION.cff").read_text(encoding="utf-8"), re.M)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"identity_study-(\d+\.\d+\.\d+)(?:-py3-none-any\.whl|\.tar\.gz)", readme))
    assert named == {VERSION}, named
    assert f"version = {{{VERSION}}}" in readme                   # the BibTeX of "How to cite"


def test_the_citation_names_the_study_and_the_paper():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "Apache-2.0"
    assert str(cff["version"]) == VERSION
    [paper] = [r for r in cff["references"] if r["title"] == "Identity Mappings in Deep Residual Networks"]
    assert [a["family-names"] for a in paper["authors"]] == ["He", "Zhang", "Ren", "Sun"]
    assert paper["year"] == 2016 and "ECCV 2016" in paper["collection-title"]
    assert "arXiv:1603.05027" in [i["value"] for i in paper["identifiers"]]


def test_the_declared_torch_floor():
    requirements = settings()["requirements"].split()
    assert "torch>=2.10" in requirements and "torchvision>=0.25" in requirements


def test_the_console_scripts_are_the_checked_command_lines():
    scripts = dict(s.split("=", 1) for s in settings()["console_scripts"].split())
    assert scripts == {"identity-study-sweep": "identity_study.cli:sweep_main",
                       "identity-study-data": "identity_study.cli:data_main"}
    for target in scripts.values():
        module, name = target.split(":")
        assert callable(getattr(importlib.import_module(module), name)), target


def test_py_typed_is_package_data():
    assert (ROOT / "identity_study" / "py.typed").is_file()
    assert 'package_data={cfg["lib_name"]: ["py.typed"]}' in (ROOT / "setup.py").read_text(encoding="utf-8")
    manifest = (ROOT / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    assert "include identity_study/py.typed" in manifest and "include tests/*.py" in manifest


def test_the_readme_installs_and_follows_progress():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## (.+)$", readme, re.M)
    assert sections[sections.index("Quick start") + 1] == "Install" and sections[-1] == "How to cite"
    install = readme[readme.index("## Install"):readme.index("## What we found")]
    for extra in ("[figures]", "[sweep]", "[dev]"):
        assert f"`{extra}`" in install, extra
    assert "identity-study-data" in install and "identity-study-sweep" in install
    assert "papermill --log-output nbs/train.ipynb" in install
