"""Compare command lines head to head: runs interleaved (A B C A B C ...), medians of wall, CPU, peak RSS.

For checking one fix at a time: interleaving spreads other jobs' noise over every variant
equally, and CPU time (user + system) moves far less than wall time on a shared machine.

    python benchmarks/ab.py --runs 7 "python -c 'import typer'" "bninspect --help"
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import fmt_mib, fmt_s, measure  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run each command (a shell-quoted string) ``--runs`` times, interleaved, and print medians."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("commands", nargs="+", help="command lines, each one quoted")
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args(argv)
    cmds = [shlex.split(c) for c in args.commands]
    walls: list[list[float]] = [[] for _ in cmds]
    cpus: list[list[float]] = [[] for _ in cmds]
    rss: list[list[float]] = [[] for _ in cmds]
    for c in cmds:  # warm-up: page cache and .pyc files
        measure(c)
    for _ in range(args.runs):
        for i, c in enumerate(cmds):
            w, cpu, m, _, rc, tail = measure(c)
            if rc not in (0, 1):
                print(f"{args.commands[i]}: exit {rc}: {tail}", file=sys.stderr)
            walls[i].append(w)
            cpus[i].append(cpu)
            rss[i].append(m)
    base = statistics.median(cpus[0])
    print(f"{'command':<70} {'wall':>9} {'CPU':>9} {'CPU/1st':>8} {'peak RSS':>10}")
    for i, text in enumerate(args.commands):
        cpu = statistics.median(cpus[i])
        print(f"{text[:70]:<70} {fmt_s(statistics.median(walls[i])):>9} {fmt_s(cpu):>9} {cpu / base:>7.2f}× "
              f"{fmt_mib(statistics.median(rss[i])):>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
