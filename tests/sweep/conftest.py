"""Sweep fixtures: the tiny pipeline repository with the sweep in it (as in this project), a way
to run `python -m sweep` there as a user does, and to find what a sweep left behind: every
process it started carries a marker in its environment, every clone lives in the test's own
temporary folder."""

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.s3_server import BUCKET, S3Server

# .ci/run: a skipped sweep test is a failure. (Looked for, not imported: the tests run Ray in
# processes of their own: importing it here cost each worker half a second of CPU.)
if not os.environ.get("REQUIRE_RAY") and importlib.util.find_spec("ray") is None:
    pytest.skip("the sweep needs Ray: pip install -r requirements-sweep.txt",
                allow_module_level=True)

from sweep.trial import WORK_DIR_NAME  # noqa: E402  (after the check that Ray is there)

MARKER = "SWEEP_TEST_RUN"
# A tiny trial trains in seconds; a whole sweep of them, on a busy 2-core machine, in minutes.
SWEEP_TIMEOUT_S = 300


@pytest.fixture
def sweep_repo(pipeline_repo, tmp_path):
    """pipeline_repo with this repository's sweep/ committed in it, trials of one thread (two
    of them fill this 2-core machine), and an environment whose TMPDIR (where trials clone)
    is the test's own and whose marker every process started from it inherits."""
    repo = pipeline_repo
    shutil.copytree(REPO / "sweep", repo.path / "sweep",
                    ignore=shutil.ignore_patterns("__pycache__"))
    repo.set_param("train.mlp.threads", 1)
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "the sweep, one thread per trial")
    (tmp_path / "tmp").mkdir()
    # The local cluster's folder in one of the test's own, apart from another test's sweep
    # running at the same time; under /tmp, since the test's path is too long for Ray's sockets.
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    repo.env.update({"TMPDIR": str(tmp_path / "tmp"), "RAY_TMPDIR": ray_tmp,
                     MARKER: uuid.uuid4().hex, "PYTHONUNBUFFERED": "1"})
    yield repo
    # Whatever a failed test left running or on disk (a passing one leaves nothing: the tests
    # check that themselves, before this).
    for pid in marked_processes(repo.env[MARKER]):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture
def s3_remote():
    """A moto S3 server on 127.0.0.1 holding an empty bucket; emptied and stopped afterwards."""
    server = S3Server()
    server.client().create_bucket(Bucket=BUCKET)
    yield server
    server.reset()
    server.stop()


def start_sweep(repo, *args, env=None):
    """`python -m sweep ARGS` in the repository, in a session of its own, as from a terminal."""
    return subprocess.Popen([sys.executable, "-m", "sweep", *args], cwd=repo.path,
                            env=env or repo.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(process):
    """(exit status, stdout, stderr) of a sweep started by start_sweep."""
    try:
        out, err = process.communicate(timeout=SWEEP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"the sweep ran past {SWEEP_TIMEOUT_S} s\n{out}\n{err}") from None
    return process.returncode, out, err


def clones(tmpdir):
    """The trials' clones under a TMPDIR: {trial name: path}."""
    folder = Path(tmpdir) / WORK_DIR_NAME / "clones"
    return {p.name.split("-", 1)[1]: p for p in folder.iterdir()} if folder.is_dir() else {}


def wait_for_a_stage_to_have_run(tmpdir, process, timeout_s=SWEEP_TIMEOUT_S):
    """Wait until a trial under `tmpdir` is inside `dvc exp run`, its first stage done (its
    dvc.lock written): the names of the trials there at that moment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        running = clones(tmpdir)
        if any((path / "dvc.lock").exists() for path in running.values()):
            return sorted(running)
        assert process.poll() is None, f"the sweep ended first: {process.communicate()}"
        time.sleep(0.05)
    raise AssertionError(f"no trial got through a stage under {tmpdir} in {timeout_s} s")


def marked_processes(marker_value):
    """The ids of live processes whose environment carries this test's marker."""
    needle = f"{MARKER}={marker_value}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") \
                    and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(pid))
        except OSError:  # gone, or not ours to read
            pass
    return found


def ray_temp_dirs(repo):
    """The temporary folders of local clusters that sweeps in `repo` started (sweep.cluster
    makes them under $RAY_TMPDIR)."""
    return set(Path(repo.env["RAY_TMPDIR"]).glob("ray-sweep-*"))


def table_rows(stdout):
    """{trial: the rest of its row} from the table the sweep prints last (Ray prints its notices
    before it, on the same stdout)."""
    lines = stdout.splitlines()
    header = max(i for i, line in enumerate(lines) if line.startswith("trial "))
    rows = {}
    for line in lines[header + 1:]:
        if not line.strip():
            break
        name, rest = line.split(None, 1)
        rows[name] = rest
    return rows


def exp_refs(repo, where="."):
    """{name: sha} of the experiment refs in `where` (a path or URL; "." the repo itself)."""
    out = repo.git("ls-remote", str(where), "refs/exps/*").stdout
    return {line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in out.splitlines()}


def exp_metrics(repo, names, path="metrics/test.json", key="test_accuracy"):
    """{name: value or None} of the experiments `names` in `dvc exp show --json`."""
    values = dict.fromkeys(names)
    for baseline in json.loads(repo.dvc("exp", "show", "--json").stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                if rev.get("name") in values:
                    metrics = (rev.get("data") or {}).get("metrics") or {}
                    values[rev["name"]] = ((metrics.get(path) or {}).get("data") or {}).get(key)
    return values
