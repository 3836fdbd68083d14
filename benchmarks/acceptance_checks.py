"""The checks of `gpu_acceptance.py`, apart from its timings: what each verdict is computed from (the TF32 probe, a
resumed record against a straight one, which rows a throughput ratio compares), how a section runs under its time
limit (and how everything it started is killed at that limit), how the budget is shared out, and the sections that
prove the GPU path rather than time it: env, smoke, sanity, resume and ddp. What the package has, it comes from the
package: the device's versions and fp32 math (identity_study.data), a record (identity_study.records.load_record), a
run of the training notebook (identity_study.sweep_plan.run_notebook). tests/test_gpu_acceptance.py imports this file
by its path (after _common.py, which it imports) and tests it on a CPU. `gpu_acceptance.py` runs the sections, with its
own timing sections (compile, throughput, resnet1001) among them; torchrun starts this file for a rank of `ddp`.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import ROOT, append_csv, descendants, machine, nvidia_smi, process_table

ENV_JSON, CHECKS_JSON, THROUGHPUT_CSV, SANITY_CSV = "env.json", "checks.json", "throughput.csv", "sanity_metrics.csv"
SMOKE_NB, SANITY_NB, LOG = "smoke.ipynb", "sanity.ipynb", "acceptance.log"

# ---------------------------------------------------------------------------------------------------------------
# one section's result


def write_json(path: Path, obj):
    "Write `obj` as JSON, atomically (a reader never sees half a file)."
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str, allow_nan=True) + "\n")
    os.replace(tmp, path)


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
            write_json(self.path, self.result)


def read_csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def last_line(text: str) -> str:
    "The last line that names an error, else the last line: what a failed command's check reports."
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return (errors or lines or [""])[-1][:400]


def record_dirs(run_dir: Path) -> list:
    return sorted(p for p in Path(run_dir).iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if Path(run_dir).is_dir() else []


# ---------------------------------------------------------------------------------------------------------------
# fp32 math: the flags, and the probe that tells IEEE fp32 from TF32

FLAG_PATHS = ["backends.fp32_precision", "backends.cuda.matmul.fp32_precision", "backends.cudnn.fp32_precision",
              "backends.cudnn.conv.fp32_precision", "backends.cuda.matmul.allow_tf32", "backends.cudnn.allow_tf32",
              "backends.mkldnn.matmul.fp32_precision", "backends.mkldnn.conv.fp32_precision"]


def math_modes() -> dict:
    """torch's fp32 math flags, each read on its own: the fp32_precision attributes exist only in newer torch, and
    reading a legacy getter (`allow_tf32`, `get_float32_matmul_precision`) after the new API set a flag raises."""
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
    try:
        out["float32_matmul_precision"] = torch.get_float32_matmul_precision()
    except Exception as e:
        out["float32_matmul_precision"] = f"unreadable ({type(e).__name__})"
    return out


def set_math(device: str, precision: str) -> str:
    """fp32 matrix products and convolutions as the trainer computes `precision`: TF32 for tf32, IEEE otherwise,
    through the trainer's own switch (identity_study.data.set_fp32_math); what it reads back, as one string."""
    from identity_study.data import set_fp32_math
    return " ".join(f"{k}={v}" for k, v in sorted(set_fp32_math(device, precision).items()))


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
        from identity_study.data import fp32_math
        for obj, attr, value in self.values.values():
            setattr(obj, attr, value)
        return " ".join(f"{k}={v}" for k, v in sorted(fp32_math(device).items())) + " (torch defaults)"


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


IEEE_BOUND = 1e-5      # IEEE fp32 sums of a few hundred products: about 1e-6; TF32's 10-bit mantissa: about 1e-3


