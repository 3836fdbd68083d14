"""The fast path follows the device: precision and layout resolved from what the hardware computes, threads from the
load."""
import os
import subprocess
import sys
import time
import warnings

import pytest
import torch

import identity_study.train as T
from identity_study.data import device_kind, native_bf16
from identity_study.experiments import TABLES
from identity_study.figures import entry_run_ids
from identity_study.params import resolve_params
from identity_study.train import CpuThreads, train

SMOKE = dict(unit="preact", depth=20, dataset="synthetic", iterations=4, eval_every=2, batch_size=16,
             train_subset=64, progress=False, threads=1)


def cpu_flags(monkeypatch, onednn: bool, avx512_bf16: bool, amx: bool = False):
    "Pretend to be a CPU with these capabilities (what torch and oneDNN report of it)."
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr("platform.machine", lambda: "x86_64")


@pytest.mark.parametrize("onednn,avx512_bf16,amx,expected", [
    (True, True, False, "bf16"),       # AVX-512 BF16 (Zen 4, Cooper Lake, Sapphire Rapids)
    (True, False, True, "bf16"),       # AMX
    (True, False, False, "fp32"),      # AVX-512 without BF16: oneDNN accepts bf16 but emulates it
    (False, False, False, "fp32"),     # AVX2 only
])
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(monkeypatch, onednn, avx512_bf16, amx, expected):
    cpu_flags(monkeypatch, onednn, avx512_bf16, amx)
    assert native_bf16("cpu") == (expected == "bf16")
    p = resolve_params(unit="preact", depth=110, profile="mini", device="cpu", precision="auto")
    assert p["precision"] == expected
    # the record stores the resolved precision, so the id is the one of the explicit choice
    assert p["run_id"] == resolve_params(unit="preact", depth=110, profile="mini", precision=expected)["run_id"]


def test_machines_that_resolve_differently_never_share_a_record(monkeypatch):
    cpu_flags(monkeypatch, True, True)
    native = resolve_params(unit="original", depth=110, profile="mini", precision="auto")
    cpu_flags(monkeypatch, False, False)
    avx2 = resolve_params(unit="original", depth=110, profile="mini", precision="auto")
    assert (native["precision"], avx2["precision"]) == ("bf16", "fp32") and native["run_id"] != avx2["run_id"]


@pytest.mark.parametrize("onednn,avx512_bf16,amx", [(True, True, True), (False, False, False)])
def test_the_default_is_fp32_on_every_cpu(monkeypatch, onednn, avx512_bf16, amx):
    "bf16 is an opt-in until it is shown not to change the study's answers (chapter 5): the same id on every machine."
    cpu_flags(monkeypatch, onednn, avx512_bf16, amx)
    p = resolve_params(unit="original", depth=110, profile="mini")
    assert p["precision"] == "fp32"
    assert p["run_id"] == resolve_params(unit="original", depth=110, profile="mini", precision="fp32")["run_id"]


def test_an_avx2_cap_makes_this_machine_an_avx2_one():
    "Not mocked: oneDNN and torch capped at AVX2 (how the benchmarks measure that class) resolve to fp32."
    code = ("from identity_study.params import resolve_params; from identity_study.data import device_kind; "
            "print(resolve_params(device='cpu', precision='auto')['precision'], device_kind('cpu')['cpu_capability'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}).stdout
    assert out.split() == ["fp32", "AVX2"]


def test_bf16_asked_of_an_emulating_cpu_warns_before_the_run_and_is_honoured(monkeypatch, runs):
    monkeypatch.setattr(T, "native_bf16", lambda device: False)
    with pytest.warns(UserWarning, match=r"no native bf16 and emulates it, about \d+x slower than fp32"):
        with pytest.raises(RuntimeError, match="stopped here"):
            # the warning comes before any compute: the data source is never built
            monkeypatch.setattr(T, "make_source", lambda *a: (_ for _ in ()).throw(RuntimeError("stopped here")))
            train(**SMOKE, precision="bf16", run_dir=runs)
    monkeypatch.undo()
    monkeypatch.setattr(T, "native_bf16", lambda device: False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        rec = train(**SMOKE, precision="bf16", run_dir=runs)
        train(**SMOKE, precision="fp32", run_dir=runs)
    assert rec.params["precision"] == "bf16" and rec.status == "completed"
    assert sum("emulates" in str(w.message) for w in seen) == 1          # the bf16 run only


def test_the_record_says_what_the_run_resolved_to(runs):
    rec = train(**SMOKE, run_dir=runs, precision="auto")
    assert rec.params["precision"] == ("bf16" if native_bf16("cpu") else "fp32")
    assert rec.params["channels_last"] is True and rec.params["cpu_threads"] == 1
    kind = device_kind("cpu")
    assert (rec.params["cpu_capability"], rec.params["native_bf16"]) == (kind["cpu_capability"], kind["native_bf16"])


@pytest.mark.parametrize("given,expected", [("auto", True), (True, True), (False, False)])
def test_channels_last_auto_on_the_cpu(given, expected):
    assert resolve_params(device="cpu", channels_last=given)["channels_last"] is expected


def test_bad_fast_path_values_name_the_choices():
    with pytest.raises(ValueError, match=r"unknown precision 'half'; valid choices: auto, fp32, bf16"):
        resolve_params(precision="half")
    with pytest.raises(ValueError, match=r"channels_last must be True, False or 'auto', got 'yes'"):
        resolve_params(channels_last="yes")


def test_thread_rule():
    assert [CpuThreads.for_load(2, x) for x in (0.0, 0.49, 0.5, 1.0, 2.5)] == [2, 2, 1, 1, 1]
    assert [CpuThreads.for_load(16, x) for x in (0.0, 3.2, 15.9, 40.0)] == [16, 13, 1, 1]


def test_given_threads_and_omp_num_threads_are_kept(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert CpuThreads().fixed == 1 and not CpuThreads().adapt
    assert CpuThreads(threads=2).fixed == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert CpuThreads().fixed is None and CpuThreads().adapt


def test_a_busy_core_is_left_to_its_process(monkeypatch):
    "A real busy process beside the run: the run takes one core fewer, and takes it back when the process ends."
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    threads = torch.get_num_threads()
    try:
        free = CpuThreads().start()          # what this machine leaves free now, before the busy process
        if free < 2:
            pytest.skip(f"only {free} core(s) free here: nothing to give up")
        spin = "import time\nend = time.time() + 20\nwhile time.time() < end: pass"
        busy = subprocess.Popen([sys.executable, "-c", spin])
        try:
            time.sleep(0.5)
            governor = CpuThreads()
            assert governor.start() == free - 1
        finally:
            busy.kill()
            busy.wait()
        governor.every_s = 0.3
        time.sleep(0.4)
        assert governor.update() == free                       # the core is free again
    finally:
        torch.set_num_threads(threads)


def test_figures_find_a_seed_in_whichever_precision_was_recorded():
    entry = next(e for e in TABLES["table2"] if e.row == "full pre-activation" and e.case == "ResNet-110")
    ids = {prec: resolve_params(**entry.params, profile="mini", seed=0, precision=prec)["run_id"]
           for prec in ("fp32", "bf16")}
    assert entry_run_ids(entry, "mini", seeds=[0], available={ids["bf16"]}) == [ids["bf16"]]
    assert entry_run_ids(entry, "mini", seeds=[0], available=set(ids.values())) == [ids["fp32"]]
    assert entry_run_ids(entry, "mini", seeds=[0], available=set()) == []
    # the committed mini records (bf16) are found on a machine of either class
    assert (T.Path(__file__).parent.parent / "runs" / ids["bf16"]).is_dir()
