"""The study's GPU path proved in one command: eight sections, each in its own process with its own time limit, each
writing its result the moment it ends.

  python3 benchmarks/gpu_acceptance.py --out OUT                    # one H100: at most 8 minutes (budget 465 s)
  python3 benchmarks/gpu_acceptance.py --out OUT --only sanity,compile   # rerun some sections (the rest is kept)
  .venv/bin/python benchmarks/gpu_acceptance.py --device cpu --tiny --out /tmp/acc   # the same code on a CPU, ~1 min

Sections, in this order:
  env         GPU, clocks (nvidia-smi), versions (torch, CUDA, cuDNN, NCCL, driver), TF32 flags, and a TF32 probe:
              a float32 convolution and matrix product against float64, under the flags as found, with TF32 off
              and with TF32 on
  smoke       papermill nbs/train.ipynb, smoke profile, every other parameter at its default (device auto)
  resume      train straight through vs stop_after + resume (deterministic): weights, optimiser, generators and
              metrics bit for bit; pre-act ResNet-20 in fp32 and bf16 (and tf32), and the dropout shortcut
  ddp         torchrun: one NCCL process, then two processes (NCCL, else gloo on CUDA tensors)
  sanity      a short real run through papermill (pre-act ResNet-164, 2,000 iterations): test error <= 30 %
  throughput  the trainer's step (fp32/bf16[/tf32] x NCHW/channels_last) beside a typical DataLoader pipeline and
              the bare steps, interleaved repeats, and the share of time the GPU is busy
  resnet1001  ResNet-1001, pre-act and original, fp32 and bf16: peak memory, step time, 64k iterations projected
  compile     torch.compile, mode="reduce-overhead" and regional compilation: compile time, throughput, loss
              agreement with eager, recompiles and recompile-limit hits
Files in --out (never more than these seven): env.json, checks.json, throughput.csv (rows of throughput, resnet1001
and compile), sanity_metrics.csv, smoke.ipynb, sanity.ipynb, acceptance.log. --tiny runs every section at toy size
(depth 20, a few steps, gloo for NCCL, compile with the aot_eager backend on a CPU), as tests/test_gpu_acceptance.py
does. Needs papermill and ipykernel for the two notebook sections (benchmarks/README.md: preparing a GPU machine).
"""
from __future__ import annotations

import argparse
import copy
import csv
import itertools
import json
import logging
import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import _common  # noqa: F401  (puts the source tree on sys.path)
import torch
import torch.nn.functional as F

from _common import ROOT, append_csv, machine, nvidia_smi, table
import identity_study.models  # noqa: F401,E402  (imported once here: the forked sections inherit them)
import identity_study.params  # noqa: F401,E402
import identity_study.train  # noqa: F401,E402

SECTIONS = ("env", "smoke", "resume", "ddp", "sanity", "throughput", "resnet1001", "compile")
ENV_JSON, CHECKS_JSON, THROUGHPUT_CSV, SANITY_CSV = "env.json", "checks.json", "throughput.csv", "sanity_metrics.csv"
SMOKE_NB, SANITY_NB, LOG = "smoke.ipynb", "sanity.ipynb", "acceptance.log"
PAPER_ITERATIONS = 64_000
MIN_SECTION_S = 15          # a section with less time than this left is skipped, not started to be killed
THROUGHPUT_COLUMNS = ["section", "net", "variant", "pipeline", "precision", "layout", "status", "batch_size",
                      "images_per_second", "ips_repeats", "step_ms", "bare_images_per_second", "data_share",
                      "device_busy", "ratio_vs_typical", "peak_gib", "projected_64k_h", "compile_s",
                      "speedup_vs_eager", "loss_max_rel_diff", "recompiles", "recompile_limit_hits", "unique_graphs",
                      "cudagraph_skips", "fp32_math", "note"]

FULL = dict(
    budget_s=465,
    limits=dict(env=60, smoke=150, resume=150, ddp=200, sanity=240, throughput=200, resnet1001=150, compile=600),
    smoke=dict(),
    resume=dict(depth=20, dataset="synthetic", iterations=12, eval_every=4, stop_after=6, batch_size=64,
                train_subset=1024),
    ddp=dict(depth=20, dataset="synthetic", iterations=6, eval_every=3, batch_size=32, train_subset=512, timeout=90,
             one_process=True),
    # the paper's schedule compressed into 2,000 iterations: steps at 1/2 and 3/4, a short warm-up at 0.01
    sanity=dict(params=dict(depth=164, iterations=2000, lr_steps="[1000, 1500]", warmup_iterations=50,
                            eval_every=500, eval_subset=2000, progress=False), max_error=0.30),
    throughput=dict(nets=[110, 164], batch_size=128, repeats=3, warmup=5, steps=20, busy_steps=5, workers=8),
    resnet1001=dict(depth=1001, batch_size=128, warmup=2, steps=5),
    compile=dict(configs=[("model", 164), ("model-cudagraphs", 164), ("units", 1001)], batch_size=128,
                 agree_steps=5, warmup=3, steps=20),
    probe=dict(n=32, c=64, hw=32, m=1024),
)
TINY = dict(
    budget_s=400,
    limits=dict(env=60, smoke=150, resume=120, ddp=150, sanity=150, throughput=120, resnet1001=90, compile=150),
    smoke=dict(depth=20),
    resume=dict(depth=20, dataset="synthetic", iterations=4, eval_every=2, stop_after=3, batch_size=16,
                train_subset=128),
    # gloo with one process would prove nothing that the two-process run does not
    ddp=dict(depth=20, dataset="synthetic", iterations=4, eval_every=2, batch_size=16, train_subset=128, timeout=90,
             one_process=False),
    sanity=dict(params=dict(depth=20, iterations=8, batch_size=32, lr_steps="[4, 6]", warmup_iterations=0,
                            eval_every=4, train_subset=1024, eval_subset=128, final_eval_subset=128, progress=False),
                max_error=None),
    throughput=dict(nets=[20], batch_size=8, repeats=3, warmup=1, steps=1, busy_steps=1, workers=1),
    resnet1001=dict(depth=20, batch_size=8, warmup=1, steps=2),
    compile=dict(configs=[("model", 20), ("model-cudagraphs", 20), ("units", 20)], batch_size=8, agree_steps=2,
                 warmup=1, steps=2),
    probe=dict(n=4, c=16, hw=16, m=256),
)

