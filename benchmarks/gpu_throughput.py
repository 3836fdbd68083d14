"""GPU training throughput, peak memory up to ResNet-1001, and torch.compile: the throughput, resnet1001 and compile
sections of gpu_acceptance.py (one code path), their rows appended to results_gpu.csv.

  PYTHONPATH=. python3 benchmarks/gpu_throughput.py --out $OUT      # the three sections on one GPU, a few minutes
  PYTHONPATH=. python3 benchmarks/gpu_throughput.py --sections compile --out $OUT   # one of them
  .venv/bin/python benchmarks/gpu_throughput.py --device cpu --tiny --csv benchmarks/x.local.csv   # dry run, ~30 s

With --out the rows go to OUT/results_gpu.csv (a lent machine brings back only what is under its $OUT: append them to
benchmarks/results_gpu.csv here); without it, to benchmarks/results_gpu.csv.

throughput: the trainer's own step for pre-act ResNet-164 and -110 at batch 128 in fp32 (the default: IEEE) and bf16
(and tf32 where the trainer has it), NCHW and channels_last, beside a typical DataLoader pipeline (under the same fp32
math, and under torch's defaults) and the bare steps; resnet1001: peak memory after the warm-up, step time and the
64k iterations projected, pre-act and original, fp32 and bf16; compile: torch.compile with CUDA graphs
(mode="reduce-overhead"), as the trainer compiles, and per residual unit (Module.compile), with the recompile count
and the recompile-limit hits. gpu_acceptance.py's docstring and benchmarks/README.md say more.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import gpu_acceptance

from _common import ROOT, append_csv

PERF_SECTIONS = ("throughput", "resnet1001", "compile")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", default=list(PERF_SECTIONS), choices=PERF_SECTIONS)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="toy sizes (a dry run of the same code, e.g. on a CPU)")
    ap.add_argument("--budget-s", type=float, default=450, help="wall-time budget of the sections, in seconds")
    ap.add_argument("--compile-rows", help="the compile section's rows (gpu_acceptance.py --compile-rows)")
    ap.add_argument("--out", help="keep gpu_acceptance's files (checks.json, throughput.csv, log) here")
    ap.add_argument("--csv", help="where the rows are appended (default: OUT/results_gpu.csv with --out, else "
                                  "benchmarks/results_gpu.csv)")
    args = ap.parse_args(argv)
    if args.csv is None:
        args.csv = str(Path(args.out) / "results_gpu.csv") if args.out else str(ROOT / "benchmarks" / "results_gpu.csv")
    with tempfile.TemporaryDirectory(prefix="gpu-throughput-") as tmp:
        out = Path(args.out or tmp)
        run = ["--only", ",".join(args.sections), "--out", str(out), "--device", args.device, "--budget-s",
               str(args.budget_s), *(["--tiny"] if args.tiny else []),
               *(["--compile-rows", args.compile_rows] if args.compile_rows else [])]
        path = out / gpu_acceptance.THROUGHPUT_CSV
        before = len(gpu_acceptance.A.read_csv(path)) if path.exists() else 0     # a reused --out keeps its rows
        code = gpu_acceptance.main(run)
        rows = gpu_acceptance.A.read_csv(path)[before:] if path.exists() else []
        if rows:
            print(f"appended {len(rows)} rows to {append_csv(args.csv, rows)}")
    return code


if __name__ == "__main__":
    sys.exit(main())
