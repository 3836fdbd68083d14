"""The study's GPU path proved, and its numbers taken, in one command: eight sections, each in its own process with its
own time limit, each writing its result the moment it ends, in the order of their value.

  IDENTITY_STUDY_COMMIT=<commit> bash benchmarks/gpu_first_run.sh OUT   # a lent GPU: set-up and every section, <= 570 s
  PYTHONPATH=. python3 benchmarks/gpu_acceptance.py --print-command     # that line, the commit filled in
  PYTHONPATH=. python3 benchmarks/gpu_acceptance.py --out OUT --only compile   # rerun some sections (the rest kept)
  .venv/bin/python benchmarks/gpu_acceptance.py --device cpu --tiny --out /tmp/acc   # the same code on a CPU, ~1 min

Sections, in this order (the most valuable first: the numbers only a GPU gives, then the proofs):
  env         GPU, clocks (nvidia-smi), versions (torch, CUDA, cuDNN, NCCL, driver), TF32 flags, and a TF32 probe:
              a float32 convolution and matrix product against float64, under the flags as found, with TF32 off
              and with TF32 on
  compile     torch.compile of the trainer's step, one row at a time, each written as it completes: pre-act
              ResNet-164 with CUDA graphs (mode="reduce-overhead", where the 15k images/s target lives), then as the
              trainer compiles it (compile=True), then ResNet-1001 compiled per unit: compile time, throughput, loss
              agreement with eager, recompiles and recompile-limit hits
  throughput  the trainer's step (fp32/bf16[/tf32] x NCHW/channels_last) beside a typical DataLoader pipeline under
              the same fp32 math and under torch's defaults, and the bare steps, interleaved repeats, the share of time
              the GPU is busy; ResNet-164, then ResNet-110 where the section's time allows
  resnet1001  ResNet-1001, pre-act and original, fp32 and bf16: peak memory after the warm-up, step time, 64k
              iterations projected
  smoke       papermill nbs/train.ipynb, smoke profile, every other parameter at its default (device auto)
  sanity      a short real run through papermill (pre-act ResNet-164, 2,000 iterations): test error <= 30 %
  resume      train straight through vs stop_after + resume (deterministic): weights, optimiser, generators and
              metrics bit for bit; pre-act ResNet-20 in fp32 and bf16 (and tf32), and the dropout shortcut
  ddp         torchrun: one NCCL process, then two processes (NCCL on two GPUs, gloo on CUDA tensors on one)
Files in --out (never more than these seven): env.json, checks.json, throughput.csv (rows of compile, throughput and
resnet1001), sanity_metrics.csv, smoke.ipynb, sanity.ipynb, acceptance.log. --tiny runs every section at toy size
(depth 8, a few steps, gloo for NCCL, compile with the aot_eager backend on a CPU), as tests/test_gpu_acceptance.py
does. The checks, and the five sections that prove rather than time (env, smoke, sanity, resume, ddp), are in
acceptance_checks.py; this file holds the timing sections (compile, throughput, resnet1001) and the driver. Needs
papermill and ipykernel for the two notebook sections (benchmarks/README.md: preparing a GPU machine; there too, each
section's expected time on an H100). identity_study is imported as installed or from PYTHONPATH=. (gpu_first_run.sh
sets it).
"""
from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

import acceptance_checks as A
import identity_study.models  # noqa: F401  (imported once here: the forked sections inherit them)
import identity_study.params  # noqa: F401
import identity_study.train  # noqa: F401
from _common import ROOT, append_csv, commit_and_dirty, gpu_name_without_cuda_init, table
from acceptance_checks import CHECKS_JSON, LOG, THROUGHPUT_CSV, Ctx, ensure_cifar10, layout_name, tf32_available, \
    trainer_defaults

SECTIONS = ("env", "compile", "throughput", "resnet1001", "smoke", "sanity", "resume", "ddp")
PAPER_ITERATIONS = 64_000
MIN_SECTION_S = 15          # a section with less time than this left is skipped, not started to be killed
COMPILE_ROWS = ("model-cudagraphs", "model", "units")

