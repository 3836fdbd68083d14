"""The fast path follows the device: precision and layout resolved from what the hardware computes, threads from the
load."""
import os
import shutil
import subprocess
import sys
import types
import warnings

import pytest
import torch

import identity_study.train as T
from identity_study.data import device_kind, native_bf16
from identity_study.experiments import TABLES, entry_run_ids
from identity_study.params import resolve_device, resolve_params
from identity_study.records import read_runs
from identity_study.train import CpuThreads, train
from conftest import FAKE_GPU_HOST, ROOT

# about the CPU's fast path: device="cpu" explicitly, so that a GPU host (where "auto" is CUDA) runs them too
SMOKE = dict(unit="preact", depth=20, dataset="synthetic", iterations=4, eval_every=2, batch_size=16,
             train_subset=64, progress=False, threads=1, device="cpu")


def cpu_flags(monkeypatch, onednn: bool, avx512_bf16: bool, amx: bool = False):
    """Pretend to be a CPU with these capabilities (what torch and oneDNN report of it). These are private checks of
    torch, the ones identity_study.data.native_bf16 calls (torch has no public one that says bf16 is native): a torch
    without them fails here by name, not with a bare AttributeError."""
    for owner, name, value in ((torch.ops.mkldnn, "_is_mkldnn_bf16_supported", onednn),
                               (torch.cpu, "_is_avx512_bf16_supported", avx512_bf16),
                               (torch.cpu, "_is_amx_tile_supported", amx)):
        if not hasattr(owner, name):
            pytest.fail(f"torch {torch.__version__} has no {name}, which identity_study.data.native_bf16 calls: "
                        "native_bf16 needs this torch's way of telling native bf16, and this mock with it")
        monkeypatch.setattr(owner, name, lambda value=value: value)
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
    native = resolve_params(unit="original", depth=110, profile="mini", device="cpu", precision="auto")
    cpu_flags(monkeypatch, False, False)
    avx2 = resolve_params(unit="original", depth=110, profile="mini", device="cpu", precision="auto")
    assert (native["precision"], avx2["precision"]) == ("bf16", "fp32") and native["run_id"] != avx2["run_id"]


@pytest.mark.parametrize("onednn,avx512_bf16,amx", [(True, True, True), (False, False, False)])
def test_the_default_is_fp32_on_every_cpu(monkeypatch, onednn, avx512_bf16, amx):
    "bf16 is an opt-in until it is shown not to change the study's answers (chapter 5): the same id on every machine."
    cpu_flags(monkeypatch, onednn, avx512_bf16, amx)
    p = resolve_params(unit="original", depth=110, profile="mini", device="cpu")
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


@pytest.mark.parametrize("precision,expected", [("fp32", False), ("bf16", True), ("tf32", True)])
def test_channels_last_auto_on_a_gpu_follows_the_tensor_cores(fake_gpu_host, precision, expected):
    "IEEE fp32 runs no tensor cores, so NCHW (a guess until the first GPU measurement); bf16 and tf32 channels-last."
    assert resolve_params(device="cuda", precision=precision)["channels_last"] is expected


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


class FakeMachine:
    """The clock and the CPU counters that CpuThreads reads, moved by the test: `cores` cores, of which other
    processes keep `other` busy and the run itself `own`. `CpuThreads._sample` and the train module's clock read it,
    and its `sleep` moves the clock, so a choice depends on the load the test sets and on nothing else running."""
    def __init__(self, monkeypatch, cores: int):
        self.cores, self.now, self.busy_s, self.own_s, self.other, self.own = cores, 1000.0, 0.0, 0.0, 0.0, 0.0
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(CpuThreads, "_sample", lambda governor: (self.now, self.busy_s, self.own_s))
        monkeypatch.setattr(T, "time", types.SimpleNamespace(monotonic=lambda: self.now, sleep=self.run))

    def run(self, seconds: float):
        "`seconds` pass at the current load."
        self.now += seconds
        self.busy_s += seconds * (self.other + self.own)
        self.own_s += seconds * self.own

    def governor(self, **kw) -> CpuThreads:
        governor = CpuThreads(**kw)
        governor.cores = list(range(self.cores))        # this pretended machine's cores, whatever the real one has
        return governor


@pytest.fixture
def torch_threads():
    "The governor sets torch's thread count: give the next tests theirs back."
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_a_busy_core_is_left_to_its_process(monkeypatch, torch_threads):
    "A busy process beside the run: the run takes one core fewer, and takes it back when the process ends."
    machine = FakeMachine(monkeypatch, cores=4)
    machine.other = 1.0                                    # one core kept busy by another process
    governor = machine.governor()
    assert governor.adapt and governor.start() == 3 and torch.get_num_threads() == 3
    machine.own = 3.0                                      # the run's own threads are not another process's load
    machine.run(governor.every_s)
    assert governor.update() is None and torch.get_num_threads() == 3
    machine.other = 0.0                                    # the busy process ends
    machine.run(governor.every_s / 2)
    assert governor.update() is None                       # not looked at again before every_s has passed
    machine.run(governor.every_s / 2)
    assert governor.update() == 4 and torch.get_num_threads() == 4      # the core is taken back
    machine.other = 2.4                                    # two and a half cores' worth of other work: two kept
    machine.run(governor.every_s)
    assert governor.update() == 2 and torch.get_num_threads() == 2


