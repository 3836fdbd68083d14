"""What each table costs at the paper profile: runs, images, GPU-hours (an estimate) and hours on this project's CPU.

    .venv/bin/python scripts/slurm/cost.py          # the table of the README's "On a cluster", in Markdown

How the numbers are made (printed under the table too):

* runs and images: every run of the table at `--profile paper --seeds 5` (`identity_study.experiments.configs`),
  images = iterations x batch size of each;
* training FLOPs per image: 3x the forward FLOPs of the run's own net, counted by `torch.utils.flop_counter` on one
  image (the backward pass is about twice the forward);
* GPU-hours, an **estimate**: no GPU throughput has been measured in this repository (benchmarks/gpu_throughput.py is
  ready for it). The estimate is anchored on the only GPU times there are, the paper's own (its text on
  computational cost: ResNet-1001 on CIFAR takes about 27 h on 2 GPUs, ResNet-200 on ImageNet about 3 weeks on
  8 GPUs, 2016 GPUs), scaled by each run's FLOPs x images. A current GPU is several times faster than those, so
  these are upper figures;
* CPU hours: measured where the repository has it (benchmarks/results_cpu_summary.csv: the trainer's images per second
  for pre-act ResNet-110 and -164, batch 128, on the 2-core machine of this project, native-bf16 class), the other nets
  scaled by FLOPs from the ResNet-164 measurement.
"""
from __future__ import annotations

import csv
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[2]
from identity_study.experiments import TABLES, configs  # noqa: E402
from identity_study.models import build  # noqa: E402
from identity_study.params import resolve  # noqa: E402

# the paper's GPU times (its text on computational cost): (depth, data set family, GPU-hours of one run)
ANCHORS = {"cifar": (1001, "cifar10", 27 * 2), "imagenet": (200, "imagenet", 21 * 24 * 8)}
_flops = {}


def train_flops(p: dict, spec) -> float:
    "Training FLOPs per image of a run's net: 3x its forward FLOPs on one image."
    key = (p["unit"], p["depth"], p["block"], p["dataset"], p.get("crop"))
    if key not in _flops:
        size = p.get("crop") or 32
        model = build(spec).eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, size, size))
        _flops[key] = 3.0 * counter.get_total_flops()
    return _flops[key]


def measured_cpu_ips() -> dict:
    "{depth: images/s} of the trainer, pre-act, batch 128, native-bf16 CPU class: the newest measurement of each."
    found = {}
    with open(ROOT / "benchmarks" / "results_cpu_summary.csv") as f:
        for row in csv.DictReader(f):
            if row.get("native_bf16") == "True" and row["net"].startswith("preact-"):
                found[int(row["net"].split("-")[1])] = float(row["project_ips"])
    return found


def runs(table: str):
    for c in configs(table, "paper", 5):
        c.pop("entry")
        p, spec = resolve(**c, precision="bf16", device="cpu")
        yield p, spec


def main():
    anchors = {}
    for family, (depth, dataset, hours) in ANCHORS.items():
        p, spec = resolve(unit="preact", depth=depth, dataset=dataset, profile="paper", device="cpu")
        anchors[family] = hours / (p["iterations"] * p["batch_size"] * train_flops(p, spec))
    cpu = measured_cpu_ips()
    p164, spec164 = resolve(unit="preact", depth=164, dataset="cifar10", profile="paper", device="cpu")
    flops_per_cpu_second = cpu[164] * train_flops(p164, spec164)
    print("| table | runs | images (millions) | training PFLOPs | GPU-hours (estimate) | hours on this 2-core CPU |")
    print("|---|---|---|---|---|---|")
    seen_all = {}
    for table in TABLES:
        n = images = flops = gpu_h = cpu_h = 0.0
        for p, spec in runs(table):
            family = "imagenet" if p["dataset"] in ("imagenet", "tiny_imagenet") else "cifar"
            img = p["iterations"] * p["batch_size"]
            f = train_flops(p, spec)
            n, images, flops = n + 1, images + img, flops + img * f
            gpu_h += anchors[family] * img * f
            measured = cpu.get(p["depth"]) if p["unit"] == "preact" and family == "cifar" else None
            hours = img / measured / 3600 if measured else img * f / flops_per_cpu_second / 3600
            cpu_h += hours
            seen_all[p["run_id"]] = (img, img * f, anchors[family] * img * f, hours)
        print(f"| {table} | {int(n)} | {images / 1e6:,.0f} | {flops / 1e15:,.0f} | {gpu_h:,.0f} | {cpu_h:,.0f} |")
    total = [sum(v[i] for v in seen_all.values()) for i in range(4)]
    print(f"| all (each run once) | {len(seen_all)} | {total[0] / 1e6:,.0f} | {total[1] / 1e15:,.0f} | "
          f"{total[2]:,.0f} | {total[3]:,.0f} |")
    print()
    print(f"Anchors: {', '.join(f'{k}: ResNet-{d} {h:,} GPU-h' for k, (d, _, h) in ANCHORS.items())}; "
          f"CPU measured: {', '.join(f'ResNet-{d} {v:.0f} img/s' for d, v in sorted(cpu.items()))}")


if __name__ == "__main__":
    main()
