"""Package metadata comes from settings.ini (the nbdev 2 convention); this file reads it, and puts the training notebook
into the wheel."""
import shutil
from configparser import ConfigParser
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py

cfg = ConfigParser(delimiters=["="])
cfg.read("settings.ini", encoding="utf-8")
cfg = cfg["DEFAULT"]

licenses = {"apache2": "Apache-2.0"}     # settings.ini's (nbdev's) license names, as SPDX expressions
statuses = ["1 - Planning", "2 - Pre-Alpha", "3 - Alpha", "4 - Beta", "5 - Production/Stable",
            "6 - Mature", "7 - Inactive"]

# the training notebook, which every sweep runs through papermill (identity_study.sweep), ships in the wheel as
# identity_study/train.ipynb. It is copied into the build directory only: the package folder of the source tree stays
# exactly what nbdev_export generates.
TRAIN_NOTEBOOK = Path(cfg["nbs_path"]) / "train.ipynb"
TRAIN_NOTEBOOK_IN_PACKAGE = "train.ipynb"


class BuildPyWithNotebook(build_py):
    "build_py, plus nbs/train.ipynb copied into the built package as package data."

    def _notebook_target(self) -> Path:
        return Path(self.build_lib) / cfg["lib_name"] / TRAIN_NOTEBOOK_IN_PACKAGE

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return      # an editable install runs the checkout's nbs/train.ipynb (the sweep falls back to it)
        if not TRAIN_NOTEBOOK.is_file():
            raise FileNotFoundError(f"{TRAIN_NOTEBOOK} not found: the wheel ships it as {cfg['lib_name']}/"
                                    f"{TRAIN_NOTEBOOK_IN_PACKAGE} (an sdist has it through MANIFEST.in)")
        target = self._notebook_target()
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TRAIN_NOTEBOOK, target)

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return [*outputs, str(self._notebook_target())]


requirements = {k: cfg.get(f"{k}_requirements", "").split() for k in ("figures", "sweep", "dev")}

setuptools.setup(
    name=cfg["lib_name"],
    version=cfg["version"],
    description=cfg["description"],
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    author=cfg["author"],
    author_email=cfg["author_email"],
    license_expression=licenses[cfg["license"]],     # PEP 639: License-Expression, no License classifier
    keywords=cfg["keywords"].split(),
    classifiers=[
        "Development Status :: " + statuses[int(cfg["status"]) - 1],
        "Intended Audience :: " + cfg["audience"],
        "Natural Language :: " + cfg["language"],
        # run records are locked with POSIX flock (identity_study.records); built and tested on Linux only
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: " + cfg["min_python"],
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    python_requires=">=" + cfg["min_python"],
    packages=setuptools.find_packages(include=[cfg["lib_name"], cfg["lib_name"] + ".*"]),
    include_package_data=True,
    package_data={cfg["lib_name"]: ["py.typed"]},     # PEP 561: the package's annotations are for type checkers
    install_requires=cfg["requirements"].split(),
    # by what a user does: [figures] draws, [sweep] runs tables of runs (its training notebook draws its curves, so it
    # pulls [figures]), [dev] tests and builds the notebooks and docs (everything)
    extras_require={
        "figures": requirements["figures"],
        "sweep": requirements["sweep"] + requirements["figures"],
        "dev": requirements["dev"] + requirements["sweep"] + requirements["figures"],
    },
    entry_points={"console_scripts": cfg["console_scripts"].split()},
    cmdclass={"build_py": BuildPyWithNotebook},
    zip_safe=False,
)
