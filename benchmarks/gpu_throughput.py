"""GPU training throughput, peak memory up to ResNet-1001, and torch.compile: the throughput, resnet1001 and compile
sections of gpu_acceptance.py (one code path), their rows appended to results_gpu.csv.

  PYTHONPATH=. python3 benchmarks/gpu_throughput.py                  # the three sections on one GPU, a few minutes
  PYTHONPATH=. python3 benchmarks/gpu_throughput.py --sections compile   # one of them
  .venv/bin/python benchmarks/gpu_throughput.py --device cpu --tiny --csv benchmarks/x.local.csv   # dry run, ~30 s

throughput: the trainer's own step for pre-act ResNet-110 and -164 at batch 128 in fp32 (the default: IEEE) and bf16
(and tf32 where the trainer has it), NCHW and channels_last, beside a typical DataLoader pipeline and the bare
steps; resnet1001: peak memory, step time and the 64k iterations projected, pre-act and original, fp32 and bf16;
compile: torch.compile, mode="reduce-overhead" and regional compilation (Module.compile per residual unit), with
the recompile count and the recompile-limit hits. gpu_acceptance.py's docstring and benchmarks/README.md say more.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import _common  # noqa: F401  (puts the source tree on sys.path)
import gpu_acceptance

from _common import ROOT, append_csv

PERF_SECTIONS = ("throughput", "resnet1001", "compile")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", default=list(PERF_SECTIONS), choices=PERF_SECTIONS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (a dry run of the same code, e.g. on a CPU)")
    ap.add_argument("--budget-s", type=float, default=450, help="wall-time budget of the sections, in seconds")
    ap.add_argument("--out", help="keep gpu_acceptance's files (checks.json, throughput.csv, log) here")
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "results_gpu.csv"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
        out = Path(args.out or tmp)
        code = gpu_acceptance.main(["--only", ",".join(args.sections), "--out", str(out), "--device", args.device,
                                    "--budget-s", str(args.budget_s), *(["--tiny"] if args.tiny else [])])
        path = out / gpu_acceptance.THROUGHPUT_CSV
        rows = gpu_acceptance.read_csv(path) if path.exists() else []
        if rows:
            print(f"appended {len(rows)} rows to {append_csv(args.csv, rows)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
