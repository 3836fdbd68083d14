"""A run beside another busy process on a small CPU: what the thread count does to both, and what the trainer's
default (threads chosen by the load, `identity_study.train.CpuThreads`) picks.

The run: the mini profile's shape (pre-act ResNet-110 at half width, batch 64) through the trainer's own
`train_step`, in the precision and layout `train()` resolves to on this machine. The neighbour: a second process
training the same net with one thread, as a second sweep lane or another user's job would. Settings, each timed for
--seconds after a warm-up, with the neighbour (re)started before each:
  quiet-all       no neighbour, every core (the best case)
  busy-all        neighbour running, every core: what a run that takes all cores blindly gets
  busy-minus-one  neighbour running, one thread fewer than cores
  busy-auto       neighbour running, threads=None: CpuThreads measures the load and chooses
Reported per setting: the run's images/s, the neighbour's images/s over the same window, the threads used.

  .venv/bin/python benchmarks/contention.py             # ~3 min on 2 cores
Rows go to benchmarks/contention.csv.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from _common import ROOT, append_csv, machine, table, warn_if_busy
from identity_study.models import resnet
from identity_study.params import resolve_channels_last, resolve_precision
from identity_study.train import CpuThreads, autocast_for, train_step

PRECISION = resolve_precision("auto", "cpu")
CHANNELS_LAST = resolve_channels_last("auto", "cpu", PRECISION)


def trainer(depth: int, width: int, batch: int):
    "A closure doing one training step of the run's net, and the batch size."
    torch.manual_seed(0)
    fmt = torch.channels_last if CHANNELS_LAST else torch.contiguous_format
    net = resnet("preact", depth, width=width).to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    autocast = autocast_for("cpu", PRECISION)
    return lambda: train_step(net, opt, x, y, autocast, fmt)


def images_per_second(step, batch: int, seconds: float) -> float:
    n, t = 0, time.perf_counter()
    while time.perf_counter() - t < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - t)


def neighbour_main(depth, width, batch, seconds, out):
    "The neighbour process: one thread, steps until told to stop, then writes its images/s over its timed window."
    torch.set_num_threads(1)
    step = trainer(depth, width, batch)
    step()
    open(out + ".ready", "w").close()
    with open(out, "w") as f:
        f.write(str(images_per_second(step, batch, seconds)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--depth", type=int, default=110)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=25.0, help="timed window per setting")
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "contention.csv"))
    ap.add_argument("--neighbour", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.neighbour:
        return neighbour_main(args.depth, args.width, args.batch_size, args.seconds + 6, args.neighbour)
    os.environ.pop("OMP_NUM_THREADS", None)     # the default rule, not a fixed count from the environment
    load = warn_if_busy("contention figures")
    cores = len(CpuThreads().cores)
    step = trainer(args.depth, args.width, args.batch_size)
    rows = []
    for setting in ("quiet-all", "busy-all", "busy-minus-one", "busy-auto"):
        proc, out = None, str(ROOT / "benchmarks" / f".contention-{os.getpid()}.tmp")
        if setting.startswith("busy"):
            proc = subprocess.Popen([sys.executable, __file__, "--neighbour", out, "--depth", str(args.depth),
                                     "--width", str(args.width), "--batch-size", str(args.batch_size),
                                     "--seconds", str(args.seconds)])
            while not os.path.exists(out + ".ready"):
                time.sleep(0.1)
        threads = {"quiet-all": cores, "busy-all": cores, "busy-minus-one": max(1, cores - 1)}.get(setting)
        threads = CpuThreads(threads).start()          # busy-auto: measured and chosen here
        for _ in range(2):
            step()
        ips = images_per_second(step, args.batch_size, args.seconds)
        other = None
        if proc:
            proc.wait()
            other = float(open(out).read())
            os.remove(out), os.remove(out + ".ready")
        rows.append(dict(machine(), precision=PRECISION, load1_at_start=load, net=f"preact-{args.depth}",
                         width=args.width, batch_size=args.batch_size, setting=setting, threads=threads,
                         images_per_second=round(ips, 1),
                         neighbour_images_per_second=round(other, 1) if other else None))
        print(f"{setting:>15}: {threads} thread(s), run {ips:6.1f} img/s, neighbour "
              f"{'-' if other is None else f'{other:.1f}'} img/s", flush=True)
    append_csv(args.csv, rows)
    print(table(rows, ["setting", "threads", "images_per_second", "neighbour_images_per_second"]))


if __name__ == "__main__":
    main()