FULL = dict(
    # benchmarks/gpu_first_run.sh gives the sections what is left of 570 s after its set-up; run directly, 540 s
    budget_s=540,
    # reserves: each section's expected seconds on one H100 (benchmarks/README.md, "Time on an H100: an estimate",
    # from acceptance_estimate.py), kept for it while earlier sections run; caps: the most a section may take
    # (throughput's: CIFAR-10 rebuilt and ResNet-164; ResNet-110 runs only in what is left of its cap)
    reserves=dict(env=10, compile=215, throughput=80, resnet1001=25, smoke=20, sanity=75, resume=20, ddp=25),
    caps=dict(env=60, compile=240, throughput=150, resnet1001=90, smoke=120, sanity=180, resume=120, ddp=150),
    smoke=dict(),
    resume=dict(depth=20, dataset="synthetic", iterations=12, eval_every=4, stop_after=6, batch_size=64,
                train_subset=1024),
    ddp=dict(depth=20, dataset="synthetic", iterations=6, eval_every=3, batch_size=32, train_subset=512, timeout=90,
             one_process=True),
    # the paper's schedule compressed into 2,000 iterations: steps at 1/2 and 3/4, a short warm-up at 0.01
    sanity=dict(params=dict(depth=164, iterations=2000, lr_steps="[1000, 1500]", warmup_iterations=50,
                            eval_every=500, eval_subset=2000, progress=False), max_error=0.30),
    # ResNet-110 only when the section's time left allows it (its first net's time again, and a fifth)
    throughput=dict(nets=[164, 110], batch_size=128, repeats=3, warmup=5, steps=20, busy_steps=5, workers=8),
    resnet1001=dict(depth=1001, batch_size=128, warmup=2, steps=5),
    compile=dict(configs=[("model-cudagraphs", 164), ("model", 164), ("units", 1001)], batch_size=128,
                 agree_steps=5, warmup=3, steps=20, min_row_s=30),
    probe=dict(n=32, c=64, hw=32, m=1024),
)
# toy sizes: every section's code at pre-act ResNet-8 (the smallest net: one unit per stage), a few steps
TINY = dict(
    budget_s=400,
    reserves=dict(env=5, compile=15, throughput=15, resnet1001=5, smoke=15, sanity=15, resume=10, ddp=20),
    caps=dict(env=60, compile=150, throughput=120, resnet1001=90, smoke=150, sanity=150, resume=120, ddp=150),
    smoke=dict(depth=8),
    resume=dict(depth=8, dataset="synthetic", iterations=4, eval_every=2, stop_after=3, batch_size=16,
                train_subset=128),
    # gloo with one process would prove nothing that the two-process run does not
    ddp=dict(depth=8, dataset="synthetic", iterations=4, eval_every=2, batch_size=16, train_subset=128, timeout=90,
             one_process=False),
    sanity=dict(params=dict(depth=8, iterations=8, batch_size=32, lr_steps="[4, 6]", warmup_iterations=0,
                            eval_every=4, train_subset=1024, eval_subset=128, final_eval_subset=128, progress=False),
                max_error=None),
    throughput=dict(nets=[8], batch_size=8, repeats=3, warmup=1, steps=1, busy_steps=1, workers=1),
    resnet1001=dict(depth=8, batch_size=8, warmup=1, steps=2),
    compile=dict(configs=[("model-cudagraphs", 8), ("model", 8), ("units", 8)], batch_size=8, agree_steps=2,
                 warmup=1, steps=2, min_row_s=5),
    probe=dict(n=4, c=16, hw=16, m=256),
)

warnings.filterwarnings("ignore", message=".*rebuilt copy.*")   # the JPEG-rebuilt CIFAR copy is expected here


# ---------------------------------------------------------------------------------------------------------------
# compile, throughput, resnet1001

def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)


def trainer_step(model, precision: str, channels_last: bool, device: str):
    "identity_study.train's iteration: its train_step, the device-side loss and error sums, a host read every 25."
    from identity_study.train import autocast_for, train_step
    opt, autocast = sgd(model), autocast_for(device, precision)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    sums = torch.zeros(2, device=device, dtype=torch.float64)
    every = 25 if device.startswith("cuda") else 1        # the trainer's check_every
    count = itertools.count(1)

    def step(x, y):
        out, loss = train_step(model, opt, x, y, autocast, memory_format)
        sums[0] += loss * len(y)
        sums[1] += (out.argmax(1) != y).sum()
        if next(count) % every == 0:
            step.losses.append(sums[0].item())
    step.losses = []
    step.last = lambda: sums[0].item()
    return step


