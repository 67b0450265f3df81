"""What every stage's `python -m stages.<name>` shares.

- An expected failure (bad params, a missing or damaged input, a bad picture, a full disk) ends
  the stage with one line on stderr, `error: ...`, and exit status 1: never a traceback.
- SIGTERM, SIGHUP and SIGINT (`kill`, a closed terminal, Ctrl-C, `dvc` stopped by CI) raise
  SystemExit(128 + n): every `finally` and `with` block runs on the way out, so temporary
  files are removed and no output is left half-written (stages/common/files.py); and they are
  recorded, for the one Python drops in a finaliser (exit_if_stopped).
"""

import gc
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
received: list[int] = []  # the stop signals that arrived, first first


class StageError(Exception):
    """The stage cannot do its work; the message says why, in one line."""


def stop(signum: int, frame: object) -> None:
    received.append(signum)
    raise SystemExit(128 + signum)


def exit_if_stopped() -> None:
    """Exit 128 + n if a stop signal arrived, even one whose exception Python dropped (in a
    finaliser): before an output is put in place (files.atomic), and at a stage's end."""
    if received:
        raise SystemExit(128 + received[0])


def quiet_lost_stop(unraisable: "sys.UnraisableHookArgs") -> None:
    """sys.unraisablehook: a stop signal's SystemExit dropped in a finaliser is obeyed later
    (exit_if_stopped), so its "Exception ignored" traceback would be noise."""
    if not (isinstance(unraisable.exc_value, SystemExit) and received):
        sys.__unraisablehook__(unraisable)


def catch_stop_signals() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)


def run(main: Callable[[], None]) -> None:
    """Run a stage's `main()`: one line for an expected failure, a stop signal unwinds."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    catch_stop_signals()
    sys.unraisablehook = quiet_lost_stop
    try:
        main()
    except StageError as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # a full disk, a read-only folder, an output path that is a folder
        where = " -> ".join(str(f) for f in (error.filename, error.filename2) if f)
        sys.exit(f"error: {where + ': ' if where else ''}{error.strerror or error}")
    exit_if_stopped()


# What TensorFlow prints on stderr while Keras imports it, whatever TF_CPP_MIN_LOG_LEVEL says:
# notices, not problems.
NOTICES = ("All log messages before absl::InitializeLog", "oneDNN custom operations are on")


def import_tensorflow() -> None:
    """Import TensorFlow and Keras for a stage, after its params and inputs are read (a mistake
    there is said before TensorFlow's seconds): the same kernels on every CPU, the import's
    notices left out of stderr (anything else it prints there still reaches the user)."""
    if "keras" in sys.modules:
        return
    # oneDNN's kernels are TensorFlow's default on Intel CPUs but not on AMD ones, where its
    # convolutions run 2-3x faster than the fallback: asked for everywhere, every x86 CPU takes
    # the same code path.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    sys.stderr.flush()
    saved = os.dup(2)  # the notices come from C++, before Python's logging exists
    # The import makes millions of objects that live until the stage ends. Frozen, the cyclic
    # collector never scans them again: the import takes a fifth less CPU, and so does the exit.
    gc.disable()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401  (imports TensorFlow)
        finally:
            gc.enable()
            gc.freeze()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not line.startswith("I0000") and not any(n in line for n in NOTICES):
                    print(line, file=sys.stderr)
    # AutoGraph imports each function it converts from a .py file in the temporary folder, and
    # removes the file at exit; the __pycache__ Python would write beside it would stay there.
    sys.dont_write_bytecode = True
    # absl's failure-signal handler, which TensorFlow installs, takes SIGTERM over and dies of
    # it with a stack dump: take it back, so a stopped stage still unwinds and cleans up.
    catch_stop_signals()