warnings.filterwarnings("ignore", message=".*rebuilt copy.*")   # the JPEG-rebuilt CIFAR copy is expected here


# ---------------------------------------------------------------------------------------------------------------
# what every section shares

class Ctx:
    "One section's settings: the device, the size (full or tiny), the output folder, a scratch folder."
    def __init__(self, args):
        self.args, self.device, self.tiny = args, args.device, args.tiny
        self.cuda = self.device.startswith("cuda")
        self.cfg = TINY if args.tiny else FULL
        self.out, self.tmp = Path(args.out), Path(args.tmp)

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def rows_base(self) -> dict:
        "The columns that say where and with what a row was measured."
        return dict(machine(self.device), **versions(self.device))


class Checks:
    """The result of one section: its checks, notes and data. Saved after every change, so that a section killed at
    its time limit still shows what it had done."""
    def __init__(self, name: str, path):
        self.path = Path(path) if path else None
        self.result = dict(section=name, status="running", checks=[], notes=[], data={})
        self.save()

    def check(self, what: str, ok, value=None, expect=None) -> bool:
        ok = bool(ok)
        self.result["checks"].append(dict(check=what, ok=ok, value=value, expect=expect))
        print(f"  [{'ok' if ok else 'FAILED'}] {what}: {value}" + ("" if expect is None else f" (expected {expect})"),
              flush=True)
        self.save()
        return ok

    def note(self, text: str):
        self.result["notes"].append(text)
        print(f"  note: {text}", flush=True)
        self.save()

    def data(self, **kw):
        self.result["data"].update(kw)
        self.save()

    def finish(self, error: str | None = None):
        checks = self.result["checks"]
        self.result["status"] = ("error" if error else "ok" if checks and all(c["ok"] for c in checks) else "failed")
        if error:
            self.result["error"] = error
        self.save()

    def save(self):
        if self.path:
            _write_json(self.path, self.result)


def _write_json(path: Path, obj):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str, allow_nan=True) + "\n")
    os.replace(tmp, path)


