"""Checking files in several processes (`check --jobs N`): this process and N - 1 forked children.

Every process takes the next item's index from a shared pipe (4 bytes each, so each read takes
one whole index) until the pipe is empty; a child then sends its results back pickled through a
pipe of its own. Forked children start in about a millisecond with every module imported, this
process works too, and only one message per child travels back.

Hand-made rather than the standard library's ``ProcessPoolExecutor`` because, measured side by
side (benchmarks/README.md, "check --jobs"), the executor lost the `--jobs 2` goal: 1.52x on
the folder's work against 1.82x for this pool (the goal is 1.7x). Without ``os.fork``
(Windows) the executor does the work.

A child killed mid-run (out of memory, a signal) loses the results it had not sent: each of
its items is a :class:`Stopped` naming how it stopped. An exception raised by the function in
a child (``check_file`` lets one out only under --debug) is raised here. Results come back in
input order.
"""

from __future__ import annotations

import os
import pickle
import signal
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, Sequence


@dataclass
class Stopped:
    """An item whose process stopped before it answered, and how (``signal 9``, ``exit status 1``)."""

    why: str


def map_in_processes(function: Callable[[Any], Any], items: Sequence[Any], jobs: int) -> list[Any]:
    """``[function(item) for item in items]`` in ``jobs`` processes (this one and ``jobs - 1``
    forked children); an item whose child died is a :class:`Stopped` in its place."""
    if not hasattr(os, "fork"):
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=jobs) as pool:
            return list(pool.map(function, items))
    queue_read, queue_write = os.pipe()
    children: dict[int, int] = {}  # pid → the read end of the pipe its results come back through
    try:
        for _ in range(jobs - 1):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(queue_write)  # else the queue never ends for this child
                _child(function, items, queue_read, read_end, write_end)
            os.close(write_end)
            children[pid] = read_end
        with os.fdopen(queue_write, "wb") as queue:  # blocks while the children take indices
            queue_write = -1
            queue.write(b"".join(i.to_bytes(4, "little") for i in range(len(items))))
        results = _take(function, items, queue_read)
        stopped = None
        for pid, read_end in list(children.items()):
            del children[pid]
            theirs, why = _collect(pid, read_end)
            results.update(theirs)
            stopped = stopped or why
        return [results[i] if i in results else Stopped(stopped or "unknown") for i in range(len(items))]
    finally:  # an error or Ctrl-C in this process: leave no child behind
        os.close(queue_read)
        if queue_write >= 0:
            os.close(queue_write)
        for pid, read_end in children.items():
            os.close(read_end)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)


def _take(function: Callable[[Any], Any], items: Sequence[Any], queue: int) -> dict[int, Any]:
    """Run the items whose indices this process reads from the queue, until it is empty."""
    done: dict[int, Any] = {}
    while index := os.read(queue, 4):
        if len(index) != 4:  # never seen: every write and read of the queue is a multiple of 4 bytes
            raise RuntimeError("the --jobs queue handed out part of an index")
        i = int.from_bytes(index, "little")
        done[i] = function(items[i])
    return done


def _child(function: Callable[[Any], Any], items: Sequence[Any], queue: int, read_end: int,
           write_end: int) -> NoReturn:
    """A forked child: run items from the queue, write the results (or the function's error)
    to its pipe, exit."""
    code = 1
    try:
        os.close(read_end)
        try:
            payload: object = _take(function, items, queue)
        except Exception as exc:  # only with --debug does a file's error get out of check_file
            payload = exc
        with os.fdopen(write_end, "wb") as pipe:
            pickle.dump(payload, pipe, protocol=pickle.HIGHEST_PROTOCOL)
        code = 0
    finally:
        os._exit(code)  # no atexit handlers, no flush of output buffers inherited from the parent


def _collect(pid: int, read_end: int) -> tuple[dict[int, Any], str | None]:
    """A child's results by index, and why it stopped if it died before sending them."""
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    try:
        payload = pickle.loads(data) if status == 0 else None
    except Exception:
        payload = None
    if isinstance(payload, Exception):
        raise payload
    if payload is None:  # killed (out of memory, a signal) or failed to send
        code = os.waitstatus_to_exitcode(status)
        return {}, f"signal {-code}" if code < 0 else f"exit status {code}"
    return payload, None
