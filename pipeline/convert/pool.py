"""Worker processes that may die: run chunks of work in N processes and survive a worker
killed mid-chunk (a segfault in a C library, the kernel's out-of-memory killer).

`multiprocessing.Pool` waits forever for a task whose worker died, and a broken
`concurrent.futures` pool fails every task still in flight. Here each worker holds one chunk
at a time, so the parent knows what a dead worker was doing: its chunk is run again one item
per chunk, and an item that kills its worker on its own is handed to `on_death` (which says
what to report for it). Nothing runs in the parent: a crash of one item never takes the run
down, whatever the number of workers.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Seconds a worker gets to exit after the last chunk before it is terminated.
STOP_TIMEOUT_S = 10.0


@dataclass
class _Worker:
    process: BaseProcess
    conn: Connection
    chunk: Sequence[Any] | None = None  # what it is working on; None when idle


def run_chunks(work: Callable[[Sequence[T]], list[R]], chunks: Sequence[Sequence[T]],
               jobs: int, on_death: Callable[[T, str], R]) -> Iterator[R]:
    """`work(chunk)` for every chunk in up to `jobs` worker processes; results in completion
    order. A worker that dies mid-chunk is replaced; see the module docstring."""
    queue: deque[Sequence[T]] = deque(chunks)
    workers: list[_Worker] = []
    try:
        while queue or any(w.chunk is not None for w in workers):
            _assign(queue, workers, max(1, jobs), work)
            busy = [w for w in workers if w.chunk is not None]
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                yield from _collect(worker, workers, queue, on_death)
    finally:
        _stop(workers)


def _assign(queue: deque[Sequence[T]], workers: list[_Worker], jobs: int,
            work: Callable[[Sequence[T]], list[R]]) -> None:
    """Give every idle worker a chunk, starting workers (up to `jobs`) while chunks wait."""
    for worker in [w for w in workers if w.chunk is None]:
        if queue and not _give(worker, queue):
            workers.remove(worker)  # it died while idle: a new one takes its place below
    while queue and len(workers) < jobs:
        worker = _start(work)
        workers.append(worker)
        if not _give(worker, queue):
            workers.remove(worker)


def _give(worker: _Worker, queue: deque[Sequence[T]]) -> bool:
    """Send the next chunk to an idle worker; False (the chunk back in the queue, the worker
    ended) when the worker is gone."""
    chunk = queue.popleft()
    try:
        worker.conn.send(chunk)
    except OSError:
        queue.appendleft(chunk)
        worker.conn.close()
        worker.process.join()
        return False
    worker.chunk = chunk
    return True


def _collect(worker: _Worker, workers: list[_Worker], queue: deque[Sequence[T]],
             on_death: Callable[[T, str], R]) -> Iterator[R]:
    """The results of a worker that finished its chunk; for a dead worker, its chunk again
    item by item, or (a single item) what `on_death` reports for it."""
    if worker.conn.poll():
        try:
            results = worker.conn.recv()
        except (EOFError, OSError):  # the worker died: its end of the pipe closed
            pass
        else:
            worker.chunk = None
            yield from results
            return
    if worker.process.is_alive():
        return
    chunk = worker.chunk or ()
    workers.remove(worker)
    worker.conn.close()
    worker.process.join()
    reason = death_reason(worker.process.exitcode)
    if len(chunk) == 1:
        yield on_death(chunk[0], reason)
    else:  # which item killed it is unknown: each runs alone, first
        queue.extendleft([item] for item in reversed(chunk))


def death_reason(exitcode: int | None) -> str:
    """How a worker process ended, in words."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = {"SIGKILL": " (the out-of-memory killer sends it)",
                "SIGSEGV": " (a crash in native code)"}.get(name, "")
        return f"its worker process was killed by {name}{hint}"
    return f"its worker process exited with code {exitcode}"


def _start(work: Callable[[Sequence[T]], list[R]]) -> _Worker:
    ctx = multiprocessing.get_context()
    parent, child = ctx.Pipe()
    # daemon: a worker never outlives the run; a parent killed outright closes its end of the
    # pipe, and the worker's recv() ends it
    process = ctx.Process(target=_serve, args=(child, work), daemon=True)
    process.start()
    child.close()
    return _Worker(process, parent)


def _serve(conn: Connection, work: Callable[[Sequence[Any]], list[Any]]) -> None:
    """A worker's loop: a chunk in, its results out, until None or the parent is gone."""
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        if chunk is None:
            return
        conn.send(work(chunk))


def _stop(workers: list[_Worker]) -> None:
    """End every worker: idle ones are told to exit, busy ones (the run was interrupted)
    are terminated."""
    for worker in workers:
        if worker.chunk is None:
            with contextlib.suppress(OSError):
                worker.conn.send(None)
        else:
            worker.process.terminate()
    for worker in workers:
        worker.process.join(STOP_TIMEOUT_S)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
