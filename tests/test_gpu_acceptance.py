"""benchmarks/gpu_acceptance.py on a CPU: its checks (benchmarks/acceptance_checks.py) one by one, a section cut at its
time limit with everything it started, and every section of the run at toy size (--device cpu --tiny)."""
import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.py"
SECTIONS = ["env", "compile", "throughput", "resnet1001", "smoke", "sanity", "resume", "ddp"]
FILES = {"env.json", "checks.json", "throughput.csv", "sanity_metrics.csv", "smoke.ipynb", "sanity.ipynb",
         "acceptance.log"}
# every CSV row names the device and the versions it was measured with
MACHINE = ["device_name", "torch", "cuda", "cudnn", "nccl", "driver", "git_commit", "timestamp"]


def _load(name: str):
    """A module of benchmarks/ by its path, registered under its name (benchmarks/ is not a package, and nothing here
    edits sys.path): a later `import _common` in a module of benchmarks/ finds it loaded."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


C = _load("_common")
A = _load("acceptance_checks")


def _rows(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _script(*args, timeout=120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("IN_TEST", None)
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


# ---------------------------------------------------------------------------------------------------------------
# the checks, one by one

@pytest.fixture
def fresh_math_flags():
    "The fp32 math flags put back after the test (it sets them through torch's newer API)."
    saved = A.TorchDefaults()
    yield
    saved.restore("cpu")


def test_math_modes_reads_every_flag_after_the_new_api_set_one(fresh_math_flags):
    # after this, torch's legacy getters (allow_tf32, get_float32_matmul_precision) raise a RuntimeError
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    modes = A.math_modes()
    assert modes["backends.cuda.matmul.fp32_precision"] == "tf32"
    assert set(A.FLAG_PATHS) <= set(modes) and "float32_matmul_precision" in modes


def test_the_tf32_probe_needs_one_coarse_operation_not_both():
    ieee, tf32 = 1e-7, 1e-3
    # cuDNN picked a convolution without tensor cores, cuBLAS's product took them: the probe tells the modes apart
    checks, notes = A.probe_verdicts(dict(tf32_off=dict(conv=ieee, matmul=ieee), tf32_on=dict(conv=ieee, matmul=tf32),
                                          as_found=dict(conv=tf32, matmul=ieee)), tensor_cores=True)
    assert [ok for _, ok, _, _ in checks] == [True, True]
    assert any("conv computes like IEEE" in n for n in notes) and any("conv like TF32" in n for n in notes)
    # neither coarser: TF32 is not in use, and the IEEE reading proves nothing
    checks, _ = A.probe_verdicts(dict(tf32_off=dict(conv=ieee, matmul=ieee), tf32_on=dict(conv=ieee, matmul=ieee)),
                                 tensor_cores=True)
    assert [ok for _, ok, _, _ in checks] == [True, False]
    # fp32 that is not IEEE with TF32 off fails, and a device without tensor cores has no second check
    checks, _ = A.probe_verdicts(dict(tf32_off=dict(conv=tf32, matmul=ieee)), tensor_cores=False)
    assert [ok for _, ok, _, _ in checks] == [False]


def test_the_headline_ratio_compares_the_same_fp32_math():
    s = dict(typical_w8=[1.0, 1.0, 1.0], typical_w8_ieee=[2.0, 2.0, 2.0], typical_w8_tf32=[1.2, 1.2, 1.2],
             trainer_fp32_nchw=[1.0, 1.0, 1.0], trainer_tf32_channels_last=[0.6, 0.6, 0.6],
             trainer_bf16_channels_last=[0.5, 0.25, 0.5], bare_fp32_nchw=[0.9, 0.9, 0.9])
    kinds = {v: dict(pipeline=v.split("_")[0], precision=v.split("_")[1] if v.startswith(("trainer", "bare"))
                     else "fp32") for v in s}
    r = A.pipeline_ratios(s, kinds, workers=8)
    assert set(r) == {"trainer_fp32_nchw", "trainer_tf32_channels_last", "trainer_bf16_channels_last"}
    # IEEE against IEEE: 2.0 s / 1.0 s, where against torch's defaults (TF32 convolutions) it would read 1.0
    assert r["trainer_fp32_nchw"] == dict(ratio_same_math=2.0, same_math_typical="typical_w8_ieee",
                                          ratio_vs_typical_defaults=1.0)
    assert r["trainer_tf32_channels_last"]["same_math_typical"] == "typical_w8_tf32"
    assert r["trainer_tf32_channels_last"]["ratio_same_math"] == 2.0
    # bf16 has no typical counterpart; against the defaults, the median of the paired repeats
    assert r["trainer_bf16_channels_last"] == dict(ratio_same_math=None, same_math_typical=None,
                                                   ratio_vs_typical_defaults=2.0)


def test_the_budget_keeps_the_later_sections_reserves():
    order, caps = ["a", "b", "c"], dict(a=100, b=100, c=100)
    reserves = dict(a=20, b=30, c=40)
    assert A.section_limit("a", order, caps, reserves, 200) == 100 - 0       # its cap: 200 - 70 leaves it 130
    assert A.section_limit("a", order, caps, reserves, 120) == 50            # 120 less b's and c's reserves
    assert A.section_limit("a", order, caps, reserves, 60) == 20             # late: still its own reserve
    assert A.section_limit("b", order, caps, reserves, 60) == 30
    assert A.section_limit("c", order, caps, reserves, 25) == 25             # the last: what is left
    assert A.section_limit("c", order, caps, reserves, 0) == 0


def test_the_planned_run_fits_its_budget_with_the_compile_rows_early():
    plan = json.loads(_script("--plan").stdout)
    sections = [r["section"] for r in plan["sections"]]
    assert sections == SECTIONS and sections.index("compile") == 1
    assert plan["reserved_s"] <= plan["budget_s"] and plan["spare_s"] >= 0
    # every section's limit covers its reserve when the ones before it took theirs
    assert all(r["limit_s"] >= r["reserve_s"] for r in plan["sections"])
    # the device's command limit is 600 s: gpu_first_run.sh gives the sections 570 s less its set-up
    first_run = (ROOT / "benchmarks" / "gpu_first_run.sh").read_text()
    assert "TOTAL_S=${TOTAL_S:-570}" in first_run and plan["budget_s"] <= 570


def test_the_first_run_command_carries_the_commit_and_survives_a_bad_wheel(tmp_path):
    line = _script("--print-command").stdout.strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    assert line.startswith(f"IDENTITY_STUDY_COMMIT={commit}") and "benchmarks/gpu_first_run.sh" in line
    # a copy of the tree with one bad wheel and a stand-in for python3: the sections still start, told the commit
    tree = tmp_path / "tree"
    (tree / "benchmarks").mkdir(parents=True)
    (tree / "benchmarks" / "gpu_first_run.sh").write_text((ROOT / "benchmarks" / "gpu_first_run.sh").read_text())
    (tree / ".whl").mkdir()
    (tree / ".whl" / "broken-1.0-py3-none-any.whl").write_text("not a zip file")
    fake = tmp_path / "python3"
    fake.write_text(f"#!/bin/sh\nif [ \"$1\" = -m ]; then exec {sys.executable} \"$@\"; fi\n"
                    f"echo \"ran $* with commit $IDENTITY_STUDY_COMMIT\" > {tmp_path / 'ran'}\n")
    fake.chmod(0o755)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(tree / "benchmarks" / "gpu_first_run.sh"), str(out)], capture_output=True,
                          text=True, env={**os.environ, "PY": str(fake), "IDENTITY_STUDY_COMMIT": "abc1234",
                                          "SITE": str(tmp_path / "site")}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ran = (tmp_path / "ran").read_text()
    assert "benchmarks/gpu_acceptance.py --out" in ran and "--budget-s" in ran and "commit abc1234" in ran
    log = (out / "acceptance.log").read_text()
    assert "FAILED: .whl/broken-1.0-py3-none-any.whl" in log and "commit abc1234" in log


# ---------------------------------------------------------------------------------------------------------------
# a section cut at its limit kills every process it started

CHILD = textwrap.dedent("""
    import os, subprocess, sys, time
    pids = sys.argv[1]
    # a grandchild in a session of its own, and an orphan: its shell exits at once, so it leaves the process tree
    g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    subprocess.run(["sh", "-c", f"{sys.executable} -c 'import time; time.sleep(300)' >/dev/null 2>&1 & "
                                f"echo $! >> {pids}"])
    with open(pids, "a") as f:
        f.write(f"{os.getpid()}\\n{g.pid}\\n")
    time.sleep(300)
