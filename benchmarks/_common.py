"""What every benchmark records beside its figures: when, where, with what, and how busy the machine was.

Standard library, torch and identity_study.data (numpy, torchvision) only, so that gpu_throughput.py can use it on a
machine without pandas. A benchmark is run as a script (`python benchmarks/x.py`, which puts benchmarks/ first on the
path, so `import _common` finds this file) with identity_study installed (`make setup`) or on PYTHONPATH (a lent GPU
machine's gpu_first_run.sh sets it)."""
from __future__ import annotations

import csv
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
# the rebuilt CIFAR copy that `make data` writes, as the Makefile and the tests default to
os.environ.setdefault("IDENTITY_STUDY_DATA", str(ROOT / "data"))
BUSY_LOAD = 0.5

from identity_study.data import device_kind  # noqa: E402


def _git(*args) -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def gpu_name_without_cuda_init() -> str:
    "The first GPU's name from nvidia-smi, so that a parent process need not create a CUDA context."
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def nvidia_smi(fields: list) -> list:
    """One dict per GPU of nvidia-smi's `--query-gpu` fields, values as it prints them; [] where nvidia-smi is
    missing or refuses the query (an unknown field fails the whole query, so ask only for long-standing ones)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode:
        return []
    return [dict(zip(fields, (v.strip() for v in line.split(",")))) for line in out.stdout.strip().splitlines()]


def commit_and_dirty(short: bool = True) -> tuple[str, bool]:
    """This checkout's commit (short, or the full hash) and whether tracked files differ from it; a copy of the tree
    without .git (a lent GPU machine's) is told them by IDENTITY_STUDY_COMMIT=COMMIT or COMMIT-dirty."""
    sha = _git("rev-parse", *(["--short"] if short else []), "HEAD")
    if sha:
        return sha, bool(_git("status", "--porcelain", "--untracked-files=no"))
    told = os.environ.get("IDENTITY_STUDY_COMMIT", "")
    return told.removesuffix("-dirty"), told.endswith("-dirty")


def machine(device: str = "cpu") -> dict:
    "The columns that say where and with what a row was measured."
    import identity_study
    commit, dirty = commit_and_dirty()
    # device_name, cpu_capability and native_bf16: the class of machine a figure holds for
    return dict(timestamp=time.strftime("%Y-%m-%dT%H:%M:%S%z"), hostname=platform.node(),
                **device_kind(device), cpu_count=os.cpu_count(), python=platform.python_version(),
                torch=torch.__version__, torchvision=torchvision.__version__, cuda=torch.version.cuda or "",
                threads=torch.get_num_threads(), identity_study=identity_study.__version__,
                git_commit=commit, git_dirty=dirty)


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def warn_if_busy(what: str = "CPU timings") -> float:
    "The 1-minute load average now; warns when other work is running (call it before this script's own work)."
    load = load1()
    if load > BUSY_LOAD:
        warnings.warn(f"1-min load average is {load} (> {BUSY_LOAD}) before this benchmark started: the machine is "
                      f"busy and {what} are unreliable; rerun when it is quiet.", stacklevel=2)
    return load


def process_table() -> dict:
    """pid -> (state, ppid, CPU clock ticks) of every process in /proc; the ticks are its own user and system time and
    those of the children it waited for."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                # after the command name: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
                table[int(d)] = (fields[0], int(fields[1]), sum(int(x) for x in fields[11:15]))
            except (OSError, ValueError, IndexError):
                continue
    return table


def descendants(roots, table: dict) -> set:
    "`roots` (those of them in `table`) and every process of `table` below them."
    found = {pid for pid in roots if pid in table}
    grew = True
    while grew:
        grew = False
        for pid, (_, ppid, _) in table.items():
            if ppid in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def _jiffies_of_tree(root_pid: int) -> int:
    "CPU time (clock ticks) used so far by `root_pid` and its live descendants (e.g. DataLoader workers)."
    table = process_table()
    return sum(table[p][2] for p in descendants({root_pid}, table))


def _busy_jiffies() -> int:
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    return user + nice + system + irq + softirq + steal


class LoadProbe:
    """Load around one measurement: 1-min load average before and after, and `other_cpu`, the cores' worth of CPU
    time that processes outside this benchmark used during it (0 on a quiet machine; the load average alone cannot
    say this, since it also counts the benchmark's own threads and decays over minutes)."""
    def __enter__(self):
        self.load_before, self.t = load1(), time.perf_counter()
        try:
            self.busy, self.own = _busy_jiffies(), _jiffies_of_tree(os.getpid())
        except (OSError, ValueError):
            self.busy = None
        return self

    def __exit__(self, *exc):
        self.load_after, seconds = load1(), time.perf_counter() - self.t
        self.other_cpu = None
        if self.busy is not None:
            other = (_busy_jiffies() - self.busy) - (_jiffies_of_tree(os.getpid()) - self.own)
            self.other_cpu = round(max(0.0, other / os.sysconf("SC_CLK_TCK") / seconds), 2)

    def columns(self) -> dict:
        return dict(load1_before=self.load_before, load1_after=self.load_after, other_cpu=self.other_cpu)


def append_csv(path, rows: list) -> Path:
    "Append `rows` (dicts) to the CSV at `path`; a file with other columns is rewritten with the union of both."
    path = Path(path)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    old_rows = []
    if path.exists() and path.stat().st_size:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            old_fields, old_rows = list(reader.fieldnames or []), list(reader)
        if set(fields) <= set(old_fields):
            fields, old_rows = old_fields, None          # same columns: plain append
        else:
            fields = list(dict.fromkeys(old_fields + fields))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a" if old_rows is None else "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        if old_rows is not None:
            writer.writeheader()
            writer.writerows(old_rows)
        writer.writerows(rows)
    return path


def table(rows: list, columns: list) -> str:
    "A plain text table (no pandas), numbers right-aligned."
    def fmt(v):
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
        return "" if v is None else str(v)
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
