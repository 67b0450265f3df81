"""The cost of a sweep on a Ray cluster, against DVC's own queue, on one machine where the
cluster gains nothing: 8 MLP trials of 3 epochs (`-S 'train.seed=range(1,9)'`) by
`dvc exp run --queue` and `dvc queue start -j 2` (run as `dvc exp run --run-all -j 2`, which
starts the same workers and waits for them), then by `python -m sweep` on a 2-node cluster of
this machine (tests/ray_cluster.py: two `ray start` process trees on 127.0.0.1, the trials of 2
threads asking for a node's 2 CPUs each). Both in one fresh copy of this repository, its
baseline reproduced and pushed to a bare git remote and a directory DVC remote first.

    MNIST_MIRROR=../shared/mnist python -m bench.sweep      # without a mirror: random data
    MNIST_MIRROR=../shared/mnist python -m bench.sweep --rounds 2   # on a busy machine

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

from bench.pipeline import GIT_IDENTITY, copy_repo, pipeline_env, timed, use_random_data
from tests import ray_cluster

TRIALS = 8
ENGINES = {"queue": "`dvc exp run --queue` + `dvc exp run --run-all -j 2`",
           "ray": "`python -m sweep --address ...` (2 nodes of 2 CPUs)"}
EPOCHS = 3
GOAL_RATIO = 1.3
# What DVC prints when a stage runs rather than comes from a cache: each side must train all.
TRAIN_RAN = "Running stage 'train'"
MARKER = "BENCH_SWEEP_RUN"
# A trial's log (.dvc/tmp/sweeps/NAME.log) times each step: "$ git clone --quiet ...  (0.1 s)";
# a step is named by its words before the first option ("git clone", "dvc push", "dvc exp push").
STEP = re.compile(r"^\$ ([^-\n]+?)(?: -.*)?  \(([0-9.]+) s\)$", re.MULTILINE)


def dvc(*args):
    return [str(Path(sys.executable).parent / "dvc"), *args]


def git(*args):
    return ["git", *args]


def bench_env(mirror):
    """Both sides' environment: the git identity, this Python's bin first on PATH (dvc runs
    each stage as `python -m ...`), and a marker every process started from it inherits."""
    return {**pipeline_env(mirror), **GIT_IDENTITY, MARKER: uuid.uuid4().hex}


def prepare(tmp, mirror):
    """A fresh copy of the repository, 3 epochs, its baseline reproduced and committed, pushed
    to a bare git remote `origin` and to its DVC remote: what a team's repository holds."""
    repo = tmp / "repo"
    repo.mkdir()
    copy_repo(repo)
    env = bench_env(mirror)
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


def grid(round_):
    """Round r's trials: seeds of their own, so that no round finds another's in a cache."""
    first = 1 + TRIALS * round_
    return ["-S", f"train.seed=range({first},{first + TRIALS})"]


def measure_ray(repo, env, round_):
    name = f"ray{round_ + 1}"
    load = os.getloadavg()[0]
    started = time.perf_counter()
    head, worker = nodes = ray_cluster.start_cluster([2, 2], env)
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
        with open(repo.parent / f"{name}.log", "w") as log:
            process = psutil.Popen([sys.executable, "-m", "sweep", "--address", head.address,
                                    "-n", name, *grid(round_)], cwd=repo,
                                   env={**env, **ray_cluster.LOOPBACK_ENV}, stdout=log, stderr=log)
            sweep["pid"] = process.pid
            if process.wait() != 0:
                raise RuntimeError("the sweep failed:\n" + Path(log.name).read_text()[-3000:])
        wall_s = time.perf_counter() - started
        output = Path(log.name).read_text()
    finally:
        peaks = memory.stop()
        ray_cluster.stop_cluster(nodes)
    logs = "".join(log.read_text() for log in (repo / ".dvc/tmp/sweeps").glob(f"{name}-*.log"))
    return {"engine": "ray", "cluster_s": cluster_s, "wall_s": wall_s, "memory": peaks,
            "steps": steps(logs), "output": output, "load": load,
            "trained": logs.count(TRAIN_RAN)}


