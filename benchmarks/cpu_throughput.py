"""CPU training throughput: the project's training step against a typical PyTorch CIFAR pipeline (same net, batch,
optimizer and thread count; one process), plus the bare model step of each, which gives the input pipeline's share.

Variants, measured in turn (project, typical, project_bare, typical_bare[, trainer]) in every repeat:
  project       what identity_study.train does per iteration, with no evaluation, checkpoint or record writing:
                DeviceCifar.batch (CIFAR-10 as one uint8 tensor, per-pixel-mean normalisation, batched
                random_crop_flip), then the trainer's own `train_step` in the precision and memory layout that
                train() resolves to on this machine (precision="auto", channels_last="auto": bf16 + channels_last
                where bf16 is native, fp32 + channels_last elsewhere), and the loss / error sums with their .item()
                (train() syncs every iteration on the CPU)
  typical       torchvision CIFAR10 with PIL RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor and Normalize
                in a DataLoader(shuffle=True, num_workers=W), fp32 NCHW eager, the way most CIFAR repositories do it
  *_bare        the same step on one batch already in memory: the model alone
  trainer       (--trainer) identity_study.train.train() itself, its metrics.csv images_per_second, to check that
                `project` is what the trainer does
Ratio = project / typical images per second, per repeat; the table gives the median over repeats.
Input pipeline share = 1 - bare step time / full step time.
Every row names the CPU class it holds for: cpu_capability (torch's kernel set: AVX2, AVX512, ...) and native_bf16.

--layouts instead times the bare model step in every precision x layout (fp32/bf16 x NCHW/channels_last), the
evidence behind the "auto" rules, into results_cpu_layouts.csv.

To measure the AVX2 class on a newer x86 CPU, cap the instruction sets of oneDNN and of torch's own kernels (the
trainer's precision="auto" then resolves to fp32, as on a real AVX2-only host):
  ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 .venv/bin/python benchmarks/cpu_throughput.py

  .venv/bin/python benchmarks/cpu_throughput.py          # ResNet-20/110/164, 3 repeats: ~15 min on the 2-core CPU
  .venv/bin/python benchmarks/cpu_throughput.py --nets 20 --repeats 1 --steps 2 --warmup 1 --csv benchmarks/x.local.csv
(the second is a smoke run). Needs the rebuilt CIFAR-10 ($IDENTITY_STUDY_DATA or ./data). Run it on a quiet
machine: other_cpu in the CSV is the CPU time (in cores) that other processes took during each measurement, and
should be about 0.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torchvision import transforms

from _common import ROOT, LoadProbe, append_csv, machine, warn_if_busy
from identity_study.data import DeviceCifar, cifar_dataset, load_cifar, normalization_stats
from identity_study.models import resnet
from identity_study.params import resolve_channels_last, resolve_precision
from identity_study.train import autocast_for, train_step

warnings.filterwarnings("ignore", message=".*rebuilt copy.*")   # the rebuilt CIFAR copy is expected here


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def project_step(model, opt, precision: str, channels_last: bool):
    "One iteration of identity_study.train's loop: its train_step, then the loss and error sums read back."
    autocast = autocast_for("cpu", precision)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def step(x, y):
        out, loss = train_step(model, opt, x, y, autocast, memory_format)
        return (loss * len(y)).item(), (out.argmax(1) != y).sum().item()
    return step


def typical_step(model, opt):
    "The usual CIFAR training step: fp32, NCHW, eager, loss and accuracy read back every step."
    def step(x, y):
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item(), out.argmax(1).eq(y).sum().item()
    return step


def time_steps(step, batches, warmup: int, steps: int) -> float:
    "Seconds per step over `steps` steps after `warmup` untimed ones; fetching the batch is part of the step."
    for _ in range(warmup):
        step(*next(batches))
    t = time.perf_counter()
    for _ in range(steps):
        step(*next(batches))
    return (time.perf_counter() - t) / steps


def project_batches(data: DeviceCifar, batch_size: int):
    it = 0
    while True:
        yield data.batch(it, batch_size)
        it += 1


def repeat_forever(batch):
    while True:
        yield batch


def trainer_seconds_per_step(depth, batch_size, warmup, steps, threads) -> float:
    "train() itself: seconds per step from its metrics.csv, leaving out the first (warm-up) interval."
    from identity_study.train import train
    with tempfile.TemporaryDirectory() as tmp:
        rec = train(unit="preact", depth=depth, dataset="cifar10", batch_size=batch_size, iterations=warmup + steps,
                    eval_every=warmup, eval_subset=500, final_eval_subset=500, threads=threads, run_dir=tmp,
                    progress=False)
        m = rec.metrics.iloc[1:]
        iters = m.iteration.diff().fillna(m.iteration.iloc[0] - warmup)
        return float((iters * batch_size / m.images_per_second).sum() / iters.sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", type=int, nargs="+", default=[20, 110, 164], help="pre-act ResNet depths")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats per net (the ratio is their median)")
    ap.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=2,
                    help="untimed steps before each measurement (the DataLoader's start falls in them)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, nargs="+", default=[2],
                    help="DataLoader workers of the typical pipeline; several values give one typical variant each")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (both pipelines)")
    ap.add_argument("--trainer", action="store_true", help="also time identity_study.train.train() itself")
    ap.add_argument("--layouts", action="store_true",
                    help="instead: the bare model step in fp32/bf16 x NCHW/channels_last (results_cpu_layouts.csv)")
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "results_cpu.csv"),
                    help="per-measurement rows; the summary goes to the same name with _summary")
    args = ap.parse_args(argv)

    start_load = warn_if_busy("CPU throughput figures")
    torch.set_num_threads(args.threads)
    env = dict(machine("cpu"), threads=args.threads, load1_at_start=start_load)
    bs = args.batch_size
    if args.layouts:
        return layouts(args, env)
    precision = resolve_precision("auto", "cpu")              # what train() runs in on this machine
    channels_last = resolve_channels_last("auto", "cpu", precision)
    env.update(precision=precision, channels_last=channels_last)
    print(f"{env['device_name']} ({env['cpu_capability']}, native bf16: {env['native_bf16']}): the trainer resolves "
          f"to precision {precision}, channels_last {channels_last}", flush=True)

    train_x, train_y = load_cifar("cifar10", train=True)
    mean, std = normalization_stats(train_x, "per_pixel_mean")            # the paper recipe's normalisation
    device_data = DeviceCifar(train_x, train_y, "cpu", mean, std, augment=True, seed=0)
    ch_mean, ch_std = normalization_stats(train_x, "per_channel")
    typical_set = cifar_dataset("cifar10", train=True)
    typical_set.transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(ch_mean.flatten().tolist(), ch_std.flatten().tolist())])
    loaders = {w: torch.utils.data.DataLoader(typical_set, batch_size=bs, shuffle=True, num_workers=w,
                                              drop_last=True) for w in args.workers}
    synthetic = (torch.randn(bs, 3, 32, 32), torch.randint(0, 10, (bs,)))

    rows, summary = [], []
    for depth in args.nets:
        torch.manual_seed(0)
        fast = resnet("preact", depth, "cifar10").to(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        slow = copy.deepcopy(fast).to(memory_format=torch.contiguous_format)
        fast_step = project_step(fast, sgd(fast), precision, channels_last)
        slow_step = typical_step(slow, sgd(slow))
        variants = {"project": lambda: time_steps(fast_step, project_batches(device_data, bs), args.warmup, args.steps)}
        for w, loader in loaders.items():
            variants[f"typical_w{w}"] = lambda loader=loader: time_steps(slow_step, iter(loader), args.warmup,
                                                                         args.steps)
        variants["project_bare"] = lambda: time_steps(fast_step, repeat_forever(synthetic), args.warmup, args.steps)
        variants["typical_bare"] = lambda: time_steps(slow_step, repeat_forever(synthetic), args.warmup, args.steps)
        if args.trainer:
            variants["trainer"] = lambda: trainer_seconds_per_step(depth, bs, args.warmup, args.steps, args.threads)
        times = {v: [] for v in variants}
        for r in range(args.repeats):
            for name, measure in variants.items():      # interleaved: every variant once per repeat, in turn
                with LoadProbe() as probe:
                    sec = measure()
                times[name].append(sec)
                rows.append(dict(env, net=f"preact-{depth}", variant=name, repeat=r, batch_size=bs,
                                 workers=name[len("typical_w"):] if name.startswith("typical_w") else "",
                                 warmup=args.warmup, steps=args.steps, seconds_per_step=round(sec, 5),
                                 images_per_second=round(bs / sec, 2), **probe.columns()))
                print(f"preact-{depth} repeat {r} {name:>13}: {bs / sec:8.1f} img/s  (other_cpu "
                      f"{probe.other_cpu}, load1 {probe.load_before}->{probe.load_after})", flush=True)
        med = {v: statistics.median(t) for v, t in times.items()}
        s = dict(env, net=f"preact-{depth}", repeats=args.repeats, batch_size=bs, steps=args.steps,
                 project_ips=round(bs / med["project"], 1), project_bare_ips=round(bs / med["project_bare"], 1),
                 typical_bare_ips=round(bs / med["typical_bare"], 1),
                 project_pipeline_share=round(statistics.median(
                     1 - b / f for b, f in zip(times["project_bare"], times["project"])), 3))
        for w in args.workers:
            t = times[f"typical_w{w}"]
            s[f"typical_w{w}_ips"] = round(bs / statistics.median(t), 1)
            s[f"ratio_w{w}"] = round(statistics.median(a / b for a, b in zip(t, times["project"])), 2)
            s[f"typical_w{w}_pipeline_share"] = round(statistics.median(
                1 - b / f for b, f in zip(times["typical_bare"], t)), 3)
        if args.trainer:
            s["trainer_ips"] = round(bs / med["trainer"], 1)
        s["max_other_cpu"] = max((r["other_cpu"] or 0) for r in rows if r["net"] == s["net"])
        summary.append(s)

    env_cols = set(env)
    print(f"\n{env['device_name']} ({env['cpu_capability']}, {precision}), {args.threads} threads, "
          f"torch {env['torch']}, batch {bs}, "
          f"{args.repeats} repeats x {args.steps} steps (+{args.warmup} warm-up); load1 at start {start_load}")
    print(pd.DataFrame([{k: v for k, v in s.items() if k not in env_cols} for s in summary]).to_string(index=False))
    out = append_csv(args.csv, rows)
    append_csv(out.with_name(out.stem + "_summary.csv"), summary)
    print(f"appended {len(rows)} rows to {out} and {len(summary)} to {out.with_name(out.stem + '_summary.csv')}")
    if max(s["max_other_cpu"] for s in summary) > 0.2:
        warnings.warn("other processes used CPU time during the measurements (max_other_cpu > 0.2 cores): "
                      "these figures are not reliable")


def layouts(args, env):
    "The bare model step (one batch in memory) of every precision and layout, interleaved over the repeats."
    bs, synthetic, rows, summary = args.batch_size, None, [], []
    combos = [(prec, cl) for prec in ("fp32", "bf16") for cl in (False, True)]
    for depth in args.nets:
        torch.manual_seed(0)
        base = resnet("preact", depth, "cifar10")
        synthetic = (torch.randn(bs, 3, 32, 32), torch.randint(0, 10, (bs,)))
        times = {c: [] for c in combos}
        for r in range(args.repeats):
            for prec, cl in combos:
                model = copy.deepcopy(base).to(memory_format=torch.channels_last if cl else torch.contiguous_format)
                step = project_step(model, sgd(model), prec, cl)
                with LoadProbe() as probe:
                    sec = time_steps(step, repeat_forever(synthetic), args.warmup, args.steps)
                times[prec, cl].append(sec)
                rows.append(dict(env, net=f"preact-{depth}", precision=prec, channels_last=cl, repeat=r, batch_size=bs,
                                 warmup=args.warmup, steps=args.steps, seconds_per_step=round(sec, 5),
                                 images_per_second=round(bs / sec, 2), **probe.columns()))
                print(f"preact-{depth} repeat {r} {prec} {'channels_last' if cl else 'NCHW':>13}: {bs / sec:8.1f} "
                      f"img/s  (other_cpu {probe.other_cpu})", flush=True)
        for (prec, cl), t in times.items():
            summary.append(dict(net=f"preact-{depth}", precision=prec, channels_last=cl,
                                images_per_second=round(bs / statistics.median(t), 1),
                                vs_fp32_nchw=round(statistics.median(
                                    a / b for a, b in zip(times["fp32", False], t)), 2)))
    print(f"\n{env['device_name']} ({env['cpu_capability']}, native bf16 {env['native_bf16']}), {args.threads} "
          f"threads, batch {bs}, median of {args.repeats} repeats; vs_fp32_nchw = speed over fp32 NCHW")
    print(pd.DataFrame(summary).to_string(index=False))
    csv = Path(args.csv)
    out = append_csv(csv.with_name(csv.stem + "_layouts.csv"), rows)
    print(f"appended {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