def versions(device: str) -> dict:
    "cuDNN, NCCL and driver versions, each None where it does not apply or cannot be read."
    out = dict(cudnn=None, nccl=None, driver=None)
    try:
        out["cudnn"] = torch.backends.cudnn.version()
    except Exception:          # a CPU-only build
        pass
    if device.startswith("cuda"):
        try:
            nccl = torch.cuda.nccl.version()
            out["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else nccl
        except Exception:
            pass
        smi = nvidia_smi(["driver_version"])
        out["driver"] = smi[0]["driver_version"] if smi else None
        if out["driver"] is None:
            try:                                     # NVML's Python binding, where nvidia-smi is not on PATH
                import pynvml
                pynvml.nvmlInit()
                out["driver"] = pynvml.nvmlSystemGetDriverVersion()
            except Exception:
                pass
    return out


FLAG_PATHS = ["backends.fp32_precision", "backends.cuda.matmul.fp32_precision", "backends.cudnn.fp32_precision",
              "backends.cudnn.conv.fp32_precision", "backends.cuda.matmul.allow_tf32", "backends.cudnn.allow_tf32",
              "backends.mkldnn.matmul.fp32_precision", "backends.mkldnn.conv.fp32_precision"]


def math_modes() -> dict:
    """torch's fp32 math flags, each read on its own: the fp32_precision attributes exist only in newer torch, and
    reading a legacy allow_tf32 flag after the new API was used can raise."""
    out = {}
    for path in FLAG_PATHS:
        obj = torch
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            out[path] = obj
        except AttributeError:
            out[path] = "absent"
        except Exception as e:
            out[path] = f"unreadable ({type(e).__name__})"
    out["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    return out


def set_math(device: str, precision: str) -> str:
    """fp32 matrix products and convolutions as the trainer computes `precision`: TF32 for tf32, IEEE otherwise. The
    trainer's own switch where this checkout has it (identity_study.data.set_fp32_math), else torch's flags."""
    import identity_study.data as D
    if hasattr(D, "set_fp32_math"):
        modes = D.set_fp32_math(device, precision)
        return " ".join(f"{k}={v}" for k, v in sorted(modes.items()))
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
        return f"conv={'tf32' if precision == 'tf32' else 'ieee'} matmul={'tf32' if precision == 'tf32' else 'ieee'}"
    return "conv=ieee matmul=ieee"


class TorchDefaults:
    "The fp32 math flags as a fresh process has them (what a typical script runs with), to put back later."
    def __init__(self):
        self.values = {}
        for path in FLAG_PATHS:
            *owner, attr = path.split(".")
            obj = torch
            try:
                for part in owner:
                    obj = getattr(obj, part)
                self.values[path] = (obj, attr, getattr(obj, attr))
            except Exception:
                pass
        # put back the new API's values where it exists: setting the legacy flags as well would mix the two
        if any(p.endswith("fp32_precision") for p in self.values):
            self.values = {p: v for p, v in self.values.items() if p.endswith("fp32_precision")}

    def restore(self, device: str) -> str:
        import identity_study.data as D
        for obj, attr, value in self.values.values():
            setattr(obj, attr, value)
        if hasattr(D, "fp32_math"):
            return " ".join(f"{k}={v}" for k, v in sorted(D.fp32_math(device).items())) + " (torch defaults)"
        return " ".join(f"{p}={v}" for p, (_, _, v) in self.values.items() if "cud" in p) + " (torch defaults)"


def tf32_available(device: str) -> tuple[bool, str]:
    "Whether this checkout's trainer knows precision 'tf32' on `device` (the note says why not)."
    from identity_study.params import resolve
    try:
        resolve(precision="tf32", device=device, profile="smoke")
    except ValueError as e:
        return False, f"precision 'tf32' skipped: {str(e).splitlines()[0]}"
    return True, ""


def trainer_defaults(device: str, **params) -> dict:
    "What the trainer resolves its defaults to on `device` (precision, channels_last)."
    from identity_study.params import resolve
    p = resolve(device=device, profile="smoke", **params)[0]
    return dict(device=p["device"], precision=p["precision"], channels_last=p["channels_last"])


def ensure_cifar10(ctx: Ctx):
    """CIFAR-10 in the data root, rebuilt from the compact copy (--compact, else ../shared/data) when missing: a GPU
    machine gets the 19 MB JPEG copy, not the 178 MB pickles."""
    from identity_study.data import cifar_files_status, data_root
    root = data_root(None)
    if cifar_files_status("cifar10", root) != "missing":
        return
    for base in (Path(ctx.args.compact), ROOT.parent / "shared" / "data"):
        script = base / "make_torchvision_layout.py"
        if script.is_file() and (base / "compact" / "cifar10").is_dir():
            t = time.perf_counter()
            subprocess.run([sys.executable, str(script), "--compact", str(base / "compact"), "--root", str(root),
                            "--only", "cifar10"], check=True)
            print(f"  rebuilt CIFAR-10 under {root} from {base} in {time.perf_counter() - t:.1f} s", flush=True)
            return
    raise FileNotFoundError(f"CIFAR-10 is not under {root} and no compact copy was found in {ctx.args.compact} or "
                            "../shared/data (benchmarks/prepare_gpu_bundle.sh makes one)")


def child_env(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in paths if p != str(ROOT)])
    env.pop("IN_TEST", None)        # the training notebook would switch itself to its own smoke run
    return env


def run_killable(cmd, timeout: float, **kw) -> tuple[int | None, str]:
    "(exit status or None on timeout, the output's tail); the command and its children killed at the timeout."
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=child_env(), **kw)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        print(out[-4000:], flush=True)
        return None, out
    print(out[-4000:], flush=True)     # into the log: what the command said, whatever happened
    return proc.returncode, out


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or [""])[-1][:400]


def read_csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def record_dirs(run_dir: Path) -> list:
    return sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if Path(run_dir).is_dir() else []


# ---------------------------------------------------------------------------------------------------------------
# 1. env

def conv_and_matmul_error(device, cfg) -> dict:
    "Max relative error of a float32 convolution and matrix product against float64, with the flags as they are."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg["n"], cfg["c"], cfg["hw"], cfg["hw"], generator=g)
    w = torch.randn(cfg["c"], cfg["c"], 3, 3, generator=g) / math.sqrt(9 * cfg["c"])
    a, b = (torch.randn(cfg["m"], cfg["m"], generator=g) for _ in range(2))
    out = {}
    for name, f, args in (("conv", lambda u, v: F.conv2d(u, v, padding=1), (x, w)),
                          ("matmul", torch.matmul, (a, b))):
        ref = f(*(t.to(device, torch.float64) for t in args))
        got = f(*(t.to(device) for t in args))
        out[name] = ((got.double() - ref).abs().max() / ref.abs().max()).item()
    return out


def section_env(ctx: Ctx, ck: Checks):
    dev = ctx.device
    if ctx.cuda and not ck.check("CUDA is available", torch.cuda.is_available(), torch.version.cuda):
        return
    info = dict(ctx.rows_base(), device=dev)
    info["nvidia_smi"] = nvidia_smi(["name", "driver_version", "pstate", "clocks.sm", "clocks.max.sm", "clocks.mem",
                                     "clocks.max.mem", "power.draw", "power.limit", "temperature.gpu",
                                     "memory.total", "compute_mode"])
    if ctx.cuda:
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = dict(name=props.name, capability=f"{props.major}.{props.minor}",
                           memory_gib=round(props.total_memory / 2**30, 1),
                           multiprocessors=props.multi_processor_count, device_count=torch.cuda.device_count())
    info["math_modes_at_start"] = math_modes()
    info["trainer_defaults"] = trainer_defaults(dev)
    tf32, why = tf32_available(dev)
    info["tf32_precision_available"] = tf32
    if why:
        ck.note(why)
    probe = dict(as_found=conv_and_matmul_error(dev, ctx.cfg["probe"]))
    info["math_modes_as_found"] = math_modes()
    info["fp32_math_ieee"] = set_math(dev, "fp32")
    probe["tf32_off"] = conv_and_matmul_error(dev, ctx.cfg["probe"])
    if ctx.cuda:
        info["fp32_math_tf32"] = set_math(dev, "tf32")
        probe["tf32_on"] = conv_and_matmul_error(dev, ctx.cfg["probe"])
    info["tf32_probe_max_rel_error"] = probe
    _write_json(ctx.out / ENV_JSON, info)
    print(json.dumps(info, indent=1, default=str), flush=True)

    for key in ("torch", "cuda", "cudnn", "nccl", "driver") if ctx.cuda else ("torch",):
        ck.check(f"{key} version read", info.get(key) not in (None, ""), info.get(key))
    ck.check("fp32 math with TF32 off is IEEE fp32 (convolution and matrix product within 1e-5 of float64)",
             max(probe["tf32_off"].values()) < 1e-5, probe["tf32_off"], "< 1e-5")
    if ctx.cuda and torch.cuda.get_device_capability(dev)[0] >= 8:
        # the probe must tell the modes apart, or its IEEE reading above proves nothing
        ck.check("TF32 on is measurably coarser (tensor cores in use)", min(probe["tf32_on"].values()) > 1e-5,
                 probe["tf32_on"], "> 1e-5 (about 1e-3)")
    as_found = "TF32" if max(probe["as_found"].values()) > 1e-5 else "IEEE"
    ck.note(f"fp32 as found in a fresh process computes like {as_found}: {probe['as_found']}")