def probe_verdicts(probe: dict, tensor_cores: bool) -> tuple[list, list]:
    """(checks, notes) of the TF32 probe: `probe` holds the probe's relative errors ({'conv': e, 'matmul': e}) with
    TF32 off ('tf32_off'), on ('tf32_on', on a GPU) and as a fresh process has the flags ('as_found').
    IEEE: both operations within IEEE_BOUND with TF32 off. The probe tells the modes apart when TF32 on is coarser
    in at least one of them: cuBLAS's fp32 matrix product takes TF32 tensor cores when allowed, while cuDNN may still
    pick a convolution algorithm without them, so a fine convolution with TF32 on is a note, not a failure."""
    checks, notes = [], []
    off = probe["tf32_off"]
    checks.append(("fp32 math with TF32 off is IEEE fp32 (convolution and matrix product within 1e-5 of float64)",
                   max(off.values()) < IEEE_BOUND, off, "< 1e-5"))
    on = probe.get("tf32_on")
    if tensor_cores and on is not None:
        checks.append(("TF32 on is measurably coarser in at least one probe (tensor cores in use)",
                       max(on.values()) > IEEE_BOUND, on, "> 1e-5 (about 1e-3) in conv or matmul"))
        notes += [f"TF32 on: {op} computes like {'TF32' if e > IEEE_BOUND else 'IEEE (no tensor cores chosen)'} "
                  f"({e:.2e})" for op, e in sorted(on.items())]
    found = probe.get("as_found")
    if found is not None:
        notes.append("fp32 as found in a fresh process: " + ", ".join(
            f"{op} like {'TF32' if e > IEEE_BOUND else 'IEEE'} ({e:.2e})" for op, e in sorted(found.items())))
    return checks, notes


# ---------------------------------------------------------------------------------------------------------------
# resume: what differs between two finished records

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
    from identity_study.records import load_record
    metrics = [load_record(p).metrics.drop(columns=["seconds", "images_per_second"], errors="ignore") for p in (a, b)]
    diff = [] if metrics[0].equals(metrics[1]) else ["metrics.csv"]
    sa, sb = (torch.load(Path(p) / "checkpoint.pt", map_location="cpu", weights_only=False) for p in (a, b))
    ta, tb = (dict(_tensors({k: s[k] for k in ("model", "optimizer", "rng")})) for s in (sa, sb))
    if ta.keys() != tb.keys():
        return diff + ["checkpoint keys"]
    return diff + [k for k in ta if not (ta[k].dtype == tb[k].dtype and ta[k].shape == tb[k].shape
                                         and torch.equal(ta[k], tb[k]))]


# ---------------------------------------------------------------------------------------------------------------
# throughput: which rows a ratio compares

def typical_variants(workers: int, tf32: bool) -> dict:
    """The typical pipeline's variants, name -> its fp32 math: as a fresh process computes (torch's defaults: on a
    GPU convolutions in TF32), and under the math a trainer row computes, so that a ratio compares pipelines and not
    arithmetic."""
    out = {f"typical_w{workers}": "defaults", f"typical_w{workers}_ieee": "ieee"}
    if tf32:
        out[f"typical_w{workers}_tf32"] = "tf32"
    return out


TRAINER_MATH = {"fp32": "ieee", "tf32": "tf32"}      # bf16 autocast has no typical counterpart


def pipeline_ratios(seconds: dict, rows: dict, workers: int) -> dict:
    """Per variant, the ratios of a trainer row's images per second (the medians over repeats of the paired step
    times, typical / trainer) to the typical pipeline's:
      ratio_same_math            against the typical pipeline under the same fp32 math (IEEE for fp32, TF32 for
                                 tf32; none for bf16): the pipeline's effect alone, the headline
      ratio_vs_typical_defaults  against the typical pipeline as a fresh process runs it (torch's defaults)
    `seconds`: variant -> seconds per step, one per repeat; `rows`: variant -> dict(pipeline=, precision=)."""
    defaults = f"typical_w{workers}"
    same = {m: v for v, m in typical_variants(workers, True).items() if m != "defaults" and v in seconds}

    def ratio(typical, variant):
        return round(statistics.median(t / s for t, s in zip(seconds[typical], seconds[variant])), 3)
    out = {}
    for variant, row in rows.items():
        if row["pipeline"] != "trainer":
            continue
        partner = same.get(TRAINER_MATH.get(row["precision"]))
        out[variant] = dict(ratio_same_math=ratio(partner, variant) if partner else None,
                            same_math_typical=partner,
                            ratio_vs_typical_defaults=ratio(defaults, variant) if defaults in seconds else None)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the budget: each section's time limit

