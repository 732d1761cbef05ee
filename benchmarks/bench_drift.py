"""`drift` on the sample with the second core busy, against its single-threaded baseline (issue 16).

torch's intra-op thread pool on many tiny batches made `drift` 2-15× slower when the machine was
busy; drift now chooses its thread count (services/drift.py, drift_threads). This runs

    bninspect drift drift/mobilenet_v1_tiny_bs2.pt --arch sample_models:mobilenet_v1_tiny --data drift/calib.pt

in fresh processes, in rounds (each round takes every variant, seconds apart, so a busy minute
of the shared machine slows all of them): while a spinning process of this script keeps one more
core busy, once as drift chooses and once with OMP_NUM_THREADS=1 (torch on one thread
throughout: the baseline no thread pool can slow down); and once more as drift chooses without
the spinner. Medians of wall and CPU time. The goal: with the second core busy, drift is no
slower than its baseline, ≤ 1.25× in wall time.

    python benchmarks/bench_drift.py              # 5 rounds
    python benchmarks/bench_drift.py --rounds 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_checkpoints"
COMMAND = [sys.executable, "-m", "bninspect", "drift", "drift/mobilenet_v1_tiny_bs2.pt", "--arch",
           "sample_models:mobilenet_v1_tiny", "--data", "drift/calib.pt", "--json"]
GOAL = 1.25


def run_once(**env: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one drift run in a fresh process; exit 1 (drift found) is its answer."""
    path = os.pathsep.join(filter(None, [str(ROOT), str(SAMPLES), os.environ.get("PYTHONPATH")]))
    start = time.perf_counter()
    proc = subprocess.Popen(COMMAND, cwd=SAMPLES, env={**os.environ, "PYTHONPATH": path, **env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) not in (0, 1):
        raise SystemExit(f"drift failed with exit status {os.waitstatus_to_exitcode(status)}: {' '.join(COMMAND)}")
    return wall, usage.ru_utime + usage.ru_stime


def busy_core() -> subprocess.Popen:
    """A process that keeps one core busy until it is killed."""
    return subprocess.Popen([sys.executable, "-c", "while True:\n    pass"])


def main(argv: list[str] | None = None) -> int:
    """Measure the rounds and print the medians, the ratios and the goal line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    run_once()  # warm-up: the page cache, the .pyc files
    runs: dict[str, list[tuple[float, float]]] = {"drift, second core busy": [], "OMP_NUM_THREADS=1, second core busy": [],
                                                  "drift, as the machine is": []}
    for _ in range(args.rounds):
        spinner = busy_core()
        try:
            time.sleep(0.3)  # let it take its core
            runs["drift, second core busy"].append(run_once())
            runs["OMP_NUM_THREADS=1, second core busy"].append(run_once(OMP_NUM_THREADS="1"))
        finally:
            spinner.kill()
            spinner.wait()
        runs["drift, as the machine is"].append(run_once())
    medians = {name: tuple(statistics.median(v) for v in zip(*values)) for name, values in runs.items()}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"drift on the sample (bs2 model, calib.pt, batch sizes 1-32), {cores} CPUs, load average {load:.1f}, "
          f"medians of {args.rounds} rounds")
    print(f"{'what':<38}{'wall s':>8}{'CPU s':>8}")
    for name, (wall, cpu) in medians.items():
        print(f"{name:<38}{wall:>8.2f}{cpu:>8.2f}")
    (wall_d, cpu_d), (wall_1, cpu_1), (wall_q, _) = medians.values()
    print(f"second core busy, drift / one-thread baseline: {wall_d / wall_1:.2f}× wall, {cpu_d / cpu_1:.2f}× CPU "
          f"(issue 16 goal: ≤ {GOAL} wall); busy / as is: {wall_d / wall_q:.2f}× wall")
    return 0 if wall_d / wall_1 <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