# ---------------------------------------------------------------------------------------------------------------
# 2. smoke and 5. sanity: the training notebook through papermill

def papermill(ctx: Ctx, notebook: str, params: dict, run_dir: Path, timeout: float):
    cmd = [sys.executable, "-m", "papermill", str(ROOT / "nbs" / "train.ipynb"), str(ctx.out / notebook), "--cwd",
           str(ROOT), "--no-progress-bar", "-p", "run_dir", str(run_dir)]
    for k, v in params.items():
        cmd += ["-p", k, str(v)]
    print("  $ " + " ".join(cmd), flush=True)
    return run_killable(cmd, timeout)


def check_notebook_run(ck: Checks, rc, output: str, run_dir: Path):
    "The notebook ran to its end, wrote one completed record with finite training losses; (params, summary, rows)."
    if not ck.check("papermill ran the notebook to its end", rc == 0,
                    "ok" if rc == 0 else f"exit {rc}: {last_line(output)}"):
        return None
    records = record_dirs(run_dir)
    if not ck.check("one run record written", len(records) == 1, [r.name for r in records]):
        return None
    path = records[0]
    params = json.loads((path / "params.json").read_text())
    summary = json.loads((path / "summary.json").read_text())
    rows = read_csv(path / "metrics.csv")
    ck.check("the run completed", summary["status"] == "completed", summary["status"])
    losses = [r["train_loss"] for r in rows]
    ck.check("every training loss is finite", rows and all(finite(x) for x in losses), losses)
    ck.data(record=path.name, summary=summary, provenance={k: params.get(k) for k in (
        "device", "device_name", "precision", "channels_last", "versions", "fp32_math", "cuda", "cudnn", "nccl",
        "driver", "cpu_capability", "git_commit") if k in params})
    return params, summary, rows


def section_smoke(ctx: Ctx, ck: Checks):
    ensure_cifar10(ctx)
    params = dict(profile="smoke", **ctx.cfg["smoke"])
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    if ctx.device != auto:
        params["device"] = ctx.device
    expected = trainer_defaults(ctx.device, **ctx.cfg["smoke"])
    run_dir = ctx.tmp / "smoke-runs"
    rc, output = papermill(ctx, SMOKE_NB, params, run_dir, ctx.cfg["limits"]["smoke"])
    got = check_notebook_run(ck, rc, output, run_dir)
    if got is None:
        return
    p = got[0]
    ck.check("the record's device", p["device"] == ctx.device, p["device"], ctx.device)
    ck.check("the record's precision is the default", p["precision"] == expected["precision"], p["precision"],
             expected["precision"])
    ck.check("the record's layout is the default", p["channels_last"] == expected["channels_last"],
             f"channels_last={p['channels_last']}", f"channels_last={expected['channels_last']}")
    if ctx.cuda:
        ck.check("channels_last on this GPU", p["channels_last"] is True, p["channels_last"], True)


def section_sanity(ctx: Ctx, ck: Checks):
    ensure_cifar10(ctx)
    cfg = ctx.cfg["sanity"]
    params = dict(cfg["params"])
    if ctx.device != ("cuda" if torch.cuda.is_available() else "cpu"):
        params["device"] = ctx.device
    run_dir = ctx.tmp / "sanity-runs"
    rc, output = papermill(ctx, SANITY_NB, params, run_dir, ctx.cfg["limits"]["sanity"])
    got = check_notebook_run(ck, rc, output, run_dir)
    if got is None:
        return
    p, summary, rows = got
    base = ctx.rows_base()
    out = ctx.out / SANITY_CSV
    out.unlink(missing_ok=True)
    append_csv(out, [dict(r, run_id=p["run_id"], precision=p["precision"], channels_last=p["channels_last"], **base)
                     for r in rows])
    error = summary.get("final_test_error")
    if cfg["max_error"] is None:
        ck.note(f"tiny: no threshold on the test error ({error}); the losses' finiteness is the check")
    else:
        ck.check(f"final test error <= {cfg['max_error']:.0%}", error is not None and error <= cfg["max_error"],
                 error, f"<= {cfg['max_error']}")
    ck.data(images_per_second=[r.get("images_per_second") for r in rows])


# ---------------------------------------------------------------------------------------------------------------
# 3. resume

