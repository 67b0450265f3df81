"""One trial, as a Ray task runs it on a worker: clone the git remote, `dvc exp run` the trial
in that clone, push what it made, remove the clone.

This module travels to the workers by value (the head registers it with Ray's cloudpickle), so
a worker needs git, Ray and the pipeline's own requirements, not this project's code. Hence the
stdlib-only imports at the top and the names (not modules) taken from sweep.pipeline.

Order matters for "nothing half-pushed": the experiment's data and model go to the DVC remote
first, and only then its git ref to the git remote (`dvc exp push` alone pushes the ref first).
A worker that dies before the ref is pushed leaves at most unreferenced objects in the DVC
remote, which the retry pushes again; a ref on the git remote always has its outputs behind it.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sweep.pipeline import DVC_ERROR_PREFIX, STAGE_ERROR_PREFIX, TRAINED_LINE

# The folder, in the worker's temporary folder, where it keeps its clones (one per running
# trial) and the DVC cache its trials share, so that the baseline's data crosses the network
# once per machine, not once per trial.
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
    git_url: str          # cloned by each trial; its experiment ref is pushed back there
    baseline: str         # the commit every trial starts from
    dvc_remote: str       # the DVC remote's name ...
    dvc_remote_url: str   # ... and its URL, absolute: the same for every worker
    cache_dir: str | None  # a DVC cache the trials share (the head's, on a local cluster)


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, on which node, and its times in seconds."""
    name: str
    node: str
    reason: str | None = None       # why it failed, in one line; None when it succeeded
    training_s: float | None = None  # what train logged (None: train did not run)
    run_s: float = 0.0               # `dvc exp run`
    wall_s: float = 0.0              # the whole trial: clone, run, push
    log: str = ""                    # everything git and DVC printed

    @property
    def ok(self):
        return self.reason is None


def run_trial(name, set_args, setup):
    """Run trial `name` (`dvc exp run -n name -S ...`) and push it; an Outcome either way."""
    import ray

    started = time.monotonic()
    node = ray.get_runtime_context().get_node_id()
    clones = work_dir() / "clones"
    clones.mkdir(parents=True, exist_ok=True)
    remove_stale_clones(clones)
    clone = clones / f"{os.getpid()}-{name}"
    log = []

    def step(args, what, cwd=clone):
        """None if the command succeeded, else why it failed: `what` and one line."""
        step_started = time.monotonic()
        status, output = run_command(args, cwd, command_env())
        log.append(f"$ {' '.join(args)}  ({time.monotonic() - step_started:.1f} s)\n{output}")
        return None if status == 0 else f"{what}{failure_reason(output)}"

    def outcome(reason=None, run_s=0.0, training_s=None):
        return Outcome(name, node, reason, training_s, run_s, time.monotonic() - started,
                       "\n".join(log))

    try:
        reason = (step(["git", "clone", "--quiet", "--no-checkout", setup.git_url, str(clone)],
                       "git clone: ", cwd=clones)
                  or step(["git", "checkout", "--quiet", "--detach", setup.baseline],
                          "git checkout: "))
        if reason:
            return outcome(reason)
        write_local_config(clone, setup)
        run_started = time.monotonic()
        # --pull: what the baseline's stages made comes from the DVC remote (or the shared
        # cache); a stage whose outputs are in neither runs here. (--allow-missing would skip
        # it and leave the next stage without its input.) A stage's own one-line error says it
        # all (a bad param): no prefix.
        reason = step(["dvc", "exp", "run", "--pull", "-n", name,
                       *[part for arg in set_args for part in ("-S", arg)]], "")
        run_s, run_log = time.monotonic() - run_started, log[-1]
        if reason:
            return outcome(reason, run_s)
        push_started = time.monotonic()
        reason = push(clone, name)
        log.append(f"$ dvc push && dvc exp push --no-cache --force origin {name}  "
                   f"({time.monotonic() - push_started:.1f} s)\n{reason or ''}")
        return outcome(reason, run_s, training_seconds(run_log))
    finally:
        shutil.rmtree(clone, ignore_errors=True)


def work_dir():
    """The worker's own (this module's constants are the head's: they travel with the code)."""
    return Path(tempfile.gettempdir()) / WORK_DIR_NAME


def push(clone, name):
    """Push the trial: its data and model to the DVC remote, then its git ref to the git remote
    (see above). None, or why it failed. Here, through DVC's Python API, rather than as two
    `dvc` commands that would each pay DVC's start-up (a second or two on a busy machine)."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(clone)) as repo:
            repo.push()
            # force: a retry of this trial replaces what an earlier attempt may have pushed
            # before its worker died (the head checked that the name was free before the sweep).
            repo.experiments.push("origin", [name], force=True)
    except (DvcException, OSError) as error:
        return f"push: {error}"
    return None


def command_env():
    env = {key: value for key, value in os.environ.items() if key not in UNSET_ENV}
    # The stages run as `python -m stages.<name>`: `python` must be this interpreter, the one
    # with the pipeline's packages, so its folder goes first on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **COMMAND_ENV}


def write_local_config(clone, setup):
    """.dvc/config.local of the clone: the sweep's DVC remote by its absolute URL (a relative
    one would point somewhere else from every clone), and the shared cache."""
    from configobj import ConfigObj  # DVC's own config reader and writer

    config = ConfigObj(str(clone / ".dvc" / "config.local"))
    config["core"] = {"remote": setup.dvc_remote}
    # Links, not copies, from the shared cache into the clone: the data is read, never written
    # in place (DVC removes a stage's outputs before it runs it).
    config["cache"] = {"dir": setup.cache_dir or str(work_dir() / "cache"),
                       "type": "reflink,hardlink,copy"}
    config[f'remote "{setup.dvc_remote}"'] = {"url": setup.dvc_remote_url}
    config.write()


def run_command(args, cwd, env):
    """(exit status, output) of a command. A cancelled task (Ctrl-C on the head) gets a
    KeyboardInterrupt here: the command and everything it started are stopped on the way out,
    so no stage goes on running for a sweep that is over."""
    process = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        while True:
            try:
                output, _ = process.communicate(timeout=POLL_S)
                return process.returncode, output
            except subprocess.TimeoutExpired:
                continue
    finally:
        if process.poll() is None:
            stop_process_tree(process.pid)


def stop_process_tree(pid):
    """SIGTERM to a process and all its descendants, SIGKILL to those still there after
    STOP_GRACE_S."""
    import psutil  # a dependency of DVC

    try:
        parent = psutil.Process(pid)
        family = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=STOP_GRACE_S)
    for process in alive:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=STOP_GRACE_S)


def remove_stale_clones(clones):
    """Remove the clones of trials whose worker died without cleaning up (a killed worker runs
    no `finally`): each is named after its worker's process id."""
    import psutil

    for clone in clones.iterdir():
        pid = clone.name.split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(clone, ignore_errors=True)


def failure_reason(output):
    """The one line that says why a command failed: a stage's own "error: ..." line, else DVC's
    "ERROR: ...", else the last line printed."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for prefix in (STAGE_ERROR_PREFIX, DVC_ERROR_PREFIX):
        found = [line for line in lines if line.startswith(prefix)]
        if found:
            return found[0].removeprefix(prefix)
    return lines[-1] if lines else "no output"


def training_seconds(output):
    match = TRAINED_LINE.search(output)
    return float(match.group(2)) if match else None
