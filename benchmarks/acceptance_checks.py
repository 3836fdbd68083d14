"""The checks of `gpu_acceptance.py`, apart from its timings: what a section's verdict is computed from, how a section
runs under its time limit (and how everything it started is killed at that limit), how the budget is shared out,
and which rows a throughput ratio compares. Standard library and torch only (identity_study is imported where a
function needs it), so that tests/test_gpu_acceptance.py imports this file by its path and tests every part on a CPU.
"""
from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
import resource
import signal
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
    timing = {"seconds", "images_per_second"}
    rows_a, rows_b = ([{k: v for k, v in r.items() if k not in timing} for r in read_csv(Path(p) / "metrics.csv")]
                      for p in (a, b))
    diff = [] if rows_a == rows_b else ["metrics.csv"]
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


def _proc_table() -> dict:
    "pid -> (state, ppid) of every process in /proc."
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            except (OSError, ValueError, IndexError):
                continue
            table[int(d)] = (state, int(ppid))
    return table


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
    table = _proc_table()
    found = {root} if root in table else set()
    if token:
        for pid in table:
            t = _token_of(pid)
            if t is not None and (t == token or t.startswith(token + "/")):
                found.add(pid)
    grew = True
    while grew:
        grew = False
        for pid, (_, ppid) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return {p for p in found if p != os.getpid() and table[p][0] not in ("Z", "X")}


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