def _tensors(obj, prefix=""):
    if torch.is_tensor(obj):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def run_differences(a: Path, b: Path) -> list:
    """What differs between two finished records: metric rows (timing left out) and every tensor of the last
    checkpoint's model, optimiser and random-number generators, bit for bit."""
    timing = {"seconds", "images_per_second"}
    rows_a, rows_b = ([{k: v for k, v in r.items() if k not in timing} for r in read_csv(p / "metrics.csv")]
                      for p in (a, b))
    diff = [] if rows_a == rows_b else ["metrics.csv"]
    sa, sb = (torch.load(p / "checkpoint.pt", map_location="cpu", weights_only=False) for p in (a, b))
    ta, tb = (dict(_tensors({k: s[k] for k in ("model", "optimizer", "rng")})) for s in (sa, sb))
    if ta.keys() != tb.keys():
        return diff + ["checkpoint keys"]
    return diff + [k for k in ta if not (ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape
                                         and torch.equal(ta[k], tb[k]))]


def section_resume(ctx: Ctx, ck: Checks):
    from identity_study.train import train
    c = dict(ctx.cfg["resume"])
    stop_after = c.pop("stop_after")
    base = dict(unit="preact", deterministic=True, progress=False, device=ctx.device, **c)
    configs = {"preact fp32": dict(precision="fp32"), "preact bf16": dict(precision="bf16"),
               "dropout_shortcut fp32": dict(unit="dropout_shortcut", precision="fp32")}
    tf32, why = tf32_available(ctx.device)
    if tf32:
        configs["preact tf32"] = dict(precision="tf32")
    else:
        ck.note(why)
    for name, extra in configs.items():
        cfg, slug = {**base, **extra}, name.replace(" ", "-")
        t = time.perf_counter()
        straight = train(**cfg, run_dir=ctx.tmp / "straight" / slug)
        part = train(**cfg, run_dir=ctx.tmp / "resumed" / slug, stop_after=stop_after)
        ck.check(f"{name}: stopped part-way", part.status == "interrupted"
                 and 0 < part.summary["iterations_done"] < cfg["iterations"],
                 f"{part.status} at {part.summary['iterations_done']}")
        resumed = train(**cfg, run_dir=ctx.tmp / "resumed" / slug)
        diff = run_differences(straight.path, resumed.path)
        ck.check(f"{name}: resumed run bit-identical to the straight one", straight.status == resumed.status ==
                 "completed" and not diff, f"{len(diff)} differences {diff[:5]}" if diff else
                 f"identical ({time.perf_counter() - t:.1f} s)")


# ---------------------------------------------------------------------------------------------------------------
# 4. ddp

def ddp_worker(cfg: dict):
    "One rank under torchrun: initialise the group itself (so a refusal shows here), one all_reduce, then train()."
    import torch.distributed as dist

    from identity_study.train import train
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    device = cfg["device"]
    if device.startswith("cuda"):
        if torch.cuda.device_count() < world:
            # every rank on the one GPU there is: the trainer takes cuda:LOCAL_RANK
            os.environ["LOCAL_RANK"] = "0"
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
        torch.cuda.set_device(device)
    kw = dict(device_id=torch.device(device)) if cfg["backend"] == "nccl" else {}
    dist.init_process_group(cfg["backend"], **kw)
    t = torch.full((1,), float(rank + 1), device=device)
    dist.all_reduce(t)
    record = train(**cfg["train"], device=cfg["device"], run_dir=cfg["run_dir"])
    metrics = record.metrics.drop(columns=["seconds", "images_per_second"]).to_dict("list")
    Path(cfg["out_dir"], f"rank{rank}.json").write_text(json.dumps(dict(
        status=record.status, metrics=metrics, world=world, all_reduce=t.item(), device=device,
        backend=dist.get_backend()), default=str))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(ctx: Ctx, backend: str, n: int, tag: str) -> dict:
    c = dict(ctx.cfg["ddp"])
    timeout = c.pop("timeout")
    c.pop("one_process")
    run_dir, out_dir = ctx.tmp / f"ddp-{tag}" / "runs", ctx.tmp / f"ddp-{tag}" / "ranks"
    out_dir.mkdir(parents=True)
    cfg = dict(backend=backend, device=ctx.device, run_dir=str(run_dir), out_dir=str(out_dir),
               train=dict(unit="preact", precision="fp32", deterministic=True, progress=False, **c))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
           str(free_port()), os.path.abspath(__file__), "--ddp-worker", json.dumps(cfg)]
    print(f"  $ torchrun --nproc_per_node {n} ({backend})", flush=True)
    t = time.perf_counter()
    rc, output = run_killable(cmd, timeout)
    ranks = [json.loads(p.read_text()) for p in sorted(out_dir.glob("rank*.json"))]
    return dict(rc=rc, output=output, ranks=ranks, records=record_dirs(run_dir), seconds=time.perf_counter() - t)