def steps(logs):
    """{command: [seconds in each trial]} from the trials' logs."""
    found = {}
    for command, seconds in STEP.findall(logs):
        found.setdefault(command, []).append(float(seconds))
    return found


def measure_queue(repo, env, round_):
    name = f"queue{round_ + 1}"
    load = os.getloadavg()[0]
    timed(dvc("exp", "run", "--queue", "-n", name, *grid(round_)), repo, env)
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
        with open(repo.parent / f"{name}.log", "w") as log:
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
    trained = (repo.parent / f"{name}.log").read_text().count(TRAIN_RAN)
    return {"engine": "queue", "wall_s": wall_s, "memory": peaks, "load": load,
            "trained": trained}


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


def report(rounds, real_data):
    """rounds: [(first, second)] of each round's measurements, each {"engine": ...}."""
    ratios = [by["ray"]["wall_s"] / by["queue"]["wall_s"]
              for by in ({m["engine"]: m for m in pair} for pair in rounds)]
    ray = [m for pair in rounds for m in pair if m["engine"] == "ray"]
    queue = [m for pair in rounds for m in pair if m["engine"] == "queue"]
    steps_all = {}
    for m in ray:
        for command, seconds in m["steps"].items():
            steps_all.setdefault(command, []).extend(seconds)
    run_s = statistics.mean(steps_all.pop("dvc exp run", [0]))
    added = {command: statistics.mean(seconds) for command, seconds in steps_all.items()}
    ratio = statistics.median(ratios)
    lines = [
        "## Sweeps: a 2-node Ray cluster on this machine against DVC's queue",
        "",
        f"{TRIALS} MLP trials of {EPOCHS} epochs (`-S train.seed=range(...)`, seeds of its own "
        f"in each run), 2 at a time either way, on "
        f"{'real MNIST' if real_data else 'random data of MNIST shapes'}; {os.cpu_count()} "
        f"cores. {len(rounds)} round(s), the order alternating.",
        "",
        "| round | engine | wall (s) | trials trained | load average at the start |",
        "|---:|---|---:|---:|---:|",
        *[f"| {r + 1} | {ENGINES[m['engine']]} | {m['wall_s']:.1f} | {m['trained']} | "
          f"{m['load']:.2f} |" for r, pair in enumerate(rounds) for m in pair],
        "",
        f"Wall-time ratio, sweep / queue, each round: "
        f"{', '.join(f'{x:.2f}' for x in ratios)}; **median {ratio:.2f}** (goal <= "
        f"{GOAL_RATIO}: {'met' if ratio <= GOAL_RATIO else 'missed'}). The sweep's 2 nodes "
        f"started in {statistics.mean(m['cluster_s'] for m in ray):.1f} s, before its clock.",
        "",
        f"Per trial: `dvc exp run` {run_s:.1f} s on its worker; what the sweep adds around it: "
        + ", ".join(f"`{command}` {seconds:.1f} s" for command, seconds in added.items())
        + f" ({sum(added.values()):.1f} s).",
        "",
        "| peak memory (RSS, MB), last round | |",
        "|---|---:|",
        *[f"| Ray sweep: {name} | {mb:.0f} |" for name, mb in ray[-1]["memory"].items()],
        *[f"| DVC queue: {name} | {mb:.0f} |" for name, mb in queue[-1]["memory"].items()],
        "",
        "What the last sweep printed:",
        "",
        "```",
        *ray[-1]["output"].rstrip().splitlines(),
        "```",
    ]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.sweep",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="runs of both, the order "
                        "alternating (queue first in the first): on a busy machine, more")
    args = parser.parse_args(argv)
    mirror = os.environ.get("MNIST_MIRROR")
    if mirror and "://" not in mirror:
        mirror = str(Path(mirror).resolve())  # everything runs in a temporary copy
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    try:
        repo, env = prepare(tmp, mirror)
        rounds = []
        for round_ in range(args.rounds):
            # Whoever goes second finds the machine's page cache warm: alternate.
            order = (measure_queue, measure_ray) if round_ % 2 == 0 else \
                (measure_ray, measure_queue)
            rounds.append([measure(repo, env, round_) for measure in order])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(report(rounds, bool(mirror)))


if __name__ == "__main__":
    main()
