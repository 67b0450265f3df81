"""Decode processes: where every picture is read, bounded by the operating system whatever its
header says, and stopped once it is answered. Each runs one job at a time from a pipe (a
function of app.pictures and a picture's bytes) and sends back its value or InputError. Memory:
its size at rest plus memory_bytes (decode.limit_memory). CPU time: a timer of its own
(ITIMER_PROF, where RLIMIT_CPU counts whole seconds of its life) whose SIGPROF ends it wherever
it is, in libjpeg's loop or Pillow's.
Time: the caller kills a process not back by the deadline. One that breached or was killed is
replaced in milliseconds; one whose server has gone, even killed, exits.
"""

import asyncio
import ctypes
import math
import multiprocessing
import queue
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing import connection
from typing import Any, BinaryIO

from app.pictures.decode import MEMORY_BYTES, InputError, TooCostly, limit_memory

CPU_S = 1.0  # 3 to 5 times what a 40-megapixel picture takes here (docs/serving.md)
# glibc keeps what a large picture freed for later; handed back, a process at rest stays small.
MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


class Sandbox:
    """`processes` decode processes, and as many threads to wait for them in (for `run`),
    forked from a fork server (`start="forkserver"`, as a process with threads must), or from
    this process (`"fork"`: quicker, and safe while it has no threads)."""

    def __init__(self, processes: int = 1, deadline_s: float = math.inf, start: str = "forkserver",
                 memory_bytes: int = MEMORY_BYTES, cpu_s: float = CPU_S) -> None:
        self.context = multiprocessing.get_context(start)
        if start == "forkserver":  # each process imports the program's main module again:
            main = getattr(sys.modules["__main__"].__spec__, "name", "__main__")  # once, there
            self.context.set_forkserver_preload(["__main__", main, "app.classifier"])
        self.deadline_s, self.memory_bytes, self.cpu_s = deadline_s, memory_bytes, cpu_s
        self.idle = queue.SimpleQueue()
        for _ in range(processes):
            self.idle.put(self.start())
        self.waiting = ThreadPoolExecutor(processes, thread_name_prefix="picture")

    def start(self) -> tuple:
        """A new decode process: (our end of its pipe, the process)."""
        ours, theirs = self.context.Pipe()
        process = self.context.Process(target=serve, args=(theirs, self.memory_bytes, self.cpu_s),
                                       name="decode", daemon=True)
        process.start()
        theirs.close()
        return ours, process

    def call(self, job: Callable, picture: bytes | BinaryIO, *args: Any,
             deadline: float = math.inf) -> Any:
        """job(picture, *args) in a decode process: its value, or its InputError raised here;
        TooCostly past its bounds; TimeoutError, the process killed, past `deadline` (as
        time.monotonic() counts: the server may be busy, not the picture's fault alone);
        ChildProcessError if it crashed. A file is read here, once a
        process is free to take it."""
        pipe, process = self.idle.get()
        try:
            if not process.is_alive():  # ended after its last job
                pipe, process = self.start()
            pipe.send((job, picture if isinstance(picture, bytes) else picture.read(), args))
            if not pipe.poll(None if deadline == math.inf else max(0, deadline - time.monotonic())):
                process.kill()
                process.join()
                raise TimeoutError("the picture was not read in time")
            try:
                replaced, outcome, value = pipe.recv()
            except EOFError:  # it ended mid-job
                process.join()
                if process.exitcode == -signal.SIGPROF:
                    raise TooCostly(f"decoding the picture took over {self.cpu_s:g} s of CPU "
                                    "time") from None
                raise ChildProcessError(f"the decoder stopped (exit status {process.exitcode})") \
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
        """`call` in a thread, with a deadline deadline_s from now (TimeoutError): a job still
        waiting for a process then is dropped (its future cancelled), one running is killed."""
        deadline = time.monotonic() + self.deadline_s
        future = asyncio.get_running_loop().run_in_executor(
            self.waiting, lambda: self.call(job, picture, *args, deadline=deadline))
        async with asyncio.timeout(self.deadline_s):
            return await future

    def close(self) -> None:
        self.waiting.shutdown(wait=False, cancel_futures=True)
        while not self.idle.empty():
            pipe, process = self.idle.get()
            process.kill()
            process.join()
            pipe.close()


def serve(pipe: connection.Connection, memory_bytes: int, cpu_s: float) -> None:
    """A decode process: jobs from `pipe` until its server has gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server, which ends us
    limit_memory(memory_bytes)
    parent = multiprocessing.parent_process().sentinel
    while parent not in connection.wait([pipe, parent]):
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