def section_ddp(ctx: Ctx, ck: Checks):
    nccl = "nccl" if ctx.cuda else "gloo"
    if not ctx.cuda:
        ck.note("on the CPU gloo stands in for NCCL")
    if ctx.cfg["ddp"]["one_process"]:
        one = torchrun(ctx, nccl, 1, f"{nccl}1")
        ck.check(f"one {nccl} process under torchrun: group, all_reduce and run", one["rc"] == 0
                 and len(one["ranks"]) == 1 and one["ranks"][0]["all_reduce"] == 1.0
                 and one["ranks"][0]["status"] == "completed",
                 f"{one['seconds']:.0f} s" if one["rc"] == 0 else f"exit {one['rc']}: {last_line(one['output'])}")
        if one["rc"] == 0:
            ck.note("with one process the trainer takes its single-process path (no DDP wrapper); the NCCL group "
                    "and its all_reduce are the worker's own")
    two = torchrun(ctx, nccl, 2, f"{nccl}2")
    backend = nccl
    if two["rc"] != 0 and ctx.cuda:
        ck.note(f"NCCL with two processes did not run ({'timeout' if two['rc'] is None else 'refused'}: "
                f"{last_line(two['output'])}); two processes on gloo with CUDA tensors instead")
        two, backend = torchrun(ctx, "gloo", 2, "gloo2"), "gloo"
    ck.data(two_process_backend=backend, two_process_gpus=torch.cuda.device_count() if ctx.cuda else 0)
    if not ck.check(f"two processes ({backend}) ran to the end", two["rc"] == 0 and len(two["ranks"]) == 2,
                    f"{two['seconds']:.0f} s" if two["rc"] == 0 else f"exit {two['rc']}: {last_line(two['output'])}"):
        return
    r0, r1 = two["ranks"]
    ck.check("all_reduce over two ranks", r0["all_reduce"] == r1["all_reduce"] == 3.0, r0["all_reduce"], 3.0)
    ck.check("both ranks completed with the same metrics", r0["status"] == r1["status"] == "completed"
             and r0["metrics"] == r1["metrics"], f"{r0['status']}/{r1['status']}")
    ck.check("one record, written by rank 0", len(two["records"]) == 1, [p.name for p in two["records"]])
    if two["records"]:
        p = json.loads((two["records"][0] / "params.json").read_text())
        ck.check("the record says two processes", p.get("world_size") == 2, p.get("world_size"), 2)
    if ctx.cuda:
        ck.check("the ranks trained on the GPU", all(r["device"].startswith("cuda") for r in two["ranks"]),
                 [r["device"] for r in two["ranks"]])


# ---------------------------------------------------------------------------------------------------------------
# 6. throughput, 7. resnet1001, 8. compile

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


def section_throughput(ctx: Ctx, ck: Checks):
    from torchvision import transforms

    from identity_study.data import DeviceCifar, cifar_dataset, normalization_stats
    from identity_study.models import resnet
    ensure_cifar10(ctx)
    c, dev = ctx.cfg["throughput"], ctx.device
    bs, torch_defaults = c["batch_size"], TorchDefaults()
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
    base_row = dict(ctx.rows_base(), section="throughput", batch_size=bs, repeats=c["repeats"], steps=c["steps"],
                    warmup=c["warmup"], workers=c["workers"], trainer_default=f"{default['precision']}/"
                    f"{'channels_last' if default['channels_last'] else 'nchw'}")
    typical_name = f"typical_w{c['workers']}"
    for depth in c["nets"]:
        torch.manual_seed(0)
        net = resnet("preact", depth, "cifar10")
        variants = {}     # name: (pipeline, precision, layout, step, batches, math setter)
        for precision in precisions:
            for cl in (False, True):
                layout = "channels_last" if cl else "nchw"
                for pipeline in ("trainer", "bare"):
                    model = copy.deepcopy(net).to(dev, memory_format=torch.channels_last if cl else
                                                  torch.contiguous_format)
                    batches = (data.batch(i, bs) for i in itertools.count()) if pipeline == "trainer" else \
                        itertools.repeat(fixed)
                    variants[f"{pipeline}_{precision}_{layout}"] = (
                        pipeline, precision, layout, trainer_step(model, precision, cl, dev), batches,
                        lambda p=precision: set_math(dev, p))
        for pipeline, batches in ((typical_name, typical_batches), ("typical_bare", itertools.repeat(fixed))):
            variants[pipeline] = (pipeline, "fp32", "nchw", typical_step(copy.deepcopy(net).to(dev), dev), batches,
                                  lambda: torch_defaults.restore(dev))
        seconds = {v: [] for v in variants}
        math_of = {}
        for r in range(c["repeats"]):
            for name, (_, _, _, step, batches, set_mode) in variants.items():   # interleaved: each once per repeat
                math_of[name] = set_mode()
                run_steps(ctx, step, batches, c["warmup"])
                seconds[name].append(run_steps(ctx, step, batches, c["steps"]) / c["steps"])
            print(f"  preact-{depth} repeat {r}: " + ", ".join(f"{v} {bs / s[-1]:,.0f}" for v, s in seconds.items()),
                  flush=True)
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
                             layout=layout, status="ok" if finite(loss) else "nan loss",
                             images_per_second=round(bs / statistics.median(sec), 1),
                             ips_repeats=";".join(f"{bs / s:.1f}" for s in sec),
                             step_ms=round(1e3 * statistics.median(sec), 3),
                             bare_images_per_second=round(bs / statistics.median(seconds[twin]), 1) if twin else None,
                             data_share=round(statistics.median(1 - b / f for b, f in zip(seconds[twin], sec)), 4)
                             if twin else None,
                             device_busy=None if busy is None else round(busy, 4),
                             ratio_vs_typical=round(statistics.median(
                                 t / s for t, s in zip(seconds[typical_name], sec)), 3) if pipeline in (
                                 "trainer", typical_name) else None,
                             fp32_math=math_of[name]))
        append_csv(ctx.out / THROUGHPUT_CSV, rows)
        print(table(rows, ["variant", "images_per_second", "data_share", "device_busy", "ratio_vs_typical",
                           "status"]), flush=True)
        ck.check(f"preact-{depth}: every variant's loss finite", all(r["status"] == "ok" for r in rows),
                 [r["variant"] for r in rows if r["status"] != "ok"] or f"{len(rows)} variants")
        head = next(r for r in rows if r["variant"] == f"trainer_{default['precision']}_"
                    f"{'channels_last' if default['channels_last'] else 'nchw'}")
        ck.data(**{f"preact-{depth}": dict(trainer_default=head["variant"], images_per_second=head[
            "images_per_second"], ratio_vs_typical=head["ratio_vs_typical"], device_busy=head["device_busy"],
            typical_images_per_second=next(r for r in rows if r["variant"] == typical_name)["images_per_second"])})
        if ctx.cuda:
            ck.check(f"preact-{depth}: GPU busy share of the trainer's default measured",
                     head["device_busy"] is not None and 0 < head["device_busy"] <= 1.05, head["device_busy"],
                     "in (0, 1]")
        del variants


