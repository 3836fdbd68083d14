"""An ESTIMATE, not a measurement: how long each section of gpu_acceptance.py should take on one H100, from what can be
counted here without a GPU and from assumptions about the H100 stated below (ASSUMED).

Counted here, on the meta device (no arithmetic is done): per training step of each net the convolution and matrix
FLOPs (torch.utils.flop_counter), the torch operators that launch work (views left out) and the bytes those other
than convolutions and matrix products read and write. From these, the time of one step at batch 128:
  eager:          max(host, device): host = operators x ASSUMED host_us_per_op (the Python and launch cost of eager
                  PyTorch), device = FLOPs / ASSUMED rate[precision] + bytes / ASSUMED bandwidth
                  + kernels x ASSUMED kernel_gap_us
  CUDA graphs:    device only (no host cost per operator), inductor's fusion halving the element-wise bytes and kernels
Each section's time is then its steps (from gpu_acceptance.FULL) times these step times, plus ASSUMED fixed costs
(process and CUDA start, papermill's kernel, cuDNN autotuning, and the compile times, which nothing here can count).

  .venv/bin/python benchmarks/acceptance_estimate.py            # the table; ~1 min on the project's 2-core CPU
  .venv/bin/python benchmarks/acceptance_estimate.py --json     # the same as JSON
Read against the first real run (its checks.json has each section's seconds), then replace the assumptions.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import gpu_acceptance as G
from identity_study.models import resnet

ASSUMED = dict(
    # sustained convolution throughput of these narrow nets (16-256 channels on 32x32 .. 8x8) at batch 128, a
    # fraction of the H100 SXM's dense peaks (67 TFLOP/s fp32 without tensor cores, 495 TF32, 990 bf16)
    rate_tflops=dict(fp32=25.0, tf32=60.0, bf16=90.0),
    bandwidth_tbs=2.0,        # of its 3.35 TB/s of HBM3, for the element-wise kernels (batch norm, ReLU, adds)
    kernel_gap_us=2.0,        # device time lost per kernel between kernels
    host_us_per_op=7.0,       # eager PyTorch's host cost per operator (dispatch, autograd, launch)
    cuda_start_s=4.0,         # a section's process: CUDA context, cuBLAS/cuDNN handles
    autotune_s=1.5,           # cudnn.benchmark's search, per net, precision and layout, first steps only
    papermill_start_s=14.0,   # papermill, its kernel, the notebook's imports, CUDA, CIFAR-10 read
    torchrun_start_s=10.0,    # torchrun, each rank's interpreter with torch, its group
    cifar_read_s=3.0,         # CIFAR-10 into memory and onto the GPU, the DataLoader's workers
    # CIFAR-10 rebuilt from the bundle's JPEG copy, once, in the first section that reads it (one process decoding:
    # 30.1 s on the project's 2-core CPU beside two training runs, Python 3.12, benchmarks/README.md)
    cifar_rebuild_s=20.0,
    profile_s=1.0,            # a torch.profiler trace, per profiled variant
    record_s=1.0,             # a train() call's record writing, checkpoints and evaluations, ResNet-20
    # compile times, which nothing here counts: a cold inductor compile of pre-act ResNet-164's training step (16
    # CPU cores compiling Triton kernels), again with its kernels already in the on-disk caches, and the regional
    # compile of ResNet-1001 (a handful of unit graphs, several recompiles); the desk check of issue 39 put the
    # three together at 150-360 s
    compile_s={"model-cudagraphs": 90.0, "model": 45.0, "units": 60.0},
    resnet20_step_s=0.01,     # a ResNet-20 step, whatever the precision: host-bound
)
VIEWS = {"view", "_unsafe_view", "t", "transpose", "permute", "expand", "as_strided", "detach", "alias", "slice",
         "select", "unsqueeze", "squeeze", "reshape", "_reshape_alias", "unbind", "split", "split_with_sizes",
         "empty_like", "empty", "zeros_like", "empty_strided", "lift_fresh"}
MATH = {"convolution", "convolution_backward", "mm", "addmm", "bmm"}


class Count(TorchDispatchMode):
    "Operators that launch work, and the bytes read and written by those that are not convolutions or products."
    def __init__(self):
        super().__init__()
        self.ops = self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__.rstrip("_")
        if name not in VIEWS:
            self.ops += 1
            if name not in MATH:
                tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs, out)) if torch.is_tensor(t)]
                self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        return out


def step_counts(unit: str, depth: int, batch: int = 128) -> dict:
    "FLOPs, operators and element-wise bytes of one SGD step of `unit`-`depth` at `batch`, fp32, on the meta device."
    with torch.device("meta"):
        model = resnet(unit, depth, "cifar10")
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    flops, count = FlopCounterMode(display=False), Count()
    for _ in range(2):          # the second step: the momentum buffers exist
        count.ops = count.bytes = 0
        with flops, count:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return dict(flops=flops.get_total_flops(), ops=count.ops, bytes=count.bytes, convs=convs)


def step_seconds(c: dict, precision: str, graphs: bool = False) -> float:
    "One step's seconds from its counts `c`, under ASSUMED (bf16: half the bytes, a weight cast per convolution)."
    bytes_ = c["bytes"] / (2 if precision == "bf16" else 1) / (2 if graphs else 1)
    ops = c["ops"] + (c["convs"] if precision == "bf16" else 0)
    device = (c["flops"] / (ASSUMED["rate_tflops"][precision] * 1e12) + bytes_ / (ASSUMED["bandwidth_tbs"] * 1e12)
              + ops / (2 if graphs else 1) * ASSUMED["kernel_gap_us"] * 1e-6)
    return device if graphs else max(device, ops * ASSUMED["host_us_per_op"] * 1e-6)


def estimate() -> dict:
    a, F_ = ASSUMED, G.FULL
    nets = {n: step_counts(*n) for n in (("preact", 110), ("preact", 164), ("preact", 1001), ("original", 1001))}
    t = {(n, p, g): step_seconds(c, p, g) for n, c in nets.items() for p in ("fp32", "tf32", "bf16")
         for g in (False, True)}
    sec = {"env": a["cuda_start_s"] + 2.0}
    # compile: per row, the eager baseline and the compiled steps (bf16) and the compile itself
    c = F_["compile"]
    rows = {}
    for mode, depth in c["configs"]:
        net = ("preact", depth)
        eager, compiled = t[(net, "bf16", False)], t[(net, "bf16", mode == "model-cudagraphs")]
        rows[mode] = (a["compile_s"][mode] + a["autotune_s"] + (c["agree_steps"] + c["steps"]) * eager
                      + (c["agree_steps"] + c["warmup"] + c["steps"]) * compiled)
    sec["compile"] = a["cuda_start_s"] + sum(rows.values())
    # throughput: per net, 3 precisions x 2 layouts x (trainer, bare), the typical pipeline in fp32 three times
    # (torch's defaults: TF32 convolutions; IEEE; TF32) and bare once, each (warmup + steps) x repeats
    c = F_["throughput"]
    per_net = {}
    for depth in c["nets"]:
        net = ("preact", depth)
        variants = [t[(net, p, False)] for p in ("fp32", "tf32", "bf16") for _ in range(4)]
        variants += [t[(net, "tf32", False)], t[(net, "fp32", False)], t[(net, "tf32", False)], t[(net, "tf32", False)]]
        steps = c["repeats"] * (c["warmup"] + c["steps"]) * sum(variants)
        busy = 10 * (c["busy_steps"] * t[(net, "fp32", False)] + a["profile_s"])     # 6 trainer + typical variants
        per_net[depth] = steps + busy + 8 * a["autotune_s"]
    sec["throughput"] = a["cuda_start_s"] + a["cifar_rebuild_s"] + a["cifar_read_s"] + sum(per_net.values())
    c = F_["resnet1001"]
    sec["resnet1001"] = a["cuda_start_s"] + sum(
        2.0 + a["autotune_s"] + (c["warmup"] + c["steps"]) * t[((u, 1001), p, False)]
        for u in ("preact", "original") for p in ("fp32", "bf16"))
    sec["smoke"] = a["papermill_start_s"] + 8 * a["resnet20_step_s"] + a["record_s"]
    s = F_["sanity"]["params"]
    # the defaults on an H100: IEEE fp32 (NCHW); evaluations about a third of a training step per image
    sanity_step = t[(("preact", 164), "fp32", False)]
    evals = (s["iterations"] // s["eval_every"] * s["eval_subset"] + 10_000) / 128 * sanity_step / 3
    sec["sanity"] = a["papermill_start_s"] + a["autotune_s"] + s["iterations"] * sanity_step + evals + 4 * a["record_s"]
    sec["resume"] = a["cuda_start_s"] + 4 * 3 * (a["record_s"] + 12 * a["resnet20_step_s"])
    sec["ddp"] = 2 * (a["torchrun_start_s"] + 6 * a["resnet20_step_s"] + a["record_s"])
    return dict(
        nets={f"{u}-{d}": dict(counts, **{f"step_ms_{p}{'_graphs' if g else ''}": round(1e3 * t[((u, d), p, g)], 1)
                                          for p in ("fp32", "tf32", "bf16") for g in (False, True)})
              for (u, d), counts in nets.items()},
        compile_rows_s={k: round(v) for k, v in rows.items()},
        throughput_per_net_s={k: round(v) for k, v in per_net.items()},
        sections_s={k: round(sec[k]) for k in G.SECTIONS}, total_s=round(sum(sec.values())),
        reserves_s=G.FULL["reserves"], caps_s=G.FULL["caps"], budget_s=G.FULL["budget_s"], assumed=ASSUMED)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    e = estimate()
    if args.json:
        print(json.dumps(e, indent=1))
        return 0
    print("ESTIMATE (not measured) of one H100, from counts made here and the assumptions in ASSUMED")
    for name, n in e["nets"].items():
        print(f"  {name:>14}: {n['flops'] / 1e9:7.1f} GFLOP/step, {n['ops']:6d} operators, "
              f"{n['bytes'] / 2**30:5.2f} GiB element-wise; step ms eager fp32 {n['step_ms_fp32']}, tf32 "
              f"{n['step_ms_tf32']}, bf16 {n['step_ms_bf16']}; CUDA graphs bf16 {n['step_ms_bf16_graphs']}")
    print(f"  compile rows (s): {e['compile_rows_s']}; throughput per net (s): {e['throughput_per_net_s']}")
    print(f"  {'section':>10}  estimate_s  reserve_s  cap_s")
    for k, v in e["sections_s"].items():
        print(f"  {k:>10}  {v:10d}  {e['reserves_s'][k]:9d}  {e['caps_s'][k]:5d}")
    print(f"  {'total':>10}  {e['total_s']:10d}  {sum(e['reserves_s'].values()):9d}  (budget {e['budget_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
