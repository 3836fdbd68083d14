"benchmarks/gpu_acceptance.py --device cpu --tiny: every section of the GPU acceptance run, at toy size on the CPU."
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ["env", "smoke", "resume", "ddp", "sanity", "throughput", "resnet1001", "compile"]
FILES = {"env.json", "checks.json", "throughput.csv", "sanity_metrics.csv", "smoke.ipynb", "sanity.ipynb",
         "acceptance.log"}
# every CSV row names the device and the versions it was measured with
MACHINE = ["device_name", "torch", "cuda", "cudnn", "nccl", "driver", "git_commit", "timestamp"]


def _rows(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_every_section_runs_tiny_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("IN_TEST", None)
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_acceptance.py"), "--device", "cpu",
                           "--tiny", "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    log = (out / "acceptance.log").read_text() if (out / "acceptance.log").exists() else ""
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:] + log[-4000:]

    assert {p.name for p in out.iterdir()} == FILES            # the device tool brings back at most 8 files
    checks = json.loads((out / "checks.json").read_text())
    assert list(checks["sections"]) == SECTIONS
    for name, res in checks["sections"].items():
        assert res["status"] == "ok", (name, res)
        assert res["checks"] and all(c["ok"] for c in res["checks"]), (name, res["checks"])

    env_info = json.loads((out / "env.json").read_text())
    probe = env_info["tf32_probe_max_rel_error"]["tf32_off"]
    assert 0 < probe["conv"] < 1e-5 and 0 < probe["matmul"] < 1e-5

    rows = _rows(out / "throughput.csv")
    assert {r["section"] for r in rows} == {"throughput", "resnet1001", "compile"}
    for column in MACHINE + ["net", "variant", "precision", "layout", "status", "images_per_second"]:
        assert column in rows[0], column
    assert all(r["device_name"] and r["torch"] and r["status"] == "ok" for r in rows)
    variants = {r["variant"] for r in rows if r["section"] == "throughput"}
    assert {"trainer_fp32_nchw", "trainer_fp32_channels_last", "trainer_bf16_nchw", "trainer_bf16_channels_last",
            "bare_fp32_nchw", "typical_w1", "typical_bare"} <= variants
    trainer = [r for r in rows if r["section"] == "throughput" and r["pipeline"] == "trainer"]
    assert all(float(r["ratio_vs_typical"]) > 0 and 0 < float(r["device_busy"]) <= 1.05 for r in trainer)
    compiled = [r for r in rows if r["section"] == "compile"]
    assert {r["variant"] for r in compiled} == {"model", "units"}       # CUDA graphs need a GPU
    assert all(r["recompiles"] != "" and r["recompile_limit_hits"] == "0" for r in compiled)

    metrics = _rows(out / "sanity_metrics.csv")
    for column in MACHINE + ["iteration", "train_loss", "test_error", "precision", "channels_last"]:
        assert column in metrics[0], column
