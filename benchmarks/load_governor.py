"""What the trainer's thread governor (`identity_study.train.CpuThreads`) chooses on this machine, with real busy
processes beside it: the measurement that tests/test_device.py leaves out (there the load is injected, so that the
suite gives one answer however busy the machine is).

For each number of burners (processes spinning on one core each, 0 .. cores-1 by default), --repeats times:
  1. the burners are started and given --settle seconds to be running;
  2. `CpuThreads().start()` measures the load (its own 0.2 s window) and chooses the threads: `chosen_at_start`;
  3. over a further --window seconds the load is measured again as `update()` measures it: `other_load`,
     `chosen_after_window`;
  4. the burners are stopped and, --window seconds later, `update()` is asked again: `chosen_after_release`
     (the threads it takes back; the count held when it keeps them).
`expected` is the rule applied to the burners alone (`CpuThreads.for_load(cores, burners)`), and every core after
the release; `agrees` says all three choices matched. A row that does not agree shows how much other work moved
the governor's answer: `other_cpu` is the cores' worth of CPU time that processes outside this benchmark and its
burners used during steps 2-3 (_common.LoadProbe), `load1_before`/`load1_after` the load average around them.

  .venv/bin/python benchmarks/load_governor.py                  # ~1 min on 2 cores
  .venv/bin/python benchmarks/load_governor.py --burners 1 --repeats 2 --csv benchmarks/load_governor.local.csv
Rows go to benchmarks/load_governor.csv.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from _common import ROOT, LoadProbe, append_csv, machine, table, warn_if_busy
from identity_study.train import CpuThreads

# a process that keeps one core busy until it is stopped; it says so once it spins
BURNER = "import sys\nprint('spinning', flush=True)\nwhile True: pass"


def start_burners(n: int) -> list:
    burners = [subprocess.Popen([sys.executable, "-c", BURNER], stdout=subprocess.PIPE, text=True) for _ in range(n)]
    for b in burners:
        assert b.stdout.readline().strip() == "spinning", "a burner did not start"
    return burners


def stop(burners: list):
    for b in burners:
        b.kill()
    for b in burners:
        b.wait()
        b.stdout.close()


def measure(burners: int, settle: float, window: float) -> dict:
    "One trial: what the governor chooses beside `burners` busy processes, and after they end."
    procs = start_burners(burners)
    try:
        time.sleep(settle)
        with LoadProbe() as probe:
            governor = CpuThreads()
            cores = len(governor.cores)
            chosen_at_start = governor.start()
            time.sleep(window)
            other_load = governor._other_load()            # what update() measures, over the window
            chosen_after_window = CpuThreads.for_load(cores, other_load)
    finally:
        stop(procs)
    governor.every_s = window
    time.sleep(window)
    released = governor.update()
    expected = CpuThreads.for_load(cores, burners)
    return dict(cores=cores, burners=burners, expected=expected, chosen_at_start=chosen_at_start,
                other_load=round(other_load, 2), chosen_after_window=chosen_after_window,
                chosen_after_release=released if released is not None else torch.get_num_threads(),
                agrees=chosen_at_start == chosen_after_window == expected and (
                    released if released is not None else torch.get_num_threads()) == CpuThreads.for_load(cores, 0),
                **probe.columns())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--burners", type=int, nargs="+", help="numbers of busy processes (default: 0 .. cores-1)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--settle", type=float, default=0.5, help="seconds between starting the burners and measuring")
    ap.add_argument("--window", type=float, default=1.0, help="seconds of each later measurement")
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "load_governor.csv"))
    args = ap.parse_args(argv)
    os.environ.pop("OMP_NUM_THREADS", None)     # the governor's rule, not a fixed count from the environment
    load = warn_if_busy("the governor's choices")
    threads = torch.get_num_threads()
    where = machine()                           # before the governor changes torch's thread count
    cores = len(CpuThreads().cores)
    rows = []
    try:
        for burners in args.burners or range(cores):
            for repeat in range(args.repeats):
                row = dict(where, load1_at_start=load, repeat=repeat, settle_s=args.settle, window_s=args.window,
                           **measure(burners, args.settle, args.window))
                rows.append(row)
                print(f"{burners} burner(s), repeat {repeat}: chose {row['chosen_at_start']} then "
                      f"{row['chosen_after_window']} (expected {row['expected']}), other load {row['other_load']}, "
                      f"{row['chosen_after_release']} after release", flush=True)
    finally:
        torch.set_num_threads(threads)
    append_csv(args.csv, rows)
    print(table(rows, ["burners", "repeat", "expected", "chosen_at_start", "chosen_after_window", "other_load",
                       "chosen_after_release", "other_cpu", "agrees"]))
    agreed = sum(r["agrees"] for r in rows)
    print(f"{agreed} of {len(rows)} trials chose what the burners alone call for; 1-min load average at the start "
          f"{load}")


if __name__ == "__main__":
    main()