""")


def _pids(path: Path) -> list:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_a_section_cut_at_its_limit_leaves_no_process_behind(tmp_path):
    pids = tmp_path / "pids"

    def section(ck, tmp):
        subprocess.Popen([sys.executable, "-c", CHILD, str(pids)], start_new_session=True)
        ck.check("started", True)
        time.sleep(300)
    t = time.monotonic()
    res = A.run_section("cut", section, 4, tmp_path / "log")
    assert time.monotonic() - t < 30
    assert res["status"] == "timeout" and res["checks"][0]["ok"]
    started = _pids(pids)
    assert len(started) == 3, started             # the child, its grandchild and the orphan had all started
    assert not [p for p in started if A.alive(p)]
    assert set(started) <= set(res["killed"]) and "survivors" not in res


@pytest.mark.slow
def test_a_papermill_kernel_dies_with_its_section(tmp_path):
    "The issue's case: a notebook section cut at its limit left its kernel training."
    import nbformat
    pids = tmp_path / "kernel.pid"
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        f"import os, time\nopen({str(pids)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)")])
    nb.metadata["kernelspec"] = dict(name="python3", display_name="Python 3", language="python")
    nbformat.write(nb, tmp_path / "sleep.ipynb")

    def section(ck, tmp):
        A.run_killable([sys.executable, "-m", "papermill", str(tmp_path / "sleep.ipynb"), str(tmp_path / "o.ipynb"),
                        "--no-progress-bar"], 600)
    res = A.run_section("notebook", section, 40, tmp_path / "log")
    kernel = _pids(pids)
    assert res["status"] == "timeout" and kernel, (res, (tmp_path / "log").read_text()[-2000:])
    assert not A.alive(kernel[0]) and kernel[0] in res["killed"]


def test_a_command_cut_at_its_timeout_leaves_no_process_behind(tmp_path):
    pids = tmp_path / "pids"
    rc, out = A.run_killable([sys.executable, "-c", CHILD, str(pids)], 3)
    started = _pids(pids)
    assert rc is None and len(started) == 3 and not [p for p in started if A.alive(p)]


def test_the_process_walk_finds_a_child_and_its_cpu_time():
    "_common's walk of /proc, which the section kills and the benchmarks' CPU accounting share."
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        table = C.process_table()
        assert child.pid in C.descendants({os.getpid()}, table) and table[child.pid][1] == os.getpid()
        assert C.descendants({-1}, table) == set()
    finally:
        child.kill()
        child.wait()


# ---------------------------------------------------------------------------------------------------------------
# the checks of the proof sections, on a record of the package's own

@pytest.fixture(scope="module")
def tiny_record(tmp_path_factory):
    from identity_study.train import train
    record = train(depth=8, dataset="synthetic", iterations=4, eval_every=2, batch_size=16, train_subset=64,
                   deterministic=True, progress=False, device="cpu", precision="fp32",
                   run_dir=tmp_path_factory.mktemp("runs"))
    return record.path


def test_a_notebook_run_is_judged_by_its_record(tiny_record):
    ck = A.Checks("smoke", None)
    record = A.check_notebook_run(ck, 0, "", tiny_record.parent)
    assert record.run_id == tiny_record.name and [c["ok"] for c in ck.result["checks"]] == [True] * 4
    failed = A.Checks("smoke", None)
    assert A.check_notebook_run(failed, 1, "ValueError: unit 'nope'", tiny_record.parent) is None
    assert failed.result["checks"][0]["value"] == "exit 1: ValueError: unit 'nope'"


def test_a_resumed_record_differs_from_a_straight_one_only_where_it_does(tiny_record, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(tiny_record, copy)
    assert A.run_differences(tiny_record, copy) == []
    metrics = (copy / "metrics.csv").read_text().splitlines()
    first = metrics[1].split(",")
    first[3] = "9.99"                                           # train_loss of the first row
    (copy / "metrics.csv").write_text("\n".join([metrics[0], ",".join(first), *metrics[2:]]) + "\n")
    assert A.run_differences(tiny_record, copy) == ["metrics.csv"]


def test_the_versions_are_the_run_records_own():
    assert A.versions("cpu") == dict(cudnn=None, nccl=None, driver=None)


# ---------------------------------------------------------------------------------------------------------------
# every section at toy size

@pytest.mark.slow
def test_every_section_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    proc = _script("--device", "cpu", "--tiny", "--out", str(out), timeout=600)
    log = (out / "acceptance.log").read_text() if (out / "acceptance.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + log[-4000:]

    assert {p.name for p in out.iterdir()} == FILES            # what comes back from a lent machine: these seven
    checks = json.loads((out / "checks.json").read_text())
    assert list(checks["sections"]) == SECTIONS
    assert len(checks["attempts"]) == 1 and checks["attempts"][0]["device"] == "cpu"
    for name, res in checks["sections"].items():
        assert res["status"] == "ok", (name, res)
        assert res["checks"] and all(c["ok"] for c in res["checks"]), (name, res["checks"])
        assert res["attempt"] == 0 and "survivors" not in res, (name, res)

    env_info = json.loads((out / "env.json").read_text())
    probe = env_info["tf32_probe_max_rel_error"]["tf32_off"]
    assert 0 < probe["conv"] < 1e-5 and 0 < probe["matmul"] < 1e-5

    rows = _rows(out / "throughput.csv")
    assert [r["section"] for r in rows][0] == "compile"          # the compile rows first, as measured
    assert {r["section"] for r in rows} == {"throughput", "resnet1001", "compile"}
    for column in MACHINE + ["net", "variant", "precision", "layout", "status", "images_per_second"]:
        assert column in rows[0], column
    assert all(r["device_name"] and r["torch"] and r["status"] == "ok" for r in rows)
    variants = {r["variant"] for r in rows if r["section"] == "throughput"}
    assert {"trainer_fp32_nchw", "trainer_fp32_channels_last", "trainer_bf16_nchw", "trainer_bf16_channels_last",
            "bare_fp32_nchw", "typical_w1", "typical_w1_ieee", "typical_bare"} <= variants
    trainer = {r["variant"]: r for r in rows if r["section"] == "throughput" and r["pipeline"] == "trainer"}
    assert all(float(r["ratio_vs_typical_defaults"]) > 0 and 0 < float(r["device_busy"]) <= 1.05
               for r in trainer.values())
    assert trainer["trainer_fp32_nchw"]["same_math_typical"] == "typical_w1_ieee"
    assert float(trainer["trainer_fp32_nchw"]["ratio_same_math"]) > 0
    assert trainer["trainer_bf16_channels_last"]["ratio_same_math"] == ""
    compiled = [r for r in rows if r["section"] == "compile"]
    assert [r["variant"] for r in compiled] == ["model", "units"]       # CUDA graphs need a GPU
    assert all(r["recompiles"] != "" and r["recompile_limit_hits"] == "0" for r in compiled)

    metrics = _rows(out / "sanity_metrics.csv")
    for column in MACHINE + ["iteration", "train_loss", "test_error", "precision", "channels_last"]:
        assert column in metrics[0], column


def test_gpu_throughput_writes_its_rows_where_they_come_back(tmp_path):
    "Under --out (a lent machine brings back only its $OUT), each run's rows once, however often --out is reused."
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_throughput.py"), "--device", "cpu",
                               "--tiny", "--sections", "resnet1001", "--out", str(out)], capture_output=True,
                              text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = _rows(out / "results_gpu.csv")
    assert len(rows) == 8 and {r["section"] for r in rows} == {"resnet1001"}     # 2 runs x 4 configurations


def test_a_copy_without_git_records_the_commit_it_is_told(monkeypatch):
    "A lent GPU machine's copy of the tree has no .git: its records carry the commit the command passed."
    import identity_study.records as R

    def no_git(*a, **k):
        raise OSError("no git here")
    monkeypatch.setattr(R.subprocess, "run", no_git)
    monkeypatch.setenv("IDENTITY_STUDY_COMMIT", "0123abc-dirty")
    p = R.provenance("cpu")
    assert (p["git_commit"], p["git_dirty"]) == ("0123abc", True)
    monkeypatch.setenv("IDENTITY_STUDY_COMMIT", "0123abc")
    assert (R.provenance("cpu")["git_commit"], R.provenance("cpu")["git_dirty"]) == ("0123abc", False)
    monkeypatch.delenv("IDENTITY_STUDY_COMMIT")
    assert R.provenance("cpu")["git_commit"] is None