def typical_step(model, device: str):
    "The usual CIFAR step: fp32, NCHW, eager, the batch copied in, loss and accuracy read back every step."
    opt = sgd(model)

    def step(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step.losses.append(loss.item())
        out.argmax(1).eq(y).sum().item()
    step.losses = []
    step.last = lambda: step.losses[-1] if step.losses else float("nan")
    return step


def run_steps(ctx: Ctx, step, batches, n: int) -> float:
    "Seconds for `n` steps, the device synchronised before and after; fetching the batch is part of the step."
    ctx.sync()
    t = time.perf_counter()
    for _ in range(n):
        step(*next(batches))
    ctx.sync()
    return time.perf_counter() - t


def device_busy(ctx: Ctx, step, batches, n: int) -> float | None:
    """The share of wall time the device is running work over `n` steps: the union of its kernels' (on a CPU: torch
    ops') intervals in a torch.profiler trace over the wall time. The profiler's own cost makes it a lower bound."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    activity, kind = (ProfilerActivity.CUDA, DeviceType.CUDA) if ctx.cuda else (ProfilerActivity.CPU, DeviceType.CPU)
    ctx.sync()
    with profile(activities=[activity]) as prof:
        wall = run_steps(ctx, step, batches, n)
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == kind)
    busy, end = 0.0, -math.inf
    for s, e in spans:
        if e > end:
            busy += e - max(s, end)
            end = e
    return busy / 1e6 / wall if spans else None


def endless(loader):
    while True:
        yield from loader


class DynamoWatch(logging.Handler):
    """Counts, from torch's own logs, the recompilations, the recompile-limit hits (a code object over the limit
    runs eagerly from then on, with one warning only) and the graphs CUDA graphs skipped."""
    def __enter__(self):
        super().__init__(level=logging.DEBUG)
        self.recompiles = self.limit_hits = self.cudagraph_skips = 0
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        torch._logging.set_logs(recompiles=True)
        self.loggers = [logging.getLogger(n) for n in ("torch._dynamo", "torch._inductor")]
        for lg in self.loggers:
            lg.addHandler(self)
        return self

    def emit(self, record):
        msg = record.getMessage()
        self.recompiles += msg.startswith("Recompiling function")
        self.limit_hits += "hit config." in msg and ("recompile_limit" in msg or "cache_size_limit" in msg)
        self.cudagraph_skips += "skipping cudagraphs" in msg

    def __exit__(self, *exc):
        for lg in self.loggers:
            lg.removeHandler(self)
        torch._logging.set_logs()
        self.unique_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]


def compiled(model, mode: str, backend: str):
    if mode == "units":          # regional compilation: the units of a stage share one graph
        for unit in model.residual_units():
            unit.compile(backend=backend)
        return model
    if mode == "model-cudagraphs":
        return torch.compile(model, mode="reduce-overhead")
    return torch.compile(model, backend=backend)       # what the trainer's compile=True does


def section_compile(ctx: Ctx, ck: A.Checks):
    from identity_study.models import resnet
    from identity_study.train import autocast_for, train_step
    c, dev = ctx.cfg["compile"], ctx.device
    # the fast path on a GPU; on a CPU inductor would spend the minutes compiling C++, so dynamo and AOT autograd
    # are checked with the aot_eager backend
    precision, cl, backend = ("bf16", True, "inductor") if ctx.cuda else ("fp32", True, "aot_eager")
    tolerance = 5e-2 if precision == "bf16" else 1e-4
    memory_format = torch.channels_last if cl else torch.contiguous_format
    if ctx.cuda:
        torch.backends.cudnn.benchmark = True
    fp32_math = A.set_math(dev, precision)
    autocast = autocast_for(dev, precision)
    bs, k = c["batch_size"], c["agree_steps"]
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(bs, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (bs,), generator=g).to(dev))
               for _ in range(k)]
    base_row = dict(ctx.rows_base(), section="compile", pipeline="bare", batch_size=bs, precision=precision,
                    layout=layout_name(cl), steps=c["steps"], fp32_math=fp32_math)
    rows = [r.strip() for r in ctx.args.compile_rows.split(",")] if ctx.args.compile_rows else list(COMPILE_ROWS)
    for mode, depth in [(m, d) for m, d in c["configs"] if m in rows]:
        name = f"preact-{depth} {mode}"
        row = dict(base_row, net=f"preact-{depth}", variant=mode)
        if mode == "model-cudagraphs" and not ctx.cuda:
            ck.note(f"{name}: CUDA graphs need a GPU; not run here")
            continue
        if ctx.left() < c["min_row_s"]:
            ck.note(f"{name}: not started, {ctx.left():.0f} s of the section left (`--only compile "
                    f"--compile-rows {mode}` runs it alone)")
            continue
        t_row = time.monotonic()
        torch.manual_seed(0)
        net = resnet("preact", depth, "cifar10").to(dev, memory_format=memory_format)

        def stepper(model):
            opt, losses = sgd(model), []

            def step(x, y):
                losses.append(train_step(model, opt, x, y, autocast, memory_format)[1])
            return step, losses
        eager_step, eager_losses = stepper(copy.deepcopy(net))
        run_steps(ctx, eager_step, iter(batches), k)
        eager_s = run_steps(ctx, eager_step, itertools.repeat(batches[0]), c["steps"]) / c["steps"]
        with DynamoWatch() as watch:
            step, losses = stepper(compiled(net, mode, backend))
            first_s = run_steps(ctx, step, iter(batches), k)          # compiles, and records the CUDA graphs
            run_steps(ctx, step, itertools.repeat(batches[0]), c["warmup"])
            sec = run_steps(ctx, step, itertools.repeat(batches[0]), c["steps"]) / c["steps"]
        le, lc = ([v.item() for v in ls[:k]] for ls in (eager_losses, losses))
        rel = max(abs(a - b) / max(abs(a), 1e-12) for a, b in zip(le, lc))
        row.update(status="ok" if all(map(A.finite, lc)) else "nan loss", images_per_second=round(bs / sec, 1),
                   step_ms=round(1e3 * sec, 3), compile_s=round(max(0.0, first_s - k * sec), 1),
                   row_s=round(time.monotonic() - t_row, 1), eager_images_per_second=round(bs / eager_s, 1),
                   speedup_vs_eager=round(eager_s / sec, 3), loss_max_rel_diff=f"{rel:.2e}",
                   recompiles=watch.recompiles, recompile_limit_hits=watch.limit_hits,
                   unique_graphs=watch.unique_graphs, cudagraph_skips=watch.cudagraph_skips,
                   note="" if backend == "inductor" else f"backend {backend}")
        append_csv(ctx.out / THROUGHPUT_CSV, [row])           # each row the moment it is measured
        print(f"  {name}: compile {row['compile_s']} s, {row['images_per_second']:,.0f} img/s "
              f"({row['speedup_vs_eager']}x eager), {watch.recompiles} recompiles, {watch.unique_graphs} graphs, "
              f"{watch.limit_hits} recompile-limit hits, {watch.cudagraph_skips} CUDA-graph skips", flush=True)
        ck.check(f"{name}: losses agree with eager over {k} steps", rel <= tolerance and row["status"] == "ok",
                 f"max relative difference {rel:.2e}", f"<= {tolerance}")
        ck.check(f"{name}: no code object fell back to eager at the recompile limit", watch.limit_hits == 0,
                 f"{watch.recompiles} recompiles, {watch.limit_hits} limit hits (recompile_limit "
                 f"{torch._dynamo.config.recompile_limit})")
        ck.data(**{name: dict(images_per_second=row["images_per_second"], compile_s=row["compile_s"],
                              row_s=row["row_s"])})
        del net, step, eager_step


def section_throughput(ctx: Ctx, ck: A.Checks):
    from torchvision import transforms

    from identity_study.data import DeviceCifar, cifar_dataset, normalization_stats
    from identity_study.models import resnet
    ensure_cifar10(ctx)
    c, dev = ctx.cfg["throughput"], ctx.device
    bs, torch_defaults = c["batch_size"], A.TorchDefaults()
    default = trainer_defaults(dev)
    precisions = ["fp32", "bf16"]
    tf32, why = tf32_available(dev)
    precisions += ["tf32"] if tf32 else []
    if why:
        ck.note(why)
    if ctx.cuda:
        torch.backends.cudnn.benchmark = True        # as the trainer does on CUDA (not deterministic)
    typical_set = cifar_dataset("cifar10", train=True)
    images = torch.from_numpy(typical_set.data).permute(0, 3, 1, 2).contiguous()     # as load_cifar, read once
    labels = torch.tensor(typical_set.targets, dtype=torch.int64)
    mean, std = normalization_stats(images, "per_pixel_mean")
    data = DeviceCifar(images, labels, dev, mean, std, augment=True, seed=0)
    ch_mean, ch_std = normalization_stats(images, "per_channel")
    typical_set.transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(ch_mean.flatten().tolist(), ch_std.flatten().tolist())])
    loader = torch.utils.data.DataLoader(typical_set, batch_size=bs, shuffle=True, num_workers=c["workers"],
                                         pin_memory=ctx.cuda, drop_last=True, persistent_workers=c["workers"] > 0)
    typical_batches = endless(loader)
    g = torch.Generator().manual_seed(1)
    fixed = (torch.randn(bs, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (bs,), generator=g).to(dev))
    default_variant = f"trainer_{default['precision']}_{layout_name(default['channels_last'])}"
    fp32_layout = layout_name(trainer_defaults(dev, precision="fp32")["channels_last"])
    base_row = dict(ctx.rows_base(), section="throughput", batch_size=bs, repeats=c["repeats"], steps=c["steps"],
                    warmup=c["warmup"], workers=c["workers"], trainer_default=default_variant)
    typical_math = A.typical_variants(c["workers"], tf32)
    typical_name = f"typical_w{c['workers']}"
    first_net_s = None
    for depth in c["nets"]:
        if first_net_s is not None and ctx.left() < 1.2 * first_net_s:
            ck.note(f"preact-{depth} not measured: {ctx.left():.0f} s of the section left, and the first net took "
                    f"{first_net_s:.0f} s")
            continue
        t_net = time.monotonic()
        torch.manual_seed(0)
        net = resnet("preact", depth, "cifar10")
        variants = {}     # name: (pipeline, precision, layout, step, batches, math setter)
        for precision in precisions:
            for cl in (False, True):
                for pipeline in ("trainer", "bare"):
                    model = copy.deepcopy(net).to(dev, memory_format=torch.channels_last if cl else
                                                  torch.contiguous_format)
                    batches = (data.batch(i, bs) for i in itertools.count()) if pipeline == "trainer" else \
                        itertools.repeat(fixed)
                    variants[f"{pipeline}_{precision}_{layout_name(cl)}"] = (
                        pipeline, precision, layout_name(cl), trainer_step(model, precision, cl, dev), batches,
                        lambda p=precision: A.set_math(dev, p))
        # the typical pipeline as a fresh process runs it (torch's defaults), and under the trainer rows' fp32 math
        for name, mode in typical_math.items():
            setter = (lambda: torch_defaults.restore(dev)) if mode == "defaults" else \
                (lambda m=mode: A.set_math(dev, "fp32" if m == "ieee" else "tf32"))
            variants[name] = ("typical", "fp32", "nchw", typical_step(copy.deepcopy(net).to(dev), dev),
                              typical_batches, setter)
        variants["typical_bare"] = ("typical_bare", "fp32", "nchw", typical_step(copy.deepcopy(net).to(dev), dev),
                                    itertools.repeat(fixed), lambda: torch_defaults.restore(dev))
        seconds = {v: [] for v in variants}
        math_of = {}
        for r in range(c["repeats"]):
            for name, (_, _, _, step, batches, set_mode) in variants.items():   # interleaved: each once per repeat
                math_of[name] = set_mode()
                run_steps(ctx, step, batches, c["warmup"])
                seconds[name].append(run_steps(ctx, step, batches, c["steps"]) / c["steps"])
            print(f"  preact-{depth} repeat {r}: " + ", ".join(f"{v} {bs / s[-1]:,.0f}" for v, s in seconds.items()),
                  flush=True)
        ratios = A.pipeline_ratios(seconds, {v: dict(pipeline=x[0], precision=x[1]) for v, x in variants.items()},
                                   c["workers"])
        rows = []
        for name, (pipeline, precision, layout, step, batches, set_mode) in variants.items():
            sec = seconds[name]
            twin = name.replace("trainer_", "bare_") if pipeline == "trainer" else \
                "typical_bare" if name == typical_name else None
            busy = None
            if twin:       # the data path's steps only: a bare step has no input pipeline to keep the device waiting
                math_of[name] = set_mode()
                busy = device_busy(ctx, step, batches, c["busy_steps"])
            loss = step.last()
            rows.append(dict(base_row, net=f"preact-{depth}", variant=name, pipeline=pipeline, precision=precision,
                             layout=layout, status="ok" if A.finite(loss) else "nan loss",
                             images_per_second=round(bs / statistics.median(sec), 1),
                             ips_repeats=";".join(f"{bs / s:.1f}" for s in sec),
                             step_ms=round(1e3 * statistics.median(sec), 3),
                             bare_images_per_second=round(bs / statistics.median(seconds[twin]), 1) if twin else None,
                             data_share=round(statistics.median(1 - b / f for b, f in zip(seconds[twin], sec)), 4)
                             if twin else None,
                             device_busy=None if busy is None else round(busy, 4),
                             **ratios.get(name, dict(ratio_same_math=None, same_math_typical=None,
                                                     ratio_vs_typical_defaults=None)),
                             fp32_math=math_of[name]))
        append_csv(ctx.out / THROUGHPUT_CSV, rows)
        print(table(rows, ["variant", "images_per_second", "data_share", "device_busy", "ratio_same_math",
                           "ratio_vs_typical_defaults", "status"]), flush=True)
        ck.check(f"preact-{depth}: every variant's loss finite", all(r["status"] == "ok" for r in rows),
                 [r["variant"] for r in rows if r["status"] != "ok"] or f"{len(rows)} variants")
        by = {r["variant"]: r for r in rows}
        head, dflt = by[f"trainer_fp32_{fp32_layout}"], by[default_variant]
        # the headline: the trainer's pipeline against the typical one at the same arithmetic (IEEE fp32, each in
        # its default layout); the default's ratio against the typical script as it runs (torch's defaults) apart
        ck.data(**{f"preact-{depth}": dict(
            headline=dict(variant=head["variant"], images_per_second=head["images_per_second"],
                          against=head["same_math_typical"], ratio_same_math=head["ratio_same_math"]),
            trainer_default=dict(variant=default_variant, images_per_second=dflt["images_per_second"],
                                 ratio_vs_typical_defaults=dflt["ratio_vs_typical_defaults"],
                                 device_busy=dflt["device_busy"]),
            typical_images_per_second={v: by[v]["images_per_second"] for v in typical_math})})
        ck.check(f"preact-{depth}: the headline ratio compares the same fp32 math",
                 head["ratio_same_math"] is not None and head["same_math_typical"] == f"typical_w{c['workers']}_ieee",
                 f"{head['variant']} / {head['same_math_typical']}: {head['ratio_same_math']}")
        if ctx.cuda:
            ck.check(f"preact-{depth}: GPU busy share of the trainer's default measured",
                     dflt["device_busy"] is not None and 0 < dflt["device_busy"] <= 1.05, dflt["device_busy"],
                     "in (0, 1]")
        del variants
        if first_net_s is None:
            first_net_s = time.monotonic() - t_net


def section_resnet1001(ctx: Ctx, ck: A.Checks):
    from identity_study.models import resnet
    from identity_study.train import autocast_for, train_step
    c, dev = ctx.cfg["resnet1001"], ctx.device
    if ctx.cuda:
        torch.backends.cudnn.benchmark = True
    bs = c["batch_size"]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(bs, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (bs,), generator=g).to(dev)
    base_row = dict(ctx.rows_base(), section="resnet1001", pipeline="bare", batch_size=bs, steps=c["steps"],
                    warmup=c["warmup"])

    def measure(row: dict, precision: str, cl: bool) -> str:
        """Warm-up and timed steps of one configuration into `row`; returns what its check reports. The peak is
        reset after the warm-up, so that cuDNN's autotuning workspace (cudnn.benchmark, first steps only) is in
        `peak_warmup_gib` and not in `peak_gib`: every configuration's peak then measures the same thing."""
        memory_format = torch.channels_last if cl else torch.contiguous_format
        row["fp32_math"] = A.set_math(dev, precision)
        torch.manual_seed(0)
        model = resnet(row["net"].split("-")[0], c["depth"], "cifar10").to(dev, memory_format=memory_format)
        opt, autocast, losses = sgd(model), autocast_for(dev, precision), []
        if ctx.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)

        def step(a, b):
            losses.append(train_step(model, opt, a, b, autocast, memory_format)[1])
        run_steps(ctx, step, itertools.repeat((x, y)), c["warmup"])
        if ctx.cuda:
            row["peak_warmup_gib"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
            torch.cuda.reset_peak_memory_stats(dev)
        sec = run_steps(ctx, step, itertools.repeat((x, y)), c["steps"]) / c["steps"]
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if ctx.cuda else None
        row.update(status="ok" if all(A.finite(v.item()) for v in losses) else "nan loss",
                   step_ms=round(1e3 * sec, 2), images_per_second=round(bs / sec, 1),
                   peak_gib=None if peak is None else round(peak, 2),
                   projected_64k_h=round(PAPER_ITERATIONS * sec / 3600, 2))
        return f"{1e3 * sec:.0f} ms/step, peak {row['peak_gib']} GiB, 64k iterations {row['projected_64k_h']} h"

    for unit in ("preact", "original"):
        for precision in ("fp32", "bf16"):
            cl = trainer_defaults(dev, precision=precision)["channels_last"]     # the trainer's layout for it
            name = f"{unit}-{c['depth']} {precision}"
            row = dict(base_row, net=f"{unit}-{c['depth']}", variant=precision, precision=precision,
                       layout=layout_name(cl))
            try:
                what = measure(row, precision, cl)
                ck.check(f"{name}: {bs} images per step fit and train with finite losses", row["status"] == "ok",
                         what)
            except torch.cuda.OutOfMemoryError as e:
                row.update(status="oom", note=str(e).splitlines()[0][:300])
                ck.check(f"{name}: fits in the GPU's memory", False, row["note"])
            append_csv(ctx.out / THROUGHPUT_CSV, [row])


SECTION_FUNCTIONS = dict(env=A.section_env, compile=section_compile, throughput=section_throughput,
                         resnet1001=section_resnet1001, smoke=A.section_smoke, sanity=A.section_sanity,
                         resume=A.section_resume, ddp=A.section_ddp)


# ---------------------------------------------------------------------------------------------------------------
# the driver

def summary_line(name: str, res: dict) -> str:
    checks = res.get("checks", [])
    failed = [c["check"] for c in checks if not c["ok"]]
    what = res.get("error") or (f"failed: {failed[0]}" if failed else "") or res.get("note", "")
    return (f"{name:>10}  {res['status']:>7}  {res.get('seconds', 0):6.1f} s (cpu {res.get('cpu_s', 0):5.1f} s)  "
            f"{sum(c['ok'] for c in checks)}/{len(checks)} checks  {what}")


def commit() -> str:
    "This checkout's commit, '-dirty' where tracked files differ from it: what a copy without .git is told (or was)."
    sha, dirty = commit_and_dirty(short=False)
    return sha + ("-dirty" if sha and dirty else "")


def attempt_provenance(argv: list, args, budget: float) -> dict:
    "Who ran this invocation, where and with what: read without creating a CUDA context in the driver."
    import platform

    import torchvision
    return dict(command=" ".join(["gpu_acceptance.py", *argv]), started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                device=args.device, tiny=args.tiny, budget_s=budget, hostname=platform.node(),
                gpu=gpu_name_without_cuda_init() if args.device.startswith("cuda") else "",
                python=platform.python_version(), torch=torch.__version__, torchvision=torchvision.__version__,
                cuda=torch.version.cuda or "", git_commit=commit())


def plan(only, cfg: dict, budget: float) -> dict:
    "The limits the sections get when each one takes its reserve: the budget as planned."
    order, left, rows = [s for s in SECTIONS if s in only], budget, []
    for name in order:
        limit = A.section_limit(name, order, cfg["caps"], cfg["reserves"], left)
        rows.append(dict(section=name, reserve_s=cfg["reserves"][name], cap_s=cfg["caps"][name],
                         limit_s=round(limit, 1), starts_at_s=round(budget - left, 1)))
        left -= min(cfg["reserves"][name], limit)
    return dict(budget_s=budget, reserved_s=sum(r["reserve_s"] for r in rows), spare_s=round(left, 1), sections=rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu-acceptance", help="output folder (at most 7 files)")
    ap.add_argument("--only", help=f"comma-separated sections to run ({','.join(SECTIONS)}); the others' results "
                                   "in --out are kept")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--tiny", action="store_true", help="every section at toy size (a dry run, e.g. on a CPU)")
    ap.add_argument("--budget-s", type=float, help="wall-time budget of all sections (540 s; tiny: 400 s)")
    ap.add_argument("--compile-rows", help=f"the compile section's rows ({','.join(COMPILE_ROWS)}; default all)")
    ap.add_argument("--compact", default=str(ROOT / ".gpu_data"),
                    help="folder with make_torchvision_layout.py and compact/cifar10, used when CIFAR-10 is missing")
    ap.add_argument("--print-command", action="store_true",
                    help="print the one command of a lent GPU machine, with this checkout's commit, and exit")
    ap.add_argument("--plan", action="store_true",
                    help="print, as JSON, each section's reserve (expected seconds on an H100), cap, and the limit it "
                         "gets when every section before it takes its reserve; then exit")
    argv = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(argv)

    if args.print_command:
        print(f'IDENTITY_STUDY_COMMIT={commit() or "unknown"} bash benchmarks/gpu_first_run.sh "$OUT"')
        return 0
    only = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}")
    bad_rows = [r for r in (args.compile_rows or "").split(",") if r.strip() and r.strip() not in COMPILE_ROWS]
    if bad_rows:
        ap.error(f"unknown compile row {bad_rows[0]!r}; valid rows: {', '.join(COMPILE_ROWS)}")
    cfg = TINY if args.tiny else FULL
    budget = args.budget_s or cfg["budget_s"]
    if args.plan:
        print(json.dumps(plan(only, cfg, budget), indent=1))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget
    path = out / CHECKS_JSON
    state = json.loads(path.read_text()) if path.exists() else {}
    # provenance per attempt: every invocation into this folder is listed, and each section names the one that ran it
    attempts = state.get("attempts", []) + [attempt_provenance(argv, args, budget)]
    state = dict(state, attempts=attempts, sections=state.get("sections", {}))
    order = [s for s in SECTIONS if s in only]
    print(f"GPU acceptance on {args.device}{' (tiny)' if args.tiny else ''}: {', '.join(order)}; budget {budget:.0f} s;"
          f" output {out}", flush=True)
    for name in order:
        left = deadline - time.monotonic()
        limit = A.section_limit(name, order, cfg["caps"], cfg["reserves"], left)
        if limit >= MIN_SECTION_S:
            def target(ck, tmp, name=name, limit=limit, start=time.monotonic()):
                run_args = argparse.Namespace(**vars(args))
                print(f"{name} on {args.device}{' (tiny)' if args.tiny else ''}", flush=True)
                SECTION_FUNCTIONS[name](Ctx(run_args, cfg, tmp, start + limit), ck)
            res = A.run_section(name, target, limit, out / LOG)
        else:
            res = dict(section=name, status="skipped", checks=[], notes=[], seconds=0.0,
                       error=f"time budget spent ({left:.0f} s left)")
        res["attempt"] = len(attempts) - 1
        state["sections"][name] = res
        state["sections"] = {s: state["sections"][s] for s in SECTIONS if s in state["sections"]}
        state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        A.write_json(path, state)
        line = summary_line(name, res)
        print(line, flush=True)
        with open(out / LOG, "a") as log:
            log.write(line + "\n")
    ran = [state["sections"][s] for s in order]
    print(f"\n{sum(r['status'] == 'ok' for r in ran)}/{len(ran)} sections ok; results in {path}", flush=True)
    return 0 if all(r["status"] == "ok" for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
