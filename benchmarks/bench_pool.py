"""`check --jobs`: this tree's process pool side by side with another tree's (issue 17).

The two goals of `check --jobs` (benchmarks/README.md), measured for two source trees in the
same rounds, each command a fresh process with the tree on PYTHONPATH:

- the `--jobs 2` speed-up on the folder's work: (jobs 1 − one file) / (jobs 2 − one file) over
  the 50 ResNet-50-shaped files of data/many, worked out round by round (≥ 1.7×);
- `check --jobs 2` over the 500 mixed checkpoints of data/mixed: files per second against
  picklescan's on the same folder, picklescan run in the same rounds (≥ 1.7×).

    git archive e2d92fc bninspect | tar -x -C /tmp/before    # the hand-made pool
    python benchmarks/bench_pool.py --against /tmp/before --rounds 9
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run import BNI, DATA, fmt_s, measure, parallel_ceiling  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the rounds and print, per tree, the medians and each goal's ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="the other source tree (a folder holding bninspect/)")
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args(argv)
    trees = {"this tree": str(HERE.parent), "against": str(Path(args.against).resolve())}
    many, mixed = DATA / "many", DATA / "mixed"
    scanner = shutil.which("picklescan")
    if not (many.is_dir() and mixed.is_dir() and scanner):
        print("needs benchmarks/data/many and mixed (make_files.py) and picklescan (pip install picklescan)")
        return 2
    commands = {
        "one file": BNI + ["check", str(many / "model_00.safetensors")],
        "50 --jobs 1": BNI + ["check", str(many), "--jobs", "1"],
        "50 --jobs 2": BNI + ["check", str(many), "--jobs", "2"],
        "500 mixed --jobs 2": BNI + ["check", str(mixed), "--jobs", "2"],
    }
    wall: dict[tuple[str, str], list[float]] = {(t, c): [] for t in trees for c in commands}
    scan: list[float] = []
    for tree in trees.values():  # warm-up: page cache and .pyc files
        for argv in commands.values():
            measure(argv, {"PYTHONPATH": tree})
    for _ in range(args.rounds):
        scan.append(measure([scanner, "-p", str(mixed)])[0])
        for name, tree in trees.items():
            for command, argv in commands.items():
                seconds, _cpu, _rss, _read, code, tail = measure(argv, {"PYTHONPATH": tree})
                if code not in (0, 1):
                    print(f"{name}: {command}: exit {code}: {tail}", file=sys.stderr)
                wall[name, command].append(seconds)
    print(f"{args.rounds} rounds; two processes of pure Python run {parallel_ceiling():.2f}× faster than one here now")
    print(f"picklescan DIR(500 mixed): {fmt_s(statistics.median(scan))}")
    for name, tree in trees.items():
        runs = {c: wall[name, c] for c in commands}
        ratios = [(j1 - t0) / (j2 - t0) for t0, j1, j2 in zip(runs["one file"], runs["50 --jobs 1"], runs["50 --jobs 2"])
                  if j2 > t0]
        peer = [s / t for s, t in zip(scan, runs["500 mixed --jobs 2"])]
        medians = ", ".join(f"{c} {fmt_s(statistics.median(v))}" for c, v in runs.items())
        print(f"{name} ({tree}): {medians}")
        print(f"  --jobs 2 speed-up on the folder's work: {statistics.median(ratios):.2f}× "
              f"(rounds {min(ratios):.2f}-{max(ratios):.2f}); 500 mixed --jobs 2 vs picklescan: "
              f"{statistics.median(peer):.2f}× (rounds {min(peer):.2f}-{max(peer):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
