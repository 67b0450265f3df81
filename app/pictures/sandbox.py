"""Where pictures are decoded: processes whose memory and CPU time the operating system bounds,
so that no picture costs more than its bounds whatever its header says, and none costs anything
once it is answered.

Each decode process runs one job at a time, sent through a pipe: a function of app.pictures and
its arguments (a picture's bytes, ...), whose value or InputError comes back.
- Memory: the process caps its data segment (RLIMIT_DATA: the heap and every private writable
  mapping, which is where decoders allocate) at what it holds at rest plus `memory_bytes`. A
  job that asks for more fails to allocate, and is answered TooCostly. RLIMIT_AS would count
  the address space that NumPy's and OpenCV's libraries reserve but never touch (hundreds of MB).
- CPU: each job arms a timer of the process's own CPU time (ITIMER_PROF, to the millisecond,
  where RLIMIT_CPU counts whole seconds of the process's life). Past it the kernel sends
  SIGPROF, whose default action ends the process wherever it is, in libjpeg's loop or Pillow's.
- Time: the caller kills a process whose answer is not back by the job's deadline.
A process that breached a bound, or was killed, is replaced at the next job, in milliseconds:
it is forked from a process that has imported the picture pipeline. A process whose server has
gone, even killed, exits.
"""

import asyncio
import ctypes
import math
import multiprocessing
import queue
import resource
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import connection
from typing import Any, BinaryIO

from app.pictures.decode import InputError, TooCostly

MEMORY_BYTES = 128 * 2**20  # twice what the dearest picture the header checks let through takes
CPU_S = 1.0  # twice what the dearest takes here (bench/results.md)
# glibc keeps what a large picture freed for later; handed back, a process at rest stays small.
MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


class PastDeadline(Exception):
    """No answer by the job's deadline: the server may be busy, so not the picture's fault
    alone (not an InputError)."""


class DecoderFailed(ChildProcessError):
    """A decode process ended for no reason of the picture's bounds (a crash)."""


class Sandbox:
    """`processes` decode processes, and as many threads to wait for them in (for `run`).
    They are forked from a fork server (`start="forkserver"`: what a process with threads must
    do), or from this process itself (`"fork"`: quicker, and safe while it has no threads)."""

    def __init__(self, processes: int = 1, deadline_s: float = math.inf, start: str = "forkserver",
                 memory_bytes: int = MEMORY_BYTES, cpu_s: float = CPU_S) -> None:
        self.context = multiprocessing.get_context(start)
        if start == "forkserver":  # each process imports the program's main module again:
            main = getattr(sys.modules["__main__"].__spec__, "name", "__main__")  # once, there
            self.context.set_forkserver_preload(["__main__", main, "app.pictures.digit"])
        self.deadline_s, self.memory_bytes, self.cpu_s = deadline_s, memory_bytes, cpu_s
        self.idle = queue.SimpleQueue()
        for _ in range(processes):
            self.idle.put(self.start())
        self.waiting = ThreadPoolExecutor(processes, thread_name_prefix="picture")

    def start(self) -> tuple:
        """A new decode process: (its end of the pipe, the process)."""
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=serve, args=(theirs, self.memory_bytes, self.cpu_s),
                                  name="decode", daemon=True)
        process.start()
        theirs.close()
        return ours, process

    def call(self, job: Callable, picture: bytes | BinaryIO, *args: Any,
             deadline: float = math.inf) -> Any:
        """job(picture, *args) in a decode process, and its value; its InputError raised here,
        TooCostly past its bounds, PastDeadline (the process killed) past `deadline` (as
        time.monotonic() counts). A file is read here, once a process is free to take it."""
        pipe, process = self.idle.get()
        try:
            if not process.is_alive():  # ended after its last job
                pipe, process = self.start()
            pipe.send((job, picture if isinstance(picture, bytes) else picture.read(), args))
            if not pipe.poll(None if deadline == math.inf else max(0, deadline - time.monotonic())):
                process.kill()
                process.join()
                raise PastDeadline("the picture was not read in time")
            try:
                replaced, outcome, value = pipe.recv()
            except EOFError:  # it ended mid-job
                process.join()
                if process.exitcode == -signal.SIGPROF:
                    raise TooCostly(f"decoding the picture took over {self.cpu_s:g} s of CPU "
                                    "time") from None
                raise DecoderFailed(f"the decoder stopped (exit status {process.exitcode})") \
                    from None
            if replaced:
                process.kill()
                process.join()
            if outcome == "error":
                raise value
            return value
        finally:
            self.idle.put((pipe, process))

    async def run(self, job: Callable, picture: bytes | BinaryIO, *args: Any) -> Any:
        """`call` in a thread, with a deadline of deadline_s from now: a job still waiting for a
        process then is dropped, one running is killed."""
        deadline = time.monotonic() + self.deadline_s
        future = asyncio.get_running_loop().run_in_executor(
            self.waiting, lambda: self.call(job, picture, *args, deadline=deadline))
        try:
            async with asyncio.timeout(self.deadline_s):
                return await future
        except TimeoutError:  # the future is cancelled: a job still queued never starts
            raise PastDeadline(f"no answer within {self.deadline_s:g} s") from None

    def close(self) -> None:
        self.waiting.shutdown(wait=False, cancel_futures=True)
        while not self.idle.empty():
            pipe, process = self.idle.get()
            process.kill()
            process.join()
            pipe.close()


def serve(pipe, memory_bytes: int, cpu_s: float) -> None:
    """A decode process: jobs from `pipe` until it closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server, which ends us
    hard = resource.getrlimit(resource.RLIMIT_DATA)[1]
    resource.setrlimit(resource.RLIMIT_DATA, (data_bytes() + memory_bytes, hard))
    parent = multiprocessing.parent_process().sentinel
    while True:
        if parent in connection.wait([pipe, parent]):  # the server has gone, even killed
            return
        job, picture, args = pipe.recv()
        signal.setitimer(signal.ITIMER_PROF, cpu_s)
        try:
            reply = (False, "value", job(picture, *args))
        except InputError as error:
            reply = (False, "error", error)
        except MemoryError:
            reply = (True, "error", TooCostly(f"decoding the picture takes over the "
                                              f"{memory_bytes // 2**20} MB allowed"))
        signal.setitimer(signal.ITIMER_PROF, 0)
        del picture
        if MALLOC_TRIM:
            MALLOC_TRIM(0)
        pipe.send(reply)


def data_bytes() -> int:
    """This process's data segment, as RLIMIT_DATA counts it (VmData, Linux)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status
                    if line.startswith("VmData:"))
