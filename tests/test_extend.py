"""A unit of the user's own goes everywhere a built-in one goes (train, papermill, sweeps), a record computed by other
code is never handed back silently, and the registry and the figures map table entries to the same runs."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from identity_study.experiments import TABLES, configs
from identity_study.figures import entry_run_ids
from identity_study.params import resolve_params
from identity_study.train import StaleRecordError, train
from identity_study.units import UNITS

ROOT = Path(__file__).resolve().parent.parent
# in this process on the CPU, said explicitly: on a GPU host device="auto" is CUDA
SMOKE = dict(depth=20, dataset="synthetic", profile="smoke", progress=False, threads=1, device="cpu")
PLUGIN = '''
import torch
from torch import nn

from identity_study.units import PreActUnit, register_unit


@register_unit("{name}")
class ScaledResidualUnit(PreActUnit):
    "x_(l+1) = h(x) + scale F(x): the residual scaled by a learnable scalar that starts at residual_init."
    options = {{"residual_init": 0.5}}

    def __init__(self, cin, cout, stride=1, **kw):
        super().__init__(cin, cout, stride, **kw)
        self.scale = nn.Parameter(torch.tensor(float(self.residual_init)))

    def forward(self, x):
        x_preact = self.preact(x)
        return self.shortcut(x_preact if self.split_preact else x) + {factor}self.scale * self.branch(x_preact)
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    "A module `plugin_<test>` in a fresh working folder that registers unit `scaled_<test>`; removed afterwards."
    name = "t" + str(abs(hash(tmp_path)) % 10**8)
    module, unit = f"plugin_{name}", f"scaled_{name}"
    (tmp_path / f"{module}.py").write_text(PLUGIN.format(name=unit, factor=""))
    monkeypatch.chdir(tmp_path)
    yield module, unit, tmp_path
    UNITS.pop(unit, None)
    sys.modules.pop(module, None)


def _env():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("IN_TEST", None)
    return env


def test_a_plugin_unit_trains_through_train(plugin):
    module, unit, folder = plugin
    rec = train(unit=unit, plugins=[module], residual_init=0.25, run_dir=folder / "runs", **SMOKE)
    assert rec.status == "completed" and rec.params["unit"] == unit and rec.params["residual_init"] == 0.25
    assert rec.params["plugins"] == [module] and module in rec.params["code"]     # its code is fingerprinted too


def test_a_plugin_unit_trains_through_papermill(plugin):
    module, unit, folder = plugin
    out = folder / "out.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", "--no-progress-bar", str(ROOT / "nbs" / "train.ipynb"),
                           str(out), "-p", "unit", unit, "-p", "plugins", json.dumps([module]), "-p", "dataset",
                           "synthetic", "-p", "depth", "20", "-p", "profile", "smoke", "-p", "residual_init", "0.25",
                           "-p", "run_dir", str(folder / "runs"), "--cwd", str(folder)],
                          capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [p for p in (folder / "runs").iterdir() if p.is_dir()]
    params = json.loads((record / "params.json").read_text())
    assert params["unit"] == unit and params["residual_init"] == 0.25
    assert json.loads((record / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_plugin_unit_trains_through_a_sweep(plugin):
    module, unit, folder = plugin
    runs = folder / "runs"
    cmd = [sys.executable, "-m", "identity_study.sweep", "run", "table2", "--profile", "smoke", "--seeds", "1",
           "--runs-dir", str(runs), "--only", "full pre-activation [ResNet-110]", "--set", f"unit={unit}", "--set",
           "dataset=synthetic", "--set", "depth=20", "--plugin", module]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=folder, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (record,) = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert json.loads((record / "params.json").read_text())["unit"] == unit
    assert json.loads((record / "summary.json").read_text())["status"] == "completed"
    assert "trained -> completed" in proc.stdout


def _reload(module, unit, folder, factor):
    "Edit the plugin's forward (a factor in front of the residual) and import the new code, as a new session would."
    (folder / f"{module}.py").write_text(PLUGIN.format(name=unit, factor=factor))
    UNITS.pop(unit, None)
    sys.modules.pop(module, None)


def test_a_changed_forward_is_never_answered_with_the_old_record(plugin):
    module, unit, folder = plugin
    params = dict(unit=unit, plugins=[module], run_dir=folder / "runs", **SMOKE)
    first = train(**params)
    assert first.status == "completed"
    # only a comment and a docstring change: the same computation, the stored record is the answer
    (folder / f"{module}.py").write_text(PLUGIN.format(name=unit, factor="").replace(
        '"x_(l+1) = h(x)', '# a comment\n    "another docstring: x_(l+1) = h(x)'))
    UNITS.pop(unit, None)
    sys.modules.pop(module, None)
    assert train(**params).summary["updated"] == first.summary["updated"]
    # the forward changes: the old record is not returned, and the message names the module and the ways out
    _reload(module, unit, folder, factor="2 * ")
    with pytest.raises(StaleRecordError, match=rf"the code of {module} differs.*rerun=True.*keep_stale=True"):
        train(**params)
    assert train(**params, keep_stale=True).summary["updated"] == first.summary["updated"]   # on purpose
    again = train(**params, rerun=True)
    assert again.status == "completed" and again.params["code"][module] != first.params["code"][module]
    assert (again.path / "superseded-1" / "summary.json").exists()                            # moved aside, kept


def test_a_sweep_does_not_count_a_stale_record_as_done(plugin):
    module, unit, folder = plugin
    runs = folder / "runs"
    train(unit=unit, plugins=[module], run_dir=runs, seed=0, **{**SMOKE, "profile": "smoke"})
    _reload(module, unit, folder, factor="2 * ")
    cmd = [sys.executable, "-m", "identity_study.sweep", "run", "table2", "--profile", "smoke", "--seeds", "1",
           "--runs-dir", str(runs), "--only", "full pre-activation [ResNet-110]", "--set", f"unit={unit}", "--set",
           "dataset=synthetic", "--set", "depth=20", "--set", "threads=1", "--set", "progress=false",
           "--plugin", module, "--dry-run"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(), cwd=folder, timeout=600).stdout
    assert f"but computed by other code ({module})" in out and "kept, not retrained" in out, out


@pytest.mark.parametrize("profile", ["paper", "mini", "smoke"])
@pytest.mark.parametrize("table", list(TABLES))
def test_the_registry_and_the_figures_map_entries_to_the_same_runs(table, profile):
    from_registry = {resolve_params(**{k: v for k, v in c.items() if k != "entry"})["run_id"]
                     for c in configs(table, profile, seeds=3)}
    from_figures = {i for e in TABLES[table] if profile in e.profiles for i in entry_run_ids(e, profile, range(3))}
    assert from_registry == from_figures and from_registry


def test_sweeps_and_figures_read_records_without_the_trainer():
    code = ("import sys, identity_study.sweep, identity_study.figures; "
            "print('identity_study.train' in sys.modules, 'identity_study.records' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=_env()).stdout
    assert out.split() == ["False", "True"]


def test_naming_an_imagenet_data_set_means_the_imagenet_recipe_scaled_with_the_profile():
    from identity_study.data import imagenet_transforms
    p = resolve_params(dataset="tiny_imagenet", depth=152, profile="smoke")
    assert (p["recipe"], p["crop"], p["test_protocol"]) == ("imagenet", 56, "320@320")
    with pytest.raises(ValueError, match="recipe 'paper' does not fit dataset 'tiny_imagenet'"):
        resolve_params(dataset="tiny_imagenet", depth=152, recipe="paper")
    # the test protocols scale with the crop: 320@320 at crop 56 is an 80-pixel view, never an upsampling to 320
    sizes = {}
    for protocol in ("224@256", "320@320"):
        _, test = imagenet_transforms("scale", protocol, crop=p["crop"])
        resize, center = test.transforms[0], test.transforms[1]
        sizes[protocol] = (resize.size[0], tuple(center.size))
    assert sizes == {"224@256": (64, (56, 56)), "320@320": (80, (80, 80))}
