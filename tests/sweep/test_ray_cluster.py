"""tests/ray_cluster.py lets a node join a cluster with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 by
replacing the `ray_constants` that Ray's `ray start` reads (JOIN there): a private API of Ray,
where no public setting does it. This fails on the Ray that breaks it."""

import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.ray_cluster import JOIN

pytestmark = pytest.mark.slow

REFUSAL = "not supported on Windows and OSX"
# What `ray start --address` says once past the refusal, with no cluster at the address.
NO_GCS = "Failed to connect to GCS"


def ray_start(code_args, timeout_s=60):
    """The output of `ray start --address` at a port nothing listens on, up to the refusal or
    to the first complaint that no cluster is there (then it is stopped: it would retry)."""
    process = subprocess.Popen(
        [sys.executable, *code_args, "start", "--address=127.0.0.1:9", "--block"],
        env={"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    timer = threading.Timer(timeout_s, os.killpg, (process.pid, signal.SIGKILL))
    timer.start()
    output = []
    try:
        for line in process.stdout:
            output.append(line)
            if REFUSAL in line or NO_GCS in line:
                break
    finally:
        timer.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return "".join(output)


def test_ray_start_still_reads_the_constant_the_join_workaround_replaces():
    # Ray still refuses with the setting (it means what it did), and goes past the refusal
    # with the workaround.
    assert REFUSAL in ray_start(["-m", "ray.scripts.scripts"])
    joined = ray_start(["-c", JOIN])
    assert REFUSAL not in joined and NO_GCS in joined