def section_limit(name: str, order, caps: dict, reserves: dict, left: float) -> float:
    """Seconds section `name` may run with `left` seconds of the budget left and the sections after it in `order`
    still to run: up to its cap, without eating into the reserves (expected times) of the later ones, except that a
    section (the earlier, the more valuable) always gets its own reserve while the budget lasts."""
    later = list(order)[list(order).index(name) + 1:]
    spare = left - sum(reserves[s] for s in later)
    return max(0.0, min(caps[name], left, max(reserves[name], spare)))


# ---------------------------------------------------------------------------------------------------------------
# processes: a section, and every process it starts, killed at its limit

TOKEN_VAR = "IDENTITY_STUDY_ACCEPTANCE_TOKEN"


def _token_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read()
    except OSError:
        return None
    key = TOKEN_VAR.encode() + b"="
    for item in env.split(b"\0"):
        if item.startswith(key):
            return item[len(key):].decode(errors="replace")
    return None


def alive(pid: int) -> bool:
    "Whether `pid` is a process that still runs (a zombie has ended: only its exit status is left)."
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def started_processes(root: int | None = None, token: str | None = None) -> set:
    """The live processes a section (or one command of it) started: `root` and its descendants, and every process
    whose environment carries `token` (or a token under it, `token/...`). The token finds what left the tree: a
    process in a new session (papermill's kernel, torchrun's workers) whose parent died and which was re-parented."""
    table = process_table()
    roots = {root} if root is not None else set()
    if token:
        tokens = {pid: _token_of(pid) for pid in table}
        roots |= {pid for pid, t in tokens.items() if t is not None and (t == token or t.startswith(token + "/"))}
    return {p for p in descendants(roots, table) if p != os.getpid() and table[p][0] not in ("Z", "X")}


def kill_started(root: int | None = None, token: str | None = None, rounds: int = 50) -> list:
    """Stop, then kill, every process `started_processes` finds, until none is left; the pids killed. Stopped first,
    all of them, so that none forks a new one between the search and the kill."""
    killed = set()
    for _ in range(rounds):
        pids = started_processes(root, token)
        if not pids:
            break
        for sig in (signal.SIGSTOP, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        killed |= pids
        time.sleep(0.05)
    return sorted(killed)


def run_killable(cmd, timeout: float, env: dict | None = None, **kw) -> tuple[int | None, str]:
    """(exit status, or None at the timeout; the output); at the timeout, and after the command ends, every process
    it started is killed (a papermill run's kernel, torchrun's workers), found by a token in their environment."""
    token = f"{os.environ.get(TOKEN_VAR) or 'cmd'}/{uuid.uuid4().hex[:8]}"
    env = {**(os.environ if env is None else env), TOKEN_VAR: token}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env, **kw)
    rc = None
    try:
        out, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        kill_started(proc.pid, token)
        out, _ = proc.communicate()
    left = kill_started(None, token)
    if left:
        out += f"\n[killed {len(left)} process(es) the command left running: {left}]\n"
    print(out[-4000:], flush=True)     # into the log: what the command said, whatever happened
    return rc, out


def _section_child(name: str, target, result: Path, tmp: str, log: Path, token: str):
    "The body of a section's process: its own session, its token in its environment, output to the log."
    os.setsid()
    os.environ[TOKEN_VAR] = token
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout.reconfigure(line_buffering=True)
    ck = Checks(name, result)
    try:
        target(ck, tmp)
        ck.finish()
    except Exception as e:
        traceback.print_exc()
        ck.finish(error=f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:500])


