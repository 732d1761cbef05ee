"""Checking files in several processes (`check --jobs N`): the standard library's process pool.

Workers are forked where the platform can (every module is already imported, so a worker
starts in about a millisecond; elsewhere the platform's default start method serves). Each
item is one task, so a fast worker takes the next file as soon as it is done and a folder that
alternates fast and slow files still shares out evenly. A few tasks more than there are
workers are in flight at a time: enough to keep every worker busy, and the most a dead worker
can leave unanswered.

A worker killed mid-run (out of memory, a signal) breaks the pool: the items then in flight
are run again, each alone in a process of its own, so that the one that kills its process is
named with how it stopped and the others get their results; the remaining items go to a fresh
pool. An exception raised by the function (``check_file`` lets one out only under --debug) is
raised here, with the worker's traceback as its cause. Results come back in input order.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable, Sequence

# Tasks in flight per worker: one running, one waiting in the pool's queue.
_IN_FLIGHT_PER_WORKER = 2
_CHUNKS_PER_WORKER = 8


def _each(function: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    return [function(item) for item in items]


@dataclass
class Stopped:
    """An item whose process stopped before it answered, and how (``signal 9``, ``exit status 1``)."""

    why: str


def _context() -> Any:
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def _ignore_interrupts() -> None:
    # Ctrl-C reaches every process of the terminal's group: the parent stops the workers, which
    # would otherwise each print a KeyboardInterrupt traceback from their idle wait.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def map_in_processes(function: Callable[[Any], Any], items: Sequence[Any], jobs: int) -> list[Any]:
    """``[function(item) for item in items]`` in ``jobs`` worker processes; an item whose process
    died is a :class:`Stopped` in its place."""
    # A forked worker flushes the output buffers it inherited when it exits: what is buffered
    # here now would be written twice.
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # closed, or a reader gone: nothing to write twice
            stream.flush()
    results: dict[int, Any] = {}
    pending = deque(range(len(items)))
    while pending:
        suspects = _run_pool(function, items, jobs, pending, results)
        for i in suspects:
            results[i] = _alone(function, items[i])
    return [results[i] for i in range(len(items))]


def _run_pool(function: Callable[[Any], Any], items: Sequence[Any], jobs: int, pending: deque[int],
              results: dict[int, Any]) -> list[int]:
    """Run ``pending`` items in one pool until they are done or the pool breaks; returns the
    items that were in flight when it broke (none where it did not)."""
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=_context(), initializer=_ignore_interrupts)
    in_flight: dict[Future, list[int]] = {}
    size = max(1, len(pending) // (jobs * _CHUNKS_PER_WORKER))
    finished = False
    try:
        while pending or in_flight:
            while pending and len(in_flight) < jobs * _IN_FLIGHT_PER_WORKER:
                chunk = [pending.popleft() for _ in range(min(size, len(pending)))]
                in_flight[pool.submit(_each, function, [items[i] for i in chunk])] = chunk
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            for future in done:
                try:
                    results.update(zip(in_flight[future], future.result()))
                except BrokenProcessPool:
                    finished = True
                    return sorted(i for chunk in in_flight.values() for i in chunk)
                del in_flight[future]
        finished = True
        return []
    finally:
        pool.shutdown(wait=finished, cancel_futures=True)
        if not finished:  # an error or Ctrl-C here: leave no worker behind
            for worker in set(multiprocessing.active_children()) - before:
                worker.kill()
                worker.join()


def _alone(function: Callable[[Any], Any], item: Any) -> Any:
    """``function(item)`` in a process of its own: its result, or how that process stopped."""
    context = _context() or multiprocessing.get_context()
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_answer, args=(function, item, send))
    process.start()
    send.close()
    try:
        ok, value = receive.recv()
    except EOFError:  # it died before it answered
        process.join()
        code = process.exitcode or 0
        return Stopped(f"signal {-code}" if code < 0 else f"exit status {code}")
    finally:
        receive.close()
    process.join()
    if not ok:
        raise value
    return value


def _answer(function: Callable[[Any], Any], item: Any, send: Any) -> None:
    """In the process of :func:`_alone`: send back ``(True, result)`` or ``(False, exception)``."""
    _ignore_interrupts()
    try:
        answer = (True, function(item))
    except Exception as exc:  # only with --debug does check_file let one out
        answer = (False, exc)
    send.send(answer)
    send.close()
    os._exit(0)  # no atexit handlers, no flush of output buffers inherited from the parent
