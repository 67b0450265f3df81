"""One trial, as a Ray task runs it on a worker: clone the git remote, write the trial's params
files, `dvc exp run` it in that clone, push what it made, remove the clone. This module travels
to the workers by value (Ray's cloudpickle), so a worker needs git, Ray and the pipeline's
requirements, not this project's code: of this project it takes only values (sweep.pipeline).

Nothing half-pushed: the experiment's data and model go to the DVC remote (`dvc push`) before
its git ref (`dvc exp push --no-cache`; without that flag the ref would go first)."""

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import psutil

from sweep.pipeline import STAGE_ERROR_PREFIX, TRAINING_TIME

# In the worker's temporary folder: its clones (clones/, one per running trial) and the DVC
# cache its trials share (cache/), so the baseline's data crosses the network once per machine.
WORK_DIR_NAME = "mnist-sweep"
POLL_S = 0.2  # how often a running command is checked on: how soon a cancelled task notices
# How long a cancelled command and all it started get to stop cleanly (a stage removes its
# temporary files on SIGTERM) before they are killed.
STOP_GRACE_S = 10
# No prompt for a password nobody can type, no analytics, and no auto-push (ref before data).
COMMAND_ENV = {"GIT_TERMINAL_PROMPT": "0", "DVC_NO_ANALYTICS": "1"}
UNSET_ENV = ("DVC_EXP_AUTO_PUSH", "DVC_EXP_GIT_REMOTE")


@dataclass(frozen=True)
class Setup:
    """What every trial of a sweep shares."""
    git_url: str     # cloned by each trial; its experiment ref is pushed back there
    baseline: str    # the commit every trial starts from
    dvc_config: str  # the .dvc/config.local of each clone: the DVC remote and the cache


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, on which node, and its times in seconds."""
    name: str
    node: str
    reason: str | None = None        # why it failed, in one line; None when it succeeded
    training_s: float | None = None  # what train wrote (None: train did not run)
    wall_s: float = 0.0              # the whole trial: clone, run, push
    log: str = ""                    # everything git and DVC printed, each command timed

    @property
    def ok(self) -> bool:
        return self.reason is None


def run_trial(name: str, files: dict[str, str], setup: Setup) -> Outcome:
    """Run trial `name` (its params files, {path: text}) as `dvc exp run -n name` on the
    baseline, and push it; an Outcome either way."""
    import ray

    started, node = time.monotonic(), ray.get_runtime_context().get_node_id()
    clones = Path(tempfile.gettempdir()) / WORK_DIR_NAME / "clones"
    clones.mkdir(parents=True, exist_ok=True)
    for stale in clones.glob("[0-9]*-*"):  # of trials whose worker (its pid) died: no `finally`
        if not psutil.pid_exists(int(stale.name.split("-", 1)[0])):
            shutil.rmtree(stale, ignore_errors=True)
    clone, log = clones / f"{os.getpid()}-{name}", []

    def step(*args: str, cwd: Path = clone) -> str | None:
        """None if the command succeeded, else why not in one line (a stage's own says it all)."""
        step_started, command = time.monotonic(), command_name(args)
        status, output = run_command(args, cwd)
        log.append(f"$ {' '.join(args)}  ({time.monotonic() - step_started:.1f} s)\n{output}")
        if status == 0:
            return None
        why = error_line(output)
        return why if command == "dvc exp run" else f"{command}: {why}"

    try:
        reason = (step("git", "clone", "--quiet", "--no-checkout", setup.git_url, str(clone),
                       cwd=clones)
                  or step("git", "checkout", "--quiet", "--detach", setup.baseline))
        if not reason:
            for path, text in {".dvc/config.local": setup.dvc_config, **files}.items():
                (clone / path).parent.mkdir(parents=True, exist_ok=True)
                (clone / path).write_text(text)
            # --pull: the baseline's outputs come from the DVC remote (or the shared cache); a
            # stage whose outputs are in neither runs here. --force: a retry replaces what an
            # attempt whose worker died may have pushed.
            reason = (step("dvc", "exp", "run", "--pull", "-n", name) or step("dvc", "push")
                      or step("dvc", "exp", "push", "--no-cache", "--force", "origin", name))
        return Outcome(name, node, reason, None if reason else training_seconds(clone),
                       time.monotonic() - started, "\n".join(log))
    finally:
        shutil.rmtree(clone, ignore_errors=True)


def training_seconds(clone: Path) -> float | None:
    """The training time train wrote; None where train did not run (its outputs were cached)."""
    try:
        return float(json.loads((clone / TRAINING_TIME[0]).read_text())[TRAINING_TIME[1]])
    except (OSError, ValueError, KeyError):
        return None


def run_command(args: Sequence[str], cwd: Path) -> tuple[int, str]:
    """(exit status, output) of a command, in a process group of its own. A cancelled task
    (Ctrl-C on the head) gets a KeyboardInterrupt here: the command and everything it started
    are stopped on the way out, so no stage goes on running for a sweep that is over."""
    env = {key: value for key, value in os.environ.items() if key not in UNSET_ENV}
    # The stages run as `python -m stages.<name>`: this interpreter, with the pipeline's packages.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    process = subprocess.Popen(args, cwd=cwd, env={**env, **COMMAND_ENV}, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0)
    try:
        while True:
            with suppress(subprocess.TimeoutExpired):
                output = process.communicate(timeout=POLL_S)[0]
                return process.returncode, output
    finally:
        if process.poll() is None:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the command's process group, SIGKILL to what is left after STOP_GRACE_S."""
    deadline = time.monotonic() + STOP_GRACE_S
    with suppress(ProcessLookupError):  # no process of the group is left
        os.killpg(process.pid, signal.SIGTERM)
        while time.monotonic() < deadline:
            process.poll()  # reaps the command itself once it has exited
            os.killpg(process.pid, 0)
            time.sleep(POLL_S)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def command_name(args: Sequence[str]) -> str:
    """"git clone", "dvc exp run": a command's words before its first option."""
    return " ".join(itertools.takewhile(lambda arg: not arg.startswith("-"), args[:3]))


def error_line(output: str) -> str:
    """The line of a command's output that says why it failed: a stage's own "error: ...",
    else DVC's "ERROR: ..." (each without its prefix), else git's "fatal: ...", else the last."""
    lines = [line.strip() for line in output.splitlines() if line.strip()] or ["no output"]
    for prefix in (STAGE_ERROR_PREFIX, "ERROR: "):
        found = next((line for line in lines if line.startswith(prefix)), None)
        if found:
            return found.removeprefix(prefix)
    return next((line for line in lines if line.startswith("fatal: ")), lines[-1])
