"""`dvc` for the tests: the real command line, in a process forked from one that has imported it.

A `dvc` process spends half a second of CPU importing DVC before it reads its arguments, and
the tests run over a hundred of them. Here each command runs in a process that a forkserver
(Python's multiprocessing) forks from a process that imported DVC once; the command itself runs
as the `dvc` script runs it (`dvc.cli.main`) in a process of its own: its own working folder,
environment, exit status, output and exit handlers, and stdin at /dev/null.
"""

import atexit
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

# What the commands the tests run import between them (the forkserver imports it once). Each
# import only defines things: nothing here starts a thread, which forking would not copy.
PRELOAD = ["celery", "celery.worker", "dulwich.porcelain", "dvc.api", "dvc.cachemgr", "dvc.cli",
           "dvc.cli.parser", "dvc.data_cloud", "dvc.render.match", "dvc.repo",
           "dvc.repo.experiments.queue.celery", "dvc.repo.experiments.show", "dvc.repo.index",
           "dvc.repo.plots.diff", "dvc.repo.reproduce", "dvc.scm", "dvc.utils.strictyaml",
           "dvc_data.index", "dvc_render", "dvc_s3", "dvc_task.proc.manager", "kombu", "networkx",
           "platformdirs", "pygit2", "pyparsing", "ruamel.yaml", "s3fs", "scmrepo.git"]

SCRIPT = str(Path(sys.executable).parent / "dvc")  # what a user runs: this venv's `dvc`
_forkserver = None


def dvc(args, cwd, env):
    """`dvc *args` run in `cwd` with `env`: a CompletedProcess with its exit status and text
    output, as subprocess.run(..., capture_output=True, text=True) gives."""
    global _forkserver
    if _forkserver is None:
        _forkserver = multiprocessing.get_context("forkserver")
        _forkserver.set_forkserver_preload([__name__, *PRELOAD])
    argv = [SCRIPT, *map(str, args)]
    with tempfile.TemporaryDirectory(prefix="dvc-output-") as folder:
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        process = _forkserver.Process(target=_main, args=(argv, str(cwd), dict(env), out, err))
        process.start()
        process.join()
        return subprocess.CompletedProcess(argv, process.exitcode, _read(out), _read(err))


def _read(path):
    return path.read_text(errors="replace") if path.exists() else ""


def _main(argv, cwd, env, out, err):
    """In the forked process: the rest of what starting `dvc` would have set, then its main."""
    # multiprocessing set this process's start method to its parent's, the forkserver: DVC's
    # own processes (the queue's workers) start as in the `dvc` script, by the platform's.
    multiprocessing.set_start_method(None, force=True)
    for fd, path in ((1, out), (2, err)):
        opened = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(opened, fd)
        os.close(opened)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # found again from TMPDIR
    sys.argv = argv
    from dvc.cli import main

    try:
        status = main(argv[1:])
    finally:  # what Python's exit does, which multiprocessing's processes skip: wait for the
        threading._shutdown()  # threads that are not daemons, then run the exit handlers
        atexit._run_exitfuncs()
    sys.exit(status)