def run_section(name: str, target, limit: float, log: Path) -> dict:
    """`target(checks, tmp)` in a process of its own, forked from this one (which has imported torch and the package
    but, on a GPU, never touched CUDA: a fresh interpreter would spend seconds importing them again), killed at
    `limit` seconds together with every process it started; the result (`Checks.result`) with status, seconds, CPU
    seconds and `killed`, the pids of the processes killed at the limit or left running after the section ended."""
    with tempfile.TemporaryDirectory(prefix=f"gpu-acceptance-{name}-", ignore_cleanup_errors=True) as tmp:
        result = Path(tmp) / "result.json"
        token = f"{os.getpid()}-{name}-{uuid.uuid4().hex[:8]}"
        t, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(log, "a") as f:
            f.write(f"\n===== {name} (limit {limit:.0f} s) {time.strftime('%H:%M:%S')}\n")
        sys.stdout.flush()
        sys.stderr.flush()
        proc = multiprocessing.get_context("fork").Process(target=_section_child,
                                                           args=(name, target, result, tmp, log, token))
        proc.start()
        proc.join(timeout=limit)
        timed_out = proc.is_alive()
        killed = kill_started(proc.pid, token)
        proc.join()
        res = json.loads(result.read_text()) if result.exists() else dict(section=name, checks=[], notes=[])
        now = resource.getrusage(resource.RUSAGE_CHILDREN)
        # the CPU time of the section and of the processes it waited for (papermill's kernel, torchrun's ranks)
        res["cpu_s"] = round(now.ru_utime + now.ru_stime - cpu.ru_utime - cpu.ru_stime, 1)
        res["seconds"], res["limit_s"] = round(time.monotonic() - t, 1), round(limit)
        res["killed"] = [p for p in killed if p != proc.pid]
        still = started_processes(None, token)
        if still:
            res["survivors"] = sorted(still)
        if timed_out:
            res.update(status="timeout", error=f"killed at its time limit ({limit:.0f} s) with the "
                                               f"{len(res['killed'])} process(es) it started; the checks above are "
                                               "those it finished")
        elif res.get("status") in (None, "running"):
            res.update(status="error", error=f"exit status {proc.exitcode} without a result (see the log)")
        return res


# ---------------------------------------------------------------------------------------------------------------
# what every section shares (the timing sections of gpu_acceptance.py too)

class Ctx:
    "One section's settings: the device, the size (full or tiny), the output and scratch folders, its deadline."
    def __init__(self, args, cfg: dict, tmp, deadline: float):
        self.args, self.device, self.tiny, self.cfg = args, args.device, args.tiny, cfg
        self.cuda = self.device.startswith("cuda")
        self.out, self.tmp, self.deadline = Path(args.out), Path(tmp), deadline
        if self.cuda and ":" in self.device and torch.cuda.is_available():
            torch.cuda.set_device(self.device)          # cuda:N: what a bare .cuda() or a library default takes

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def left(self) -> float:
        "Seconds until this section is killed."
        return self.deadline - time.monotonic()

    def rows_base(self) -> dict:
        "The columns that say where and with what a row was measured."
        return dict(machine(self.device), **versions(self.device))


def versions(device: str) -> dict:
    """cuDNN, NCCL and driver versions as a run record has them (identity_study.data.device_software), each None
    where it does not apply."""
    from identity_study.data import device_software
    software = device_software(device)
    return {k: software.get(k) for k in ("cudnn", "nccl", "driver")}


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


def layout_name(channels_last: bool) -> str:
    return "channels_last" if channels_last else "nchw"


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
            rc, out = run_killable([sys.executable, str(script), "--compact", str(base / "compact"), "--root",
                                    str(root), "--only", "cifar10"], max(10.0, ctx.left()), env=child_env())
            if rc != 0:
                raise RuntimeError(f"rebuilding CIFAR-10 from {base} failed: {last_line(out)}")
            # the package accepts the copy only if its md5s are the shipped ones: a DataError here names the file
            status = cifar_files_status("cifar10", root)
            print(f"  rebuilt CIFAR-10 under {root} from {base} in {time.perf_counter() - t:.1f} s ({status})",
                  flush=True)
            return
    raise FileNotFoundError(f"CIFAR-10 is not under {root} and no compact copy was found in {ctx.args.compact} or "
                            "../shared/data (benchmarks/prepare_gpu_bundle.sh makes one)")


def child_env(**extra) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in paths if p != str(ROOT)])
    env.pop("IN_TEST", None)        # the training notebook would switch itself to its own smoke run
    return env


# ---------------------------------------------------------------------------------------------------------------
# env

