"""The threads that decode and classify pictures, off the event loop, so that a costly picture
delays only its own answer: `/health` and every other request are still answered.

Pillow's decoders, OpenCV and ONNX Runtime release the GIL while they work, so threads run
them in parallel. A thread cannot be stopped from outside; instead each job gets a deadline
that it checks as it goes (pictures/decode.py), and the client waiting for it is answered when the
deadline passes, whether or not the job has noticed yet.
"""

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

from app.pictures.decode import PastDeadline


class Pool:
    def __init__(self, threads, deadline_s):
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="classify")
        self.deadline_s = deadline_s

    async def run(self, job, *args):
        """job(*args, deadline) in a thread; PastDeadline once deadline_s have passed, from
        its submission, with it still queued (it is then dropped) or running."""
        deadline = time.monotonic() + self.deadline_s
        future = asyncio.get_running_loop().run_in_executor(self.executor, job, *args, deadline)
        try:
            async with asyncio.timeout(self.deadline_s):
                return await future
        except TimeoutError:  # the future is cancelled: a job still queued never starts
            raise PastDeadline(f"no answer within {self.deadline_s:g} s") from None

    def shutdown(self):
        self.executor.shutdown(wait=False, cancel_futures=True)
