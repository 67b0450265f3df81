"""The cost of a sweep on a Ray cluster, against DVC's own queue, on one machine where the
cluster gains nothing: 8 MLP trials of 3 epochs (`-S 'train.seed=range(1,9)'`) by
`dvc exp run --queue` and `dvc queue start -j 2` (run as `dvc exp run --run-all -j 2`, which
starts the same workers and waits for them), then by `python -m sweep` on a 2-node cluster of
this machine (sweep.loopback: two `ray start` process trees on 127.0.0.1, the trials of 2
threads asking for a node's 2 CPUs each). Both in one fresh copy of this repository, its
baseline reproduced and pushed to a bare git remote and a directory DVC remote first.

    MNIST_MIRROR=../shared/mnist python -m bench.sweep      # without a mirror: random data

Reports the wall-time ratio (the goal: <= 1.3, so that on N machines a sweep runs about N
times faster than the queue on one), the git and DVC seconds each trial adds on its worker,
and the peak memory of the head and of each node. Not part of `make test`.
"""

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psutil

from bench.pipeline import copy_repo, git_env, pipeline_env, timed, use_random_data
from sweep import loopback

GRID = ["-S", "train.seed=range(1,9)"]
TRIALS = 8
EPOCHS = 3
GOAL_RATIO = 1.3
# What DVC prints when a stage runs rather than comes from a cache: each side must train all.
TRAIN_RAN = "Running stage 'train'"
MARKER = "BENCH_SWEEP_RUN"
# A trial's log (.dvc/tmp/sweeps/NAME.log) times each step: "$ git clone --quiet ...  (0.1 s)";
# a step is named by its words before the first option ("git clone", "dvc push && dvc exp push").
STEP = re.compile(r"^\$ ([^-\n]+?) (?:-.*)?  \(([0-9.]+) s\)$", re.MULTILINE)


def dvc(*args):
    return [str(Path(sys.executable).parent / "dvc"), *args]


def git(*args):
    return ["git", *args]


def prepare(tmp, mirror):
    """A fresh copy of the repository, 3 epochs, its baseline reproduced and committed, pushed
    to a bare git remote `origin` and to its DVC remote: what a team's repository holds."""
    repo = tmp / "repo"
    repo.mkdir()
    copy_repo(repo)
    env = {**pipeline_env(mirror), **git_env(), MARKER: uuid.uuid4().hex}
    if not mirror:
        (tmp / "random-mirror").mkdir()
        use_random_data(repo, tmp / "random-mirror")
    # The pipeline with 3 epochs, its results left in the workspace, committed as the baseline.
    timed(dvc("exp", "run", "-S", f"train.mlp.epochs={EPOCHS}"), repo, env)
    # The repository's own DVC remote is ../../mnist-dvc-storage from .dvc/: a folder in tmp.
    timed(git("add", "-A"), repo, env)
    timed(git("commit", "-q", "-m", f"baseline: {EPOCHS} epochs"), repo, env)
    timed(git("init", "-q", "--bare", "-b", "main", str(tmp / "origin.git")), repo, env)
    timed(git("remote", "add", "origin", str(tmp / "origin.git")), repo, env)
    timed(git("push", "-q", "origin", "HEAD:main"), repo, env)
    timed(dvc("push", "-q"), repo, env)
    return repo, env


def rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total / 2**20


def is_pipeline(pid):
    """A trial's own work (`dvc exp run` or `exec-run`, its stages, git), as opposed to the
    engine's (Ray's processes; DVC's queue workers, `dvc exp queue-worker`)."""
    try:
        args = psutil.Process(pid).cmdline()
    except psutil.NoSuchProcess:
        return False
    line = " ".join(args)
    if "queue-worker" in line:
        return False
    return "stages." in line or any(Path(arg).name in ("git", "dvc") for arg in args[:2])


