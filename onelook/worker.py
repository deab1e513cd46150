"""Long work in a separate process: Stop ends it at once, and a crash or an out-of-memory kill ends only it.

A `WorkerProcess` starts one `spawn` process that builds a job object once (`factory`, e.g. loading models)
and then runs its generator methods one request at a time, streaming what they yield back through a pipe.
The caller iterates `run(...)` asynchronously: cancelling that iteration (Gradio's Stop) kills the process
immediately, whatever step it is in, and a fresh one is started in the background, so the next request waits
only for a worker to be ready, never for the stopped step. The worker runs at a lower CPU priority than its
caller, so the caller (a web server) stays responsive while it works.

Messages between the two processes are pickled, but both sides are this package's own code: nothing a user
hands over is ever unpickled.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import multiprocessing
import os
import pkgutil
import signal
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

WORKER_NICENESS = 10  # how much lower the worker's CPU priority is than its caller's


class JobError(Exception):
    """A job could not be done for a reason its user can act on; the message is shown as it is."""


class WorkerDiedError(RuntimeError):
    """The worker process ended in the middle of a job (killed, out of memory, crashed)."""


@dataclass
class JobUpdate:
    """Progress of a running job."""

    stage: str
    step: int
    total: int


@dataclass
class JobResult:
    """A job's last message: what it made (plain data: paths, numbers, lists)."""

    value: Any


def _release_memory() -> None:
    """Hands freed memory back to the system between jobs, so an idle worker holds only what it caches."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the allocator keeps its pages, nothing is wrong
        pass


def _serve(connection, factory: str, args: tuple) -> None:
    """The worker's main loop: build the job object, say "ready", then run jobs until the pipe closes."""
    os.nice(WORKER_NICENESS)
    try:
        jobs = pkgutil.resolve_name(factory)(*args)
    except Exception as exc:
        connection.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    connection.send(("ready", os.getpid()))
    while True:
        try:
            name, job_args = connection.recv()
        except (EOFError, OSError):
            return
        # The result and the end (or the error) are sent once the job's memory is released, so that a worker
        # whose result has arrived is back to its idle size.
        result, end = None, ("end", None)
        try:
            for message in getattr(jobs, name)(*job_args):
                if isinstance(message, JobResult):
                    result = message
                else:
                    connection.send(("message", message))
        except JobError as exc:
            end = ("error", str(exc))
        except Exception as exc:
            end = ("crash", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}")
        _release_memory()
        if result is not None:
            connection.send(("message", result))
        connection.send(end)


class WorkerProcess:
    """One worker process running `factory(*args)`'s generator methods; restarted when stopped or dead."""

    def __init__(self, factory: str, *args: Any):
        self.factory, self.args = factory, args
        self._context = multiprocessing.get_context("spawn")
        self._process = None
        self._connection = None
        self._ready: int | None = None  # the worker's pid, once it said it is ready
        self.start()

    def start(self) -> None:
        """Starts a fresh worker in the background (without waiting for it to be ready)."""
        parent, child = self._context.Pipe()
        self._process = self._context.Process(
            target=_serve, args=(child, self.factory, self.args), daemon=True, name="onelook-worker"
        )
        self._process.start()
        child.close()
        self._connection = parent
        self._ready = None

    def stop(self) -> None:
        """Kills the worker at once (whatever it is doing) and starts a fresh one."""
        if self._process is not None and self._process.is_alive():
            os.kill(self._process.pid, signal.SIGKILL)
        if self._process is not None:
            self._process.join(timeout=5)
        self._connection.close()
        self.start()

    async def _receive(self):
        """The next message from the worker, waiting without blocking the event loop."""
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        fd = self._connection.fileno()
        loop.add_reader(fd, readable.set)
        try:
            while not self._connection.poll():
                readable.clear()
                await readable.wait()
        finally:
            loop.remove_reader(fd)
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            return ("died", None)

    async def wait_ready(self) -> None:
        """Waits until the worker has built its job object (once per worker process)."""
        if self._ready is not None:
            return
        kind, detail = await self._receive()  # cancelled here: the "ready" message waits for the next caller
        if kind != "ready":
            reason = detail if kind == "failed" else self._exit_reason()
            self._connection.close()
            self._process.join(timeout=5)
            self.start()
            raise WorkerDiedError(f"the worker could not start ({reason})")
        self._ready = detail

    def _exit_reason(self) -> str:
        self._process.join(timeout=5)
        code = self._process.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name
            hint = " (the machine may have run out of memory)" if -code == signal.SIGKILL else ""
            return f"it was killed by {name}{hint}"
        return f"it exited with code {code}"

    async def run(self, job: str, *args: Any) -> AsyncIterator[JobUpdate | JobResult | Any]:
        """Runs `job(*args)` in the worker, yielding what it yields. Raises JobError for the job's own errors,
        WorkerDiedError when the process ends mid-job; stopping the iteration kills and replaces the worker."""
        await self.wait_ready()
        finished = False
        try:
            self._connection.send((job, args))
            while True:
                kind, detail = await self._receive()
                if kind == "message":
                    yield detail
                elif kind == "end":
                    finished = True
                    return
                elif kind == "error":
                    finished = True
                    raise JobError(detail)
                elif kind == "crash":
                    finished = True
                    raise RuntimeError(detail)
                else:
                    finished = True
                    reason = self._exit_reason()
                    self.start()
                    raise WorkerDiedError(f"the reconstruction process stopped unexpectedly: {reason}")
        finally:
            if not finished:  # cancelled (Stop) or abandoned: the step in progress must not go on
                self.stop()
