"""What the mini profile's choices cost: single-thread training throughput of the Table 1/2 nets at full and half
width, on this CPU, with the trainer's own step in the precision and layout it resolves to here (bf16 +
channels_last where bf16 is native, fp32 + channels_last elsewhere) and the mini batch of 64.

  .venv/bin/python benchmarks/mini_cost.py                 # ResNet-110 and -164, widths 16 and 8, 3 repeats: ~5 min
  ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/mini_cost.py --widths 8   # AVX2 class
Rows go to benchmarks/mini_cost.csv, each with its CPU class (cpu_capability, native_bf16, precision). Run it on a
quiet machine (other_cpu about 0): chapter 10 quotes it.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from _common import ROOT, LoadProbe, append_csv, machine, table, warn_if_busy
from identity_study.models import resnet
from identity_study.params import resolve_channels_last, resolve_precision
from identity_study.train import autocast_for, train_step

def images_per_second(unit, depth, width, batch, steps, warmup, precision):
    torch.manual_seed(0)
    channels_last = resolve_channels_last("auto", "cpu", precision)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net = resnet(unit, depth, width=width).to(memory_format=memory_format)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    autocast = autocast_for("cpu", precision)

    def step():
        train_step(net, opt, x, y, autocast, memory_format)
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", nargs="+", default=["original:110", "preact:164"], help="unit:depth")
    ap.add_argument("--widths", nargs="+", type=int, default=[16, 8])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", nargs="+", default=["auto"], choices=["auto", "fp32", "bf16"],
                    help="auto: what a mini run trains in on this machine (chapter 5)")
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "mini_cost.csv"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warn_if_busy()
    rows = []
    for repeat in range(args.repeats):          # interleaved: every net and width once per repeat
        for precision in [resolve_precision(p, "cpu") for p in args.precision]:
            for net in args.nets:
                unit, depth = net.split(":")
                for width in args.widths:
                    with LoadProbe() as probe:
                        ips = images_per_second(unit, int(depth), width, args.batch_size, args.steps, args.warmup,
                                                precision)
                    rows.append(dict(machine(), precision=precision, benchmark="mini_cost", unit=unit,
                                     depth=int(depth), width=width, batch_size=args.batch_size, repeat=repeat,
                                     images_per_second=round(ips, 1), **probe.columns()))
    append_csv(args.csv, rows)
    summary = []
    for net in args.nets:
        unit, depth = net.split(":")
        for precision in dict.fromkeys(r["precision"] for r in rows):
            med = {w: statistics.median(r["images_per_second"] for r in rows if r["unit"] == unit and r["precision"]
                                        == precision and r["depth"] == int(depth) and r["width"] == w)
                   for w in args.widths}
            for w in args.widths:
                summary.append(dict(net=f"{unit}-{depth}", precision=precision, width=w, images_per_second=med[w],
                                    speedup_vs_first=round(med[w] / med[args.widths[0]], 2)))
    print(table(summary, ["net", "precision", "width", "images_per_second", "speedup_vs_first"]))


if __name__ == "__main__":
    main()