def test_a_quiet_machine_gives_every_core_and_a_full_one_still_one(monkeypatch, torch_threads):
    machine = FakeMachine(monkeypatch, cores=2)
    assert machine.governor().start() == 2
    machine.other = 5.0                                    # more work than cores: the run still gets one
    assert machine.governor().start() == 1


def test_given_threads_are_never_measured_or_changed(monkeypatch, torch_threads):
    machine = FakeMachine(monkeypatch, cores=4)
    machine.other = 3.0
    governor = machine.governor(threads=2)
    assert governor.start() == 2 and not governor.adapt
    machine.other = 0.0
    machine.run(governor.every_s)
    assert governor.update() is None and torch.get_num_threads() == 2


def test_without_proc_stat_every_core_is_used(monkeypatch, torch_threads):
    "No /proc/stat (not Linux): every core, and no further measurement."
    machine = FakeMachine(monkeypatch, cores=3)
    monkeypatch.setattr(CpuThreads, "_sample", lambda governor: (_ for _ in ()).throw(OSError("no /proc/stat")))
    governor = machine.governor()
    assert governor.start() == 3 and not governor.adapt
    machine.run(governor.every_s)
    assert governor.update() is None


def test_the_real_load_sample_is_well_formed():
    "The counters the rule is fed with, read from this machine: seconds that only grow (the figures: benchmarks/)."
    governor = CpuThreads()
    (t0, busy0, own0), (t1, busy1, own1) = governor._sample(), governor._sample()
    assert t1 >= t0 and busy1 >= busy0 >= 0 and own1 >= own0 > 0


def test_figures_find_a_seed_in_whichever_precision_was_recorded(tmp_path):
    "The committed mini records are bf16: a machine of either class finds them, by the precision their params give."
    entry = next(e for e in TABLES["table2"] if e.row == "full pre-activation" and e.case == "ResNet-110")
    ids = {prec: resolve_params(**entry.params, profile="mini", seed=0, precision=prec)["run_id"]
           for prec in ("fp32", "bf16")}
    committed = T.Path(__file__).parent.parent / "runs" / ids["bf16"]
    assert committed.is_dir()
    shutil.copytree(committed, tmp_path / ids["bf16"])
    assert entry_run_ids(entry, "mini", seeds=[0], available=read_runs(tmp_path)) == [ids["bf16"]]
    assert entry_run_ids(entry, "mini", seeds=[0], available=read_runs(tmp_path / "none")) == []
    # without records: the id this machine would train, in the precision it resolves
    assert entry_run_ids(entry, "mini", seeds=[0]) == [resolve_params(**entry.params, profile="mini", seed=0)["run_id"]]


def test_auto_is_cuda_on_a_gpu_host(fake_gpu_host):
    "Under the mock of IDENTITY_STUDY_FAKE_GPU_HOST, 'auto' resolves as on a machine with a GPU."
    assert torch.cuda.is_available() and resolve_device("auto") == "cuda"
    auto = resolve_params(unit="preact", depth=20, dataset="synthetic", profile="smoke")
    cpu = resolve_params(unit="preact", depth=20, dataset="synthetic", profile="smoke", device="cpu")
    assert (auto["device"], cpu["device"]) == ("cuda", "cpu")
    assert auto["run_id"] == cpu["run_id"]                 # where a run executes is not part of what it computes


@pytest.mark.skipif(os.environ.get(FAKE_GPU_HOST) != "1", reason=f"{FAKE_GPU_HOST}=1 is not set")
def test_the_whole_session_is_on_the_pretended_gpu_host():
    assert torch.cuda.is_available() and resolve_device("auto") == "cuda"
    assert resolve_params(unit="preact", depth=20, dataset="synthetic")["device"] == "cuda"


@pytest.mark.slow
def test_the_device_tests_pass_on_a_gpu_host(tmp_path):
    "This file again with IDENTITY_STUDY_FAKE_GPU_HOST=1: every test of the CPU's fast path and threads says so."
    if os.environ.get(FAKE_GPU_HOST) == "1":
        pytest.skip("already on the pretended GPU host")
    env = {**os.environ, FAKE_GPU_HOST: "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--basetemp",
                           str(tmp_path / "basetemp"), str(ROOT / "tests" / "test_device.py"), "-k",
                           "not test_the_device_tests_pass_on_a_gpu_host"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "PASSED tests/test_device.py::test_the_whole_session_is_on_the_pretended_gpu_host" in proc.stdout
    assert "PASSED tests/test_device.py::test_the_record_says_what_the_run_resolved_to" in proc.stdout
    assert "PASSED tests/test_device.py::test_a_busy_core_is_left_to_its_process" in proc.stdout