def section_env(ctx: Ctx, ck: Checks):
    dev = ctx.device
    if ctx.cuda and not ck.check("CUDA is available", torch.cuda.is_available(), torch.version.cuda):
        return
    info = dict(ctx.rows_base(), device=dev)
    info["nvidia_smi"] = nvidia_smi(["index", "name", "driver_version", "pstate", "clocks.sm", "clocks.max.sm",
                                     "clocks.mem", "clocks.max.mem", "power.draw", "power.limit", "temperature.gpu",
                                     "memory.total", "compute_mode"])
    tensor_cores = False
    if ctx.cuda:
        props = torch.cuda.get_device_properties(dev)
        info["gpu"] = dict(name=props.name, capability=f"{props.major}.{props.minor}",
                           memory_gib=round(props.total_memory / 2**30, 1),
                           multiprocessors=props.multi_processor_count, device_count=torch.cuda.device_count())
        tensor_cores = props.major >= 8          # TF32 from Ampere on
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
        info["math_modes_tf32_on"] = math_modes()
    info["tf32_probe_max_rel_error"] = probe
    write_json(ctx.out / ENV_JSON, info)
    print(json.dumps(info, indent=1, default=str), flush=True)

    for key in ("torch", "cuda", "cudnn", "nccl", "driver") if ctx.cuda else ("torch",):
        ck.check(f"{key} version read", info.get(key) not in (None, ""), info.get(key))
    checks, notes = probe_verdicts(probe, tensor_cores)
    for what, ok, value, expect in checks:
        ck.check(what, ok, value, expect)
    for text in notes:
        ck.note(text)


# ---------------------------------------------------------------------------------------------------------------
# smoke and sanity: the training notebook through papermill

