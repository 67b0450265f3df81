"""`dvc` for the tests: the real command line, in a process forked from one that has imported it.

A `dvc` process spends half a second of CPU importing DVC before it reads its arguments, and
the tests run over a hundred of them. Here a helper process imports DVC once per pytest worker
and forks a child for each command, which runs what the `dvc` script runs (the function its
`console_scripts` entry point names, found through importlib.metadata, as pip's script finds it)
in a process of its own: its own working folder, environment, exit status, output and exit
handlers (the child ends as any Python program does), and stdin at /dev/null.

The helper is a process of its own, not multiprocessing's forkserver: that one is shared by
everything in the test process, the app's decode processes (app/pictures/sandbox.py) among
them, which would then be forked from a process that imported DVC rather than the app.
"""

import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SCRIPT = str(Path(sys.executable).parent / "dvc")  # what a user runs: this venv's `dvc`
# What the commands the tests run import between them (the helper imports it once): a warm-up
# and no more, so a module a later DVC no longer has is passed over, costing time, never a
# failure. Each import only defines things: nothing here starts a thread, which forking would
# not copy.
PRELOAD = ["celery", "celery.worker", "dulwich.porcelain", "dvc.api", "dvc.cachemgr", "dvc.cli",
           "dvc.cli.parser", "dvc.data_cloud", "dvc.render.match", "dvc.repo",
           "dvc.repo.experiments.queue.celery", "dvc.repo.experiments.show", "dvc.repo.index",
           "dvc.repo.plots.diff", "dvc.repo.reproduce", "dvc.scm", "dvc.utils.strictyaml",
           "dvc_data.index", "dvc_render", "dvc_s3", "dvc_task.proc.manager", "kombu", "networkx",
           "platformdirs", "pygit2", "pyparsing", "ruamel.yaml", "s3fs", "scmrepo.git"]

# The helper: reads one JSON request a line, forks, and answers with the child's exit status.
HELPER = """
import importlib, json, os, sys
from importlib.metadata import entry_points
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError:
        pass
[script] = entry_points(group="console_scripts", name="dvc")
main = script.load()
for line in sys.stdin:
    argv, cwd, env, out, err = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the command, as `dvc` runs it; its exit status is the process's
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        for fd, path in ((1, out), (2, err)):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = argv
        sys.exit(main())
    _, status = os.waitpid(pid, 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""
_helper = None
_lock = threading.Lock()


def dvc(args: list, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """`dvc *args` run in `cwd` with `env`: a CompletedProcess with its exit status and text
    output, as subprocess.run(..., capture_output=True, text=True) gives."""
    global _helper
    argv = [SCRIPT, *map(str, args)]
    with _lock, tempfile.TemporaryDirectory(prefix="dvc-output-") as folder:
        if _helper is None or _helper.poll() is not None:
            _helper = subprocess.Popen([sys.executable, "-c", HELPER, *PRELOAD], text=True,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        out, err = Path(folder, "stdout"), Path(folder, "stderr")
        _helper.stdin.write(json.dumps([argv, str(cwd), dict(env), str(out), str(err)]) + "\n")
        _helper.stdin.flush()
        status = int(_helper.stdout.readline())
        return subprocess.CompletedProcess(argv, status, _read(out), _read(err))


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""