def section_resnet1001(ctx: Ctx, ck: Checks):
    from identity_study.models import resnet
    from identity_study.train import autocast_for, train_step
    c, dev = ctx.cfg["resnet1001"], ctx.device
    cl = trainer_defaults(dev)["channels_last"]
    memory_format = torch.channels_last if cl else torch.contiguous_format
    if ctx.cuda:
        torch.backends.cudnn.benchmark = True
    bs = c["batch_size"]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(bs, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (bs,), generator=g).to(dev)
    base_row = dict(ctx.rows_base(), section="resnet1001", pipeline="bare", batch_size=bs, steps=c["steps"],
                    warmup=c["warmup"], layout="channels_last" if cl else "nchw")
    def measure(row: dict, precision: str) -> str:
        "Warm-up and timed steps of one configuration into `row`; returns what its check reports."
        row["fp32_math"] = set_math(dev, precision)
        torch.manual_seed(0)
        model = resnet(row["net"].split("-")[0], c["depth"], "cifar10").to(dev, memory_format=memory_format)
        opt, autocast, losses = sgd(model), autocast_for(dev, precision), []
        if ctx.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

        def step(a, b):
            losses.append(train_step(model, opt, a, b, autocast, memory_format)[1])
        run_steps(ctx, step, itertools.repeat((x, y)), c["warmup"])
        sec = run_steps(ctx, step, itertools.repeat((x, y)), c["steps"]) / c["steps"]
        peak = torch.cuda.max_memory_allocated(dev) / 2**30 if ctx.cuda else None
        row.update(status="ok" if all(finite(v.item()) for v in losses) else "nan loss", step_ms=round(1e3 * sec, 2),
                   images_per_second=round(bs / sec, 1), peak_gib=None if peak is None else round(peak, 2),
                   projected_64k_h=round(PAPER_ITERATIONS * sec / 3600, 2))
        return f"{1e3 * sec:.0f} ms/step, peak {row['peak_gib']} GiB, 64k iterations {row['projected_64k_h']} h"

    for unit in ("preact", "original"):
        for precision in ("fp32", "bf16"):
            name = f"{unit}-{c['depth']} {precision}"
            row = dict(base_row, net=f"{unit}-{c['depth']}", variant=precision, precision=precision)
            try:
                what = measure(row, precision)
                ck.check(f"{name}: {bs} images per step fit and train with finite losses", row["status"] == "ok",
                         what)
            except torch.cuda.OutOfMemoryError as e:
                row.update(status="oom", note=str(e).splitlines()[0][:300])
                ck.check(f"{name}: fits in the GPU's memory", False, row["note"])
            append_csv(ctx.out / THROUGHPUT_CSV, [row])


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
    return torch.compile(model, backend=backend)


def section_compile(ctx: Ctx, ck: Checks):
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
    fp32_math = set_math(dev, precision)
    autocast = autocast_for(dev, precision)
    bs, k = c["batch_size"], c["agree_steps"]
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(bs, 3, 32, 32, generator=g).to(dev), torch.randint(0, 10, (bs,), generator=g).to(dev))
               for _ in range(k)]
    base_row = dict(ctx.rows_base(), section="compile", pipeline="bare", batch_size=bs, precision=precision,
                    layout="channels_last" if cl else "nchw", steps=c["steps"], fp32_math=fp32_math)
    for mode, depth in c["configs"]:
        name = f"preact-{depth} {mode}"
        row = dict(base_row, net=f"preact-{depth}", variant=mode)
        if mode == "model-cudagraphs" and not ctx.cuda:
            ck.note(f"{name}: CUDA graphs need a GPU; not run here")
            continue
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
        row.update(status="ok" if all(map(finite, lc)) else "nan loss", images_per_second=round(bs / sec, 1),
                   step_ms=round(1e3 * sec, 3), compile_s=round(max(0.0, first_s - k * sec), 1),
                   speedup_vs_eager=round(eager_s / sec, 3), loss_max_rel_diff=f"{rel:.2e}",
                   recompiles=watch.recompiles, recompile_limit_hits=watch.limit_hits,
                   unique_graphs=watch.unique_graphs, cudagraph_skips=watch.cudagraph_skips,
                   note="" if backend == "inductor" else f"backend {backend}")
        append_csv(ctx.out / THROUGHPUT_CSV, [row])
        print(f"  {name}: compile {row['compile_s']} s, {row['images_per_second']:,.0f} img/s "
              f"({row['speedup_vs_eager']}x eager), {watch.recompiles} recompiles, {watch.unique_graphs} graphs, "
              f"{watch.limit_hits} recompile-limit hits, {watch.cudagraph_skips} CUDA-graph skips", flush=True)
        ck.check(f"{name}: losses agree with eager over {k} steps", rel <= tolerance and row["status"] == "ok",
                 f"max relative difference {rel:.2e}", f"<= {tolerance}")
        ck.check(f"{name}: no code object fell back to eager at the recompile limit", watch.limit_hits == 0,
                 f"{watch.recompiles} recompiles, {watch.limit_hits} limit hits (recompile_limit "
                 f"{torch._dynamo.config.recompile_limit})")
        del net, step, eager_step


