"""The pipeline as a user runs it, timed: `dvc repro` in a fresh copy of this repository, then
each stage alone for its wall time, its peak memory and whether it imported TensorFlow.

The copy is what a clean clone holds: the tracked files, no data/ (raw.npz, processed/), no
model/, no DVC cache, so the first `dvc repro` runs every stage. Download reads MNIST from
MNIST_MIRROR; without it, from random pictures of MNIST's shapes (use_random_data)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from tests.conftest import write_catalogue
from tests.digits import write_mirror

REPO = Path(__file__).resolve().parent.parent
STAGES = ("download", "preprocess", "train", "evaluate", "export")  # in dvc.yaml's order


def copy_repo(dest):
    """The working tree's tracked files (uncommitted edits included) as a new git repository:
    what a clean clone holds, with no DVC cache and no outputs."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "bench copy"]):
        subprocess.run(["git", *args], cwd=dest, env=git_env(), check=True)


GIT_IDENTITY = {"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@invalid",
                "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@invalid"}


def git_env():
    return {**os.environ, **GIT_IDENTITY}


def use_random_data(repo, mirror):
    """Without real MNIST: random pictures and labels of MNIST's shapes, as the four IDX .gz
    files in `mirror`, and the copy's catalogue entry (datasets/mnist/dataset.yaml) holding the
    SHA-256 of their content and no public source, committed. Timings hold; accuracies mean
    nothing."""
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8),
              "y_train": rng.integers(0, 10, 60000, dtype=np.uint8),
              "x_test": rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8),
              "y_test": rng.integers(0, 10, 10000, dtype=np.uint8)}
    write_catalogue(repo, {"mnist": write_mirror(Path(mirror), arrays)})
    subprocess.run(["git", "commit", "-q", "-am", "random data"], cwd=repo, env=git_env(),
                   check=True)


def timed(cmd, cwd, env):
    """Run `cmd` to completion; return (wall seconds, stdout). Fails loudly if it fails."""
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-3000:]}")
    return seconds, result.stdout


def stage_run(name, repo, env):
    """One stage, as dvc runs it, with its peak RSS and whether TensorFlow was imported."""
    probe = ("import json, resource, runpy, sys\n"
             f"runpy.run_module('stages.{name}', run_name='__main__', alter_sys=True)\n"
             "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
             "print(json.dumps({'tensorflow': 'tensorflow' in sys.modules, 'peak_rss': peak}))\n")
    seconds, stdout = timed([sys.executable, "-c", probe], repo, env)
    report = json.loads(stdout.splitlines()[-1])
    return {"seconds": seconds, "peak_rss_mb": report["peak_rss"] / 1024,  # ru_maxrss is in KiB
            "imports_tensorflow": report["tensorflow"]}


def measure(repo, env):
    """`dvc repro` of every stage, then with nothing to do, then each stage alone."""
    dvc = str(Path(sys.executable).parent / "dvc")
    results = {}
    # --force: the committed metrics/ may already match, and DVC would rightly skip evaluate.
    results["repro_full_s"], out = timed([dvc, "repro", "--force"], repo, env)
    if out.count("Running stage") != len(STAGES):
        raise RuntimeError(f"the first dvc repro did not run every stage:\n{out}")
    results["repro_noop_s"], out = timed([dvc, "repro"], repo, env)
    if "Running stage" in out:
        raise RuntimeError(f"the second dvc repro ran stages:\n{out}")
    results["stages"] = {name: stage_run(name, repo, env) for name in STAGES}
    return results


def pipeline_env(mirror):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    if mirror:
        env["MNIST_MIRROR"] = str(mirror)
    return env


def prepare_data(repo, env):
    """Only download and preprocess, in the copy: the training benchmark's data, when the
    pipeline itself is not measured."""
    for name in STAGES[:2]:
        timed([sys.executable, "-m", f"stages.{name}"], repo, env)
    return repo / "data" / "processed"


def table(stages_run, family):
    lines = [
        "## Pipeline: a fresh copy of the repository, data from the mirror",
        "",
        "The copy holds the tracked files only (no data/, model/ or DVC cache), "
        f"so the first `dvc repro` runs every stage; train trains params.yaml's `{family}`. "
        "Then each stage runs again alone, for its wall time and peak RSS.",
        "",
        "| step | wall (s) | peak RSS (MB) | imports TensorFlow |",
        "|---|---:|---:|---|",
    ]
    for name, s in stages_run["stages"].items():
        lines.append(f"| `python -m stages.{name}` | {s['seconds']:.1f} | "
                     f"{s['peak_rss_mb']:.0f} | {'yes' if s['imports_tensorflow'] else 'no'} |")
    lines += [f"| `dvc repro --force`, clean copy: every stage | "
              f"{stages_run['repro_full_s']:.1f} | | |",
              f"| `dvc repro`, nothing to do | {stages_run['repro_noop_s']:.1f} | | |"]
    return lines
