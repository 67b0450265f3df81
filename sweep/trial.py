"""One trial, as a Ray task runs it on a worker: clone the git remote, write the trial's params
files, `dvc exp run` it in that clone, push what it made, remove the clone.

This module travels to the workers by value (the head registers it with Ray's cloudpickle), so
a worker needs git, Ray and the pipeline's own requirements, not this project's code: hence the
stdlib-only imports at the top and the names (not modules) taken from sweep.pipeline.

Order matters for "nothing half-pushed": the experiment's data and model go to the DVC remote
first (`dvc push`), and only then its git ref (`dvc exp push --no-cache`; without that flag it
would push the ref first). A worker that dies in between leaves at most unreferenced objects in
the DVC remote, which the retry pushes again; a ref on the git remote has its outputs behind it.
"""

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

from sweep.pipeline import STAGE_ERROR_PREFIX, TIMING_FILE, TIMING_KEY

# The folder, in the worker's temporary folder, where it keeps its clones (one per running
# trial, in clones/) and the DVC cache its trials share (cache/), so that the baseline's data
# crosses the network once per machine, not once per trial.
WORK_DIR_NAME = "mnist-sweep"
# How often a running command is checked on: the interval in which a cancelled task notices.
POLL_S = 0.2
# How long a cancelled command and what it started get to stop cleanly (a stage removes its
# temporary files on SIGTERM) before they are killed.
STOP_GRACE_S = 10
# What tells the worker's git and DVC to behave as the sweep needs: no prompt for a password
# nobody can type; no analytics; and no auto-push, which would push the ref before the data.
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
    reason: str | None = None       # why it failed, in one line; None when it succeeded
    training_s: float | None = None  # what train wrote (None: train did not run)
    run_s: float = 0.0               # `dvc exp run`
    wall_s: float = 0.0              # the whole trial: clone, run, push
    log: str = ""                    # everything git and DVC printed

    @property
    def ok(self) -> bool:
        return self.reason is None


def run_trial(name: str, files: dict[str, str], setup: Setup) -> Outcome:
    """Run trial `name` (its params files {path: text} on the baseline) as `dvc exp run -n
    name`, and push it; an Outcome either way."""
    import ray

    started = time.monotonic()
    node = ray.get_runtime_context().get_node_id()
    clones = work_dir() / "clones"
    clones.mkdir(parents=True, exist_ok=True)
    remove_stale_clones(clones)
    clone = clones / f"{os.getpid()}-{name}"
    log, seconds = [], {}

    def step(*args: str, cwd: Path = clone) -> str | None:
        """None if the command succeeded, else why it failed, in one line: `dvc exp run`'s
        own (a stage's error says it all: a bad param), others' after the command's name."""
        step_started, command = time.monotonic(), command_name(args)
        status, output = run_command(args, cwd)
        seconds[command] = time.monotonic() - step_started
        log.append(f"$ {' '.join(args)}  ({seconds[command]:.1f} s)\n{output}")
        if status == 0:
            return None
        reason = error_line(output)
        return reason if command == "dvc exp run" else f"{command}: {reason}"

    def outcome(reason: str | None, training_s: float | None = None) -> Outcome:
        return Outcome(name, node, reason, training_s, seconds.get("dvc exp run", 0.0),
                       time.monotonic() - started, "\n".join(log))

    try:
        reason = (step("git", "clone", "--quiet", "--no-checkout", setup.git_url, str(clone),
                       cwd=clones)
                  or step("git", "checkout", "--quiet", "--detach", setup.baseline))
        if reason:
            return outcome(reason)
        for path, text in {".dvc/config.local": setup.dvc_config, **files}.items():
            (clone / path).parent.mkdir(parents=True, exist_ok=True)
            (clone / path).write_text(text)
        # --pull: what the baseline's stages made comes from the DVC remote (or the shared
        # cache); a stage whose outputs are in neither runs here. (--allow-missing would skip
        # it and leave the next stage without its input.)
        reason = step("dvc", "exp", "run", "--pull", "-n", name)
        if reason:
            return outcome(reason)
        # force: a retry of this trial replaces what an earlier attempt may have pushed before
        # its worker died (the head checked that the name was free before the sweep).
        reason = step("dvc", "push") or step("dvc", "exp", "push", "--no-cache", "--force",
                                             "origin", name)
        return outcome(reason, training_seconds(clone))
    finally:
        shutil.rmtree(clone, ignore_errors=True)


def work_dir() -> Path:
    """The worker's own (this module's constants are the head's: they travel with the code)."""
    return Path(tempfile.gettempdir()) / WORK_DIR_NAME


def training_seconds(clone: Path) -> float | None:
    """The training time train wrote in the clone; None where train did not run (its outputs
    came from a cache)."""
    try:
        return float(json.loads((clone / TIMING_FILE).read_text())[TIMING_KEY])
    except (OSError, ValueError, KeyError):
        return None


def command_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in UNSET_ENV}
    # The stages run as `python -m stages.<name>`: `python` must be this interpreter, the one
    # with the pipeline's packages, so its folder goes first on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **COMMAND_ENV}


def run_command(args: Sequence[str], cwd: Path) -> tuple[int, str]:
    """(exit status, output) of a command, run in a process group of its own. A cancelled task
    (Ctrl-C on the head) gets a KeyboardInterrupt here: the command and everything it started
    are stopped on the way out, so no stage goes on running for a sweep that is over."""
    process = subprocess.Popen(args, cwd=cwd, env=command_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, process_group=0)
    try:
        while True:
            with suppress(subprocess.TimeoutExpired):
                output, _ = process.communicate(timeout=POLL_S)
                return process.returncode, output
    finally:
        if process.poll() is None:
            stop(process)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the command's process group, SIGKILL to what is left of it after
    STOP_GRACE_S."""
    deadline = time.monotonic() + STOP_GRACE_S
    with suppress(ProcessLookupError):  # raised once no process of the group is left
        os.killpg(process.pid, signal.SIGTERM)
        while time.monotonic() < deadline:
            process.poll()  # the command itself, reaped once it has exited
            os.killpg(process.pid, 0)
            time.sleep(POLL_S)
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def remove_stale_clones(clones: Path) -> None:
    """Remove the clones of trials whose worker died without cleaning up (a killed worker runs
    no `finally`): each is named after its worker's process id."""
    import psutil  # a dependency of DVC

    for clone in clones.iterdir():
        pid = clone.name.split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(clone, ignore_errors=True)


def command_name(args: Sequence[str]) -> str:
    """"git clone", "dvc exp run": a command's words before its first option."""
    return " ".join(itertools.takewhile(lambda arg: not arg.startswith("-"), args[:3]))


def error_line(output: str) -> str:
    """The one line of a command's output that says why it failed: a stage's own "error: ..."
    line, else DVC's "ERROR: ..." (each without its prefix), else git's "fatal: ...", else the
    last line printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()] or ["no output"]
    for prefix in (STAGE_ERROR_PREFIX, "ERROR: "):
        found = next((line for line in lines if line.startswith(prefix)), None)
        if found:
            return found.removeprefix(prefix)
    return next((line for line in lines if line.startswith("fatal: ")), lines[-1])
