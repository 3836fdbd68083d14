"""GPU training throughput and peak memory of pre-act ResNet-110, -164 and -1001 at batch 128 (bf16 autocast,
channels_last, CIFAR-sized data on the device through DeviceCifar.batch), eager and with torch.compile, and the
projected wall time of the paper's 64k iterations (training steps only, no evaluation).

  PYTHONPATH=. python3 benchmarks/gpu_throughput.py        # the issue's measurement: < 8 min on one H100
  .venv/bin/python benchmarks/gpu_throughput.py --device cpu --threads 1 --nets 20 --compile none units \\
      --steps 2 --warmup 2 --csv benchmarks/x.local.csv                # a dry run of the same code on the CPU

Each (compile mode, net) runs in its own subprocess, so that an out-of-memory error, a failed or slow compile, or
one net's allocator state cannot spoil the next; a failure becomes a row with its status, never a crash. The whole
run keeps to --budget-s: a configuration that would start after it is reported as skipped, and one still running at
the deadline is killed and reported as timeout. Compile modes: none (eager); units (`Module.compile` on every
residual unit, "regional compilation": the units of a stage share one compiled graph, 6 graphs in all for
ResNet-164 and for ResNet-1001, so the deep net compiles about as fast as the shallow one); model (`torch.compile`
of the whole net: one large graph, likely minutes for ResNet-1001); model-cudagraphs (the same with
mode="reduce-overhead"). --checkpoint-segments N keeps N activation checkpoints per stage and recomputes the rest in
the backward pass; a run that goes out of memory is retried that way (unless --no-auto-checkpoint). Needs torch,
torchvision and numpy only (identity_study.data imports the last two); runs from the source tree without installing
the package, on PyTorch 2.11 or later.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial

import _common  # noqa: F401  (puts the source tree on sys.path)
import torch

from _common import ROOT, LoadProbe, append_csv, gpu_name_without_cuda_init, machine, table

PAPER_ITERATIONS = 64_000
COMPILE_MODES = ("none", "units", "model", "model-cudagraphs")
COLUMNS = ["net", "compile", "ckpt", "status", "images_per_second", "bare_images_per_second", "data_share", "step_ms",
           "peak_gib", "peak_warmup_gib", "projected_64k_h", "warmup_s", "note"]


def _checkpointed_stage(stage, segments, x):
    from torch.utils.checkpoint import checkpoint_sequential
    return checkpoint_sequential(stage, min(segments, len(stage)), x, use_reentrant=False)


def checkpoint_stages(model, segments: int):
    """Activation checkpointing per stage. Note: the recomputation runs BatchNorm's forward again, which updates its
    running statistics a second time per step: fine for a throughput benchmark, not yet for a training run."""
    for stage in model.stages:
        stage.forward = partial(_checkpointed_stage, stage, segments)


def compiled(model, mode: str):
    if mode == "none":
        return model
    if mode == "units":
        cfg = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):   # one entry per distinct unit shape (about 6 per net)
            if hasattr(cfg, name):
                setattr(cfg, name, max(getattr(cfg, name), 64))
        for unit in model.residual_units():
            unit.compile(dynamic=False)
        return model
    return torch.compile(model, mode="reduce-overhead" if mode == "model-cudagraphs" else None)


def measure(depth: int, compile_mode: str, segments: int, args) -> dict:
    "One configuration, in this process: warm-up steps, timed steps with the data path, timed steps without it."
    from identity_study.data import DeviceCifar, load_cifar, normalization_stats
    from identity_study.models import resnet
    from identity_study.train import autocast_for, train_step      # the trainer's own step (no pandas needed)
    device, bs = args.device, args.batch_size
    cuda = device.startswith("cuda")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if cuda:
        torch.backends.cudnn.benchmark = True        # as identity_study.train does on CUDA
    if args.data == "cifar10":
        images, labels = load_cifar("cifar10", train=True)
    else:                                            # the pixels' values do not change the speed
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (50_000,), generator=g)
    mean, std = normalization_stats(images[:5000], "per_pixel_mean")
    data = DeviceCifar(images, labels, device, mean, std, augment=True, seed=0)

    model = resnet("preact", depth, "cifar10").to(device, memory_format=torch.channels_last)
    if segments:
        checkpoint_stages(model, segments)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    step_model = compiled(model, compile_mode)
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)

    autocast = autocast_for(device, "bf16")

    def step(x, y):    # identity_study.train's iteration in bf16 + channels_last, and the loss sum it keeps
        _, loss = train_step(step_model, opt, x, y, autocast, torch.channels_last)
        loss_sum.add_(loss)

    def timed(batches, n):
        sync()
        t = time.perf_counter()
        for i in range(n):
            step(*batches(i))
        sync()
        return time.perf_counter() - t

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    peak = (lambda: torch.cuda.max_memory_allocated() / 2**30) if cuda else (lambda: None)
    reset = torch.cuda.reset_peak_memory_stats if cuda else (lambda: None)
    reset()
    warm_s = timed(lambda i: data.batch(i, bs), args.warmup)
    peak_warm = peak()
    reset()
    full = timed(lambda i: data.batch(args.warmup + i, bs), args.steps) / args.steps
    peak_steady = peak()
    fixed = data.batch(0, bs)
    bare = timed(lambda i: fixed, args.steps) / args.steps
    loss = loss_sum.item() / (args.warmup + 2 * args.steps)
    return dict(machine(device), status="ok" if loss == loss else "nan loss", images_per_second=bs / full,
                bare_images_per_second=bs / bare, data_share=1 - bare / full, step_ms=1e3 * full,
                peak_gib=peak_steady, peak_warmup_gib=peak_warm, projected_64k_h=PAPER_ITERATIONS * full / 3600,
                warmup_s=warm_s, mean_loss=loss,
                device_memory_gib=torch.cuda.get_device_properties(device).total_memory / 2**30 if cuda else None)


def run_child(argv, config: dict, timeout: float) -> dict:
    "measure() in a subprocess (its own process group, so that a timeout also ends its compile workers)."
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--one", json.dumps(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return dict(status="timeout", note=f"killed at the time budget after {timeout:.0f} s")
    for line in out.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = [ln for ln in err.strip().splitlines() if ln.strip()][-1:] or [f"exit status {proc.returncode}"]
    return dict(status="failed", note=tail[0][:300])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nets", type=int, nargs="+", default=[110, 164, 1001], help="pre-act ResNet depths")
    ap.add_argument("--compile", nargs="+", default=["none", "units", "model"], choices=COMPILE_MODES,
                    help="compile modes, run in this order (all nets of one mode before the next mode)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation, cudnn autotuning)")
    ap.add_argument("--steps", type=int, default=50, help="timed steps, with and again without the data path")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, help="torch CPU threads (for --device cpu dry runs; default: torch's)")
    ap.add_argument("--data", choices=("random", "cifar10"), default="random",
                    help="random uint8 images (no data set needed) or the real CIFAR-10 training set")
    ap.add_argument("--checkpoint-segments", type=int, default=0, help="activation checkpoints per stage; 0: off")
    ap.add_argument("--no-auto-checkpoint", dest="auto_checkpoint", action="store_false",
                    help="do not retry an out-of-memory run with 10 checkpoint segments per stage")
    ap.add_argument("--budget-s", type=float, default=450, help="wall-time budget of the whole run, in seconds")
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "results_gpu.csv"))
    ap.add_argument("--one", help=argparse.SUPPRESS)        # internal: measure one configuration, print RESULT
    args = ap.parse_args(argv)

    if args.one:
        c = json.loads(args.one)
        try:
            res = measure(c["depth"], c["compile"], c["segments"], args)
        except torch.cuda.OutOfMemoryError as e:
            res = dict(status="oom", note=str(e).splitlines()[0][:300])
        print("RESULT " + json.dumps(res), flush=True)
        return

    env = machine("cpu")                  # the parent never touches CUDA: the children get the whole GPU
    if args.device.startswith("cuda"):
        env["device_name"] = gpu_name_without_cuda_init() or args.device
    deadline = time.monotonic() + args.budget_s
    rows = []
    for mode in args.compile:
        for depth in args.nets:
            config = dict(depth=depth, compile=mode, segments=args.checkpoint_segments)
            while True:
                left = deadline - time.monotonic()
                with LoadProbe() as probe:
                    res = (run_child(argv, config, left) if left > 20 else
                           dict(status="skipped", note="time budget spent"))
                row = dict(env, net=f"preact-{depth}", compile=mode, ckpt=config["segments"],
                           batch_size=args.batch_size, warmup=args.warmup, steps=args.steps, data=args.data,
                           precision="bf16", channels_last=True, **probe.columns())
                rows.append({**row, **res})
                r = rows[-1]
                print(f"{r['net']:>12} compile={mode:<16} ckpt={r['ckpt']:<3} {r['status']:>8}"
                      + (f" {r['images_per_second']:9.0f} img/s  peak {r['peak_gib']} GiB" if r["status"] == "ok"
                         else f" {r.get('note', '')}"), flush=True)
                if res["status"] == "oom" and args.auto_checkpoint and not config["segments"]:
                    config["segments"] = 10
                    continue
                break
    env = rows[-1] if rows else env
    print(f"\n{env.get('device_name', args.device)}, torch {env.get('torch', torch.__version__)}, batch "
          f"{args.batch_size}, bf16 + channels_last, {args.steps} timed steps after {args.warmup}")
    print(table(rows, COLUMNS))
    ok = [r for r in rows if r["status"] == "ok"]
    best = {d: max((r for r in ok if r["net"] == f"preact-{d}"), key=lambda r: r["images_per_second"], default=None)
            for d in args.nets}
    if best.get(164):
        print(f"target ResNet-164 >= 15,000 img/s: {best[164]['images_per_second']:,.0f} ({best[164]['compile']})")
    if best.get(1001):
        b = best[1001]
        print(f"target ResNet-1001 fits in 80 GB and 64k iterations <= 1.5 h: peak {b['peak_gib']:.1f} GiB, "
              f"{b['projected_64k_h']:.2f} h ({b['compile']}, checkpoint segments {b['ckpt']})")
    print(f"appended {len(rows)} rows to {append_csv(args.csv, rows)}")


if __name__ == "__main__":
    main()