SECTION_FUNCTIONS = dict(env=section_env, smoke=section_smoke, resume=section_resume, ddp=section_ddp,
                         sanity=section_sanity, throughput=section_throughput, resnet1001=section_resnet1001,
                         compile=section_compile)


# ---------------------------------------------------------------------------------------------------------------
# the driver

def _section_child(name: str, args, result: Path, tmp: str, log: Path):
    "The body of a section's process: its own session (so that a timeout kills all it started), output to the log."
    os.setsid()
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout.reconfigure(line_buffering=True)
    args = argparse.Namespace(**{**vars(args), "tmp": tmp})
    ck = Checks(name, result)
    print(f"{name} on {args.device}{' (tiny)' if args.tiny else ''}", flush=True)
    try:
        SECTION_FUNCTIONS[name](Ctx(args), ck)
        ck.finish()
    except Exception as e:
        traceback.print_exc()
        ck.finish(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500])


def run_section(name: str, args, limit: float) -> dict:
    """Section `name` in a process of its own (its own CUDA context, flags and allocator), killed at `limit` seconds.
    Forked from this process, which has imported torch and the package but never touched CUDA: a fresh interpreter
    would spend seconds of every section importing them again."""
    import multiprocessing
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix=f"gpu-acceptance-{name}-", ignore_cleanup_errors=True) as tmp:
        result = Path(tmp) / "result.json"
        t, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out / LOG, "a") as log:
            log.write(f"\n===== {name} (limit {limit:.0f} s) {time.strftime('%H:%M:%S')}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        proc = multiprocessing.get_context("fork").Process(target=_section_child,
                                                           args=(name, args, result, tmp, out / LOG))
        proc.start()
        proc.join(timeout=limit)
        status = None
        if proc.is_alive():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.join()
            status = "timeout"
        res = json.loads(result.read_text()) if result.exists() else dict(section=name, checks=[], notes=[])
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the CPU time of the section and of the processes it waited for (papermill's kernel, torchrun's ranks)
        res["cpu_s"] = round(now.ru_utime + now.ru_stime - cpu.ru_utime - cpu.ru_stime, 1)
        res["seconds"], res["limit_s"] = round(time.monotonic() - t, 1), round(limit)
        if status:
            res.update(status=status, error=f"killed at its time limit ({limit:.0f} s); the checks above are "
                                            "those it finished")
        elif res.get("status") in (None, "running"):
            res.update(status="error", error=f"exit status {proc.exitcode} without a result (see {LOG})")
        return res


def summary_line(name: str, res: dict) -> str:
    checks = res.get("checks", [])
    failed = [c["check"] for c in checks if not c["ok"]]
    what = res.get("error") or (f"failed: {failed[0]}" if failed else "") or res.get("note", "")
    return (f"{name:>10}  {res['status']:>7}  {res.get('seconds', 0):6.1f} s (cpu {res.get('cpu_s', 0):5.1f} s)  "
            f"{sum(c['ok'] for c in checks)}/{len(checks)} checks  {what}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="gpu-acceptance", help="output folder (at most 7 files)")
    ap.add_argument("--only", help=f"comma-separated sections to run ({','.join(SECTIONS)}); the others' results "
                                   "in --out are kept")
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--tiny", action="store_true", help="every section at toy size (a dry run, e.g. on a CPU)")
    ap.add_argument("--budget-s", type=float, help="wall-time budget of all sections (465 s; tiny: 400 s)")
    ap.add_argument("--compact", default=str(ROOT / ".gpu_data"),
                    help="folder with make_torchvision_layout.py and compact/cifar10, used when CIFAR-10 is missing")
    ap.add_argument("--ddp-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.ddp_worker:
        ddp_worker(json.loads(args.ddp_worker))
        return 0
    only = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"unknown section {unknown[0]!r}; valid sections: {', '.join(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TINY if args.tiny else FULL
    budget = args.budget_s or cfg["budget_s"]
    deadline = time.monotonic() + budget
    path = out / CHECKS_JSON
    state = json.loads(path.read_text()) if path.exists() else {}
    previous = state.get("sections", {})
    state = dict(command=" ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
                 device=args.device, tiny=args.tiny, budget_s=budget, started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 sections=previous)
    print(f"GPU acceptance on {args.device}{' (tiny)' if args.tiny else ''}: {', '.join(only)}; budget {budget:.0f} s;"
          f" output {out}", flush=True)
    for name in SECTIONS:
        if name not in only:
            continue
        left = deadline - time.monotonic()
        limit = min(cfg["limits"][name], left)
        res = (run_section(name, args, limit) if limit >= MIN_SECTION_S else
               dict(section=name, status="skipped", checks=[], notes=[], seconds=0.0,
                    error=f"time budget spent ({left:.0f} s left)"))
        state["sections"][name] = res
        state["sections"] = {s: state["sections"][s] for s in SECTIONS if s in state["sections"]}
        state["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        _write_json(path, state)
        line = summary_line(name, res)
        print(line, flush=True)
        with open(out / LOG, "a") as log:
            log.write(line + "\n")
    ran = [state["sections"][s] for s in only]
    print(f"\n{sum(r['status'] == 'ok' for r in ran)}/{len(ran)} sections ok; results in {path}", flush=True)
    return 0 if all(r["status"] == "ok" for r in ran) else 1


if __name__ == "__main__":
    sys.exit(main())
