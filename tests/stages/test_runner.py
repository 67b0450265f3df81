"""What every stage's entry point shares: one-line errors, and stop signals that are never lost.

A signal that arrives while Python runs a finaliser (`__del__`, a weakref callback) has the
exception its handler raises printed as "Exception ignored in ..." and dropped: the stage would
run on and exit 0. These tests deliver the signal exactly there, from the finaliser itself, so
they do not depend on how busy the machine is.
"""

import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO

# A stage whose stop signal arrives inside a finaliser, then (optionally) moves a finished
# folder into place, as preprocess does, or simply returns.
STAGE = """
import os, signal, sys
from pathlib import Path
from stages.fileio import replace_dir
from stages.runner import run

class Finalised:
    def __del__(self):
        os.kill(os.getpid(), signal.{signal})  # handled right here: its SystemExit is dropped
        print("the signal was handled in the finaliser", flush=True)  # not reached

def main():
    finalised = Finalised()
    del finalised
    print("ran on after the signal", flush=True)
    if sys.argv[1] == "swap":
        replace_dir(Path("new"), Path("out"))

run(main)
"""


def run_stage_code(tmp_path, signum, then):
    (tmp_path / "new").mkdir()
    (tmp_path / "new/new.txt").write_text("new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/old.txt").write_text("old")
    code = STAGE.format(signal=signal.Signals(signum).name)
    return subprocess.run([sys.executable, "-c", code, then], cwd=tmp_path, timeout=60,
                          env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_lost_in_a_finaliser_still_stops_the_stage(tmp_path, signum):
    result = run_stage_code(tmp_path, signum, then="return")
    assert "handled in the finaliser" not in result.stdout, "the signal arrived in the finaliser"
    assert "ran on after the signal" in result.stdout, "Python dropped its exception"
    assert result.returncode == 128 + signum, "the record of it still stops the stage"
    assert result.stderr == "", "and nothing is printed for it: no 'Exception ignored' noise"


def test_a_swap_after_a_lost_signal_is_refused(tmp_path):
    result = run_stage_code(tmp_path, signal.SIGTERM, then="swap")
    assert result.returncode == 128 + signal.SIGTERM
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["old.txt"], "the old set, whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"], "nothing moved aside"


def test_a_stop_during_a_swap_waits_until_the_swap_is_done(tmp_path):
    """The signal arrives between the swap's two renames: the new folder still lands whole,
    and the stage stops right after."""
    code = """
import os, signal
from pathlib import Path
from stages import fileio
from stages.runner import run

real_replace = os.replace
def replace_then_signal(source, target):
    real_replace(source, target)
    os.kill(os.getpid(), signal.SIGTERM)  # after the old folder was moved aside
fileio.os.replace = replace_then_signal

def main():
    fileio.replace_dir(Path("new"), Path("out"))
    print("after the swap", flush=True)

run(main)
"""
    (tmp_path / "new").mkdir()
    (tmp_path / "new/new.txt").write_text("new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out/old.txt").write_text("old")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=60,
                            env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert result.returncode == 128 + signal.SIGTERM and "after the swap" not in result.stdout
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"], "the old one removed"


def test_an_expected_failure_is_one_line_and_exit_status_1(tmp_path):
    code = ("from stages.runner import StageError, run\n"
            "def main():\n    raise StageError('data/raw.npz: not found; run `dvc repro`')\n"
            "run(main)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=60,
                            env={"PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == "error: data/raw.npz: not found; run `dvc repro`\n"