def training_notebook(ctx: Ctx, notebook: str, params: dict, run_dir: Path, timeout: float) -> tuple:
    """nbs/train.ipynb with `params` through the sweep's own runner (identity_study.sweep_plan.run_notebook), its
    executed notebook copied to OUT/`notebook`; (exit status, or None at the timeout; the error). Papermill and its
    kernel carry the section's token, so a cut at the section's limit kills them too."""
    from identity_study.sweep_plan import run_notebook
    os.environ.pop("IN_TEST", None)     # (this section's own process) the notebook would switch to its own smoke run
    kept = ctx.tmp / f"{Path(notebook).stem}-executed"
    kept.mkdir()
    print(f"  papermill nbs/train.ipynb {' '.join(f'-p {k} {v}' for k, v in params.items())}", flush=True)
    try:
        result = run_notebook(dict(params, run_dir=str(run_dir)), kept, env=child_env(), timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"papermill did not finish in {timeout:.0f} s"
    for name in ("notebook.ipynb", "notebook.failed.ipynb"):
        if (kept / name).exists():
            shutil.copyfile(kept / name, ctx.out / notebook)
    print(f"  papermill: exit {result['returncode']} in {result['seconds']} s {result['error']}", flush=True)
    return result["returncode"], result["error"]


def check_notebook_run(ck: Checks, rc, error: str, run_dir: Path):
    """The notebook ran to its end, wrote one completed record with finite training losses; the record
    (identity_study.records.load_record)."""
    from identity_study.records import load_record
    if not ck.check("papermill ran the notebook to its end", rc == 0, "ok" if rc == 0 else f"exit {rc}: {error}"):
        return None
    records = record_dirs(run_dir)
    if not ck.check("one run record written", len(records) == 1, [r.name for r in records]):
        return None
    record = load_record(records[0])
    ck.check("the run completed", record.status == "completed", record.status)
    losses = record.metrics["train_loss"].tolist()
    ck.check("every training loss is finite", bool(losses) and all(finite(x) for x in losses), losses)
    ck.data(record=record.path.name, summary=record.summary, provenance={k: record.params.get(k) for k in (
        "device", "device_name", "precision", "channels_last", "versions", "fp32_math", "cuda", "cudnn", "nccl",
        "driver", "cpu_capability", "git_commit") if k in record.params})
    return record


def section_smoke(ctx: Ctx, ck: Checks):
    ensure_cifar10(ctx)
    params = dict(profile="smoke", **ctx.cfg["smoke"])
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    if ctx.device != auto:
        params["device"] = ctx.device
    expected = trainer_defaults(ctx.device, **ctx.cfg["smoke"])
    run_dir = ctx.tmp / "smoke-runs"
    rc, error = training_notebook(ctx, SMOKE_NB, params, run_dir, max(1.0, ctx.left() - 5))
    record = check_notebook_run(ck, rc, error, run_dir)
    if record is None:
        return
    p = record.params
    ck.check("the record's device", p["device"] == ctx.device, p["device"], ctx.device)
    ck.check("the record's precision is the default", p["precision"] == expected["precision"], p["precision"],
             expected["precision"])
    ck.check("the record's layout is the default", p["channels_last"] == expected["channels_last"],
             f"channels_last={p['channels_last']}", f"channels_last={expected['channels_last']}")


def section_sanity(ctx: Ctx, ck: Checks):
    ensure_cifar10(ctx)
    cfg = ctx.cfg["sanity"]
    params = dict(cfg["params"])
    if ctx.device != ("cuda" if torch.cuda.is_available() else "cpu"):
        params["device"] = ctx.device
    run_dir = ctx.tmp / "sanity-runs"
    rc, error = training_notebook(ctx, SANITY_NB, params, run_dir, max(1.0, ctx.left() - 5))
    record = check_notebook_run(ck, rc, error, run_dir)
    if record is None:
        return
    p, summary = record.params, record.summary
    rows = record.metrics.astype(object).where(record.metrics.notna(), None).to_dict("records")   # NaN: empty
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
# resume

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
# ddp

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
    timeout = max(5.0, min(c.pop("timeout"), ctx.left() - 5))
    c.pop("one_process")
    run_dir, out_dir = ctx.tmp / f"ddp-{tag}" / "runs", ctx.tmp / f"ddp-{tag}" / "ranks"
    out_dir.mkdir(parents=True)
    cfg = dict(backend=backend, device=ctx.device, run_dir=str(run_dir), out_dir=str(out_dir),
               train=dict(unit="preact", precision="fp32", deterministic=True, progress=False, **c))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port",
           str(free_port()), os.path.abspath(__file__), "--ddp-worker", json.dumps(cfg)]
    print(f"  $ torchrun --nproc_per_node {n} ({backend})", flush=True)
    t = time.perf_counter()
    rc, output = run_killable(cmd, timeout, env=child_env())
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
    gpus = torch.cuda.device_count() if ctx.cuda else 0
    backend = nccl
    if ctx.cuda and gpus < 2:
        # NCCL refuses two ranks on one device (a duplicate GPU): not tried, its seconds go to the gloo run
        ck.note(f"{gpus} GPU: two processes on gloo with CUDA tensors (NCCL needs a GPU per rank)")
        backend = "gloo"
    two = torchrun(ctx, backend, 2, f"{backend}2")
    if two["rc"] != 0 and backend == "nccl":
        ck.note(f"NCCL with two processes did not run ({'timeout' if two['rc'] is None else 'refused'}: "
                f"{last_line(two['output'])}); two processes on gloo with CUDA tensors instead")
        two, backend = torchrun(ctx, "gloo", 2, "gloo2"), "gloo"
    ck.data(two_process_backend=backend, two_process_gpus=gpus)
    if not ck.check(f"two processes ({backend}) ran to the end", two["rc"] == 0 and len(two["ranks"]) == 2,
                    f"{two['seconds']:.0f} s" if two["rc"] == 0 else
                    f"exit {two['rc']}: {last_line(two['output'])}"):
        return
    r0, r1 = two["ranks"]
    ck.check("all_reduce over two ranks", r0["all_reduce"] == r1["all_reduce"] == 3.0, r0["all_reduce"], 3.0)
    ck.check("both ranks completed with the same metrics", r0["status"] == r1["status"] == "completed"
             and r0["metrics"] == r1["metrics"], f"{r0['status']}/{r1['status']}")
    ck.check("one record, written by rank 0", len(two["records"]) == 1, [p.name for p in two["records"]])
    if two["records"]:
        from identity_study.records import load_record
        p = load_record(two["records"][0]).params
        ck.check("the record says two processes", p.get("world_size") == 2, p.get("world_size"), 2)
    if ctx.cuda:
        ck.check("the ranks trained on the GPU", all(r["device"].startswith("cuda") for r in two["ranks"]),
                 [r["device"] for r in two["ranks"]])


if __name__ == "__main__":          # one rank of the ddp section, under torchrun
    if sys.argv[1:2] != ["--ddp-worker"]:
        sys.exit("acceptance_checks.py is a module of gpu_acceptance.py; run that (torchrun starts this file with "
                 "--ddp-worker for a rank of its ddp section)")
    ddp_worker(json.loads(sys.argv[2]))