def marked(marker):
    """Processes whose environment carries the marker (DVC's queue workers detach from us)."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for process in psutil.process_iter():
        try:
            if needle in Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0"):
                found.append(process.pid)
        except OSError:
            pass
    return found


def tree(pid):
    try:
        parent = psutil.Process(pid)
        return [pid, *(child.pid for child in parent.children(recursive=True))]
    except psutil.NoSuchProcess:
        return []


class PeakMemory:
    """Samples, every half second until stopped, the summed RSS of each group of processes
    ({name: function giving their ids}); `peaks` holds each group's highest, in MB."""

    def __init__(self, groups):
        self.groups, self.peaks = groups, dict.fromkeys(groups, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.wait(0.5):
            for name, pids in self.groups.items():
                self.peaks[name] = max(self.peaks[name], rss_mb(pids()))

    def stop(self):
        self._stop.set()
        self._thread.join()
        return self.peaks


def measure_ray(repo, env):
    load = os.getloadavg()[0]
    started = time.perf_counter()
    head, worker = nodes = loopback.start_cluster([2, 2], env)
    cluster_s = time.perf_counter() - started
    sweep = {}
    memory = PeakMemory({
        "the head (`python -m sweep`)": lambda: tree(sweep["pid"]) if sweep else [],
        "Ray on the head node": lambda: [p for p in head.processes() if not is_pipeline(p)],
        "Ray on the worker node": lambda: [p for p in worker.processes() if not is_pipeline(p)],
        "the trials (dvc, stages, git)": lambda: [p for node in (head, worker)
                                                  for p in node.processes() if is_pipeline(p)],
    })
    try:
        started = time.perf_counter()
        with open(repo.parent / "sweep.log", "w") as log:
            process = psutil.Popen([sys.executable, "-m", "sweep", "--address", head.address,
                                    "-n", "ray", *GRID], cwd=repo,
                                   env={**env, **loopback.LOOPBACK_ENV}, stdout=log, stderr=log)
            sweep["pid"] = process.pid
            if process.wait() != 0:
                raise RuntimeError("the sweep failed:\n" + Path(log.name).read_text()[-3000:])
        wall_s = time.perf_counter() - started
        output = Path(log.name).read_text()
    finally:
        peaks = memory.stop()
        loopback.stop_cluster(nodes)
    logs = "".join(log.read_text() for log in (repo / ".dvc/tmp/sweeps").glob("*.log"))
    return {"cluster_s": cluster_s, "wall_s": wall_s, "memory": peaks, "steps": steps(logs),
            "output": output, "load": load, "trained": logs.count(TRAIN_RAN)}


def steps(logs):
    """{command: [seconds in each trial]} from the trials' logs."""
    found = {}
    for command, seconds in STEP.findall(logs):
        found.setdefault(command, []).append(float(seconds))
    return found


def measure_queue(repo, env):
    load = os.getloadavg()[0]
    timed(dvc("exp", "run", "--queue", "-n", "queue", *GRID), repo, env)
    run = {}
    memory = PeakMemory({
        "the head (`dvc exp run --run-all`)": lambda: [run["pid"]] if run else [],
        "DVC's queue workers (celery)": lambda: [p for p in marked(env[MARKER])
                                                 if not is_pipeline(p) and p != run.get("pid")],
        "the trials (dvc, stages, git)": lambda: [p for p in marked(env[MARKER])
                                                  if is_pipeline(p)],
    })
    try:
        started = time.perf_counter()
        with open(repo.parent / "queue.log", "w") as log:
            process = psutil.Popen(dvc("exp", "run", "--run-all", "--jobs", "2"), cwd=repo,
                                   env=env, stdout=log, stderr=log)
            run["pid"] = process.pid
            if process.wait() != 0:
                raise RuntimeError("dvc exp run --run-all failed:\n"
                                   + Path(log.name).read_text()[-3000:])
        wall_s = time.perf_counter() - started
    finally:
        peaks = memory.stop()
        timed(dvc("queue", "stop"), repo, env)  # its workers, if any is still waiting
        stop_all(lambda: marked(env[MARKER]))   # they exit after the command returns
    trained = (repo.parent / "queue.log").read_text().count(TRAIN_RAN)
    return {"wall_s": wall_s, "memory": peaks, "load": load, "trained": trained}


def stop_all(pids, grace_s=30):
    """Wait until the processes `pids()` gives have exited; SIGKILL those left after grace_s."""
    deadline = time.monotonic() + grace_s
    while pids() and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in pids():
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass


def report(ray, queue, real_data):
    ratio = ray["wall_s"] / queue["wall_s"]
    run_s = statistics.mean(ray["steps"].get("dvc exp run", [0]))
    added = {command: statistics.mean(seconds) for command, seconds in ray["steps"].items()
             if command != "dvc exp run"}
    extra_per_trial = (ray["wall_s"] - queue["wall_s"]) / (TRIALS / 2)
    lines = [
        "## Sweeps: a 2-node Ray cluster on this machine against DVC's queue",
        "",
        f"{TRIALS} MLP trials of {EPOCHS} epochs (`{' '.join(GRID)}`), 2 at a time either way, "
        f"on {'real MNIST' if real_data else 'random data of MNIST shapes'}; "
        f"{os.cpu_count()} cores. The queue ran first.",
        "",
        "| | wall (s) | trials trained | load average at the start |",
        "|---|---:|---:|---:|",
        f"| `dvc exp run --queue` + `dvc exp run --run-all -j 2` | {queue['wall_s']:.1f} | "
        f"{queue['trained']} | {queue['load']:.2f} |",
        f"| `python -m sweep --address ...` (2 nodes of 2 CPUs, started in "
        f"{ray['cluster_s']:.1f} s before) | {ray['wall_s']:.1f} | {ray['trained']} | "
        f"{ray['load']:.2f} |",
        f"| **ratio** (goal <= {GOAL_RATIO}) | **{ratio:.2f}** "
        f"({'met' if ratio <= GOAL_RATIO else 'missed'}) | | |",
        "",
        f"Per trial: `dvc exp run` {run_s:.1f} s on its worker; what the sweep adds around it: "
        + ", ".join(f"`{command}` {seconds:.1f} s" for command, seconds in added.items())
        + f" ({sum(added.values()):.1f} s). Against the queue, the sweep took "
        f"{extra_per_trial:+.1f} s per trial slot ({TRIALS // 2} slots of 2 trials).",
        "",
        "| peak memory (RSS, MB) | |",
        "|---|---:|",
        *[f"| Ray sweep: {name} | {mb:.0f} |" for name, mb in ray["memory"].items()],
        *[f"| DVC queue: {name} | {mb:.0f} |" for name, mb in queue["memory"].items()],
        "",
        "What the sweep printed:",
        "",
        "```",
        *ray["output"].rstrip().splitlines(),
        "```",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.sweep",
                                     description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    mirror = os.environ.get("MNIST_MIRROR")
    if mirror and "://" not in mirror:
        mirror = str(Path(mirror).resolve())  # everything runs in a temporary copy
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        repo, env = prepare(tmp, mirror)
        # The queue first: it runs in this repository, with its cache and run-cache, which the
        # sweep's clones never see (each node has a cache of its own).
        queue = measure_queue(repo, env)
        ray = measure_ray(repo, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(ray, queue, bool(mirror)))


if __name__ == "__main__":
    main()
