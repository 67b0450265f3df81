"""What every stage's `python -m stages.<name>` entry point shares.

- Expected failures (bad params, a missing or damaged input, a full disk, a read-only folder)
  end the stage with one line on stderr and exit status 1, not a traceback.
- SIGTERM, SIGHUP and SIGINT (`kill`, a closed terminal, Ctrl-C, `dvc` stopped by CI) unwind
  the stage like an error (exit status 128 + the signal's number), so its temporary files are
  removed on the way out and no output is left half-written. The signal is also recorded: one
  that arrives while Python runs a finaliser has its exception printed and dropped ("Exception
  ignored in ..."), and the record still stops the stage (fileio's swaps refuse, run() exits).
  SIGKILL cannot be caught: what it leaves behind is removed by the next run of the stage
  (fileio.remove_stale_temporaries), and DVC removes a stage's outputs before it reruns it.
"""

import atexit
import gc
import logging
import os
import re
import signal
import sys
import tempfile

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_received = []  # the stop signals that arrived, first first


class StageError(RuntimeError):
    """The stage cannot do its work; the message says why, in one line."""


def on_stop_signal(signum, frame):
    _received.append(signum)
    sys.exit(128 + signum)  # SystemExit runs every `finally` and context manager on the way out


def exit_if_stopped():
    """Exit 128 + n if a stop signal arrived, even one whose exception was lost."""
    if _received:
        sys.exit(128 + _received[0])


def catch_signals():
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)


def quiet_lost_stop(unraisable):
    """sys.unraisablehook: a stop signal's SystemExit raised inside a finaliser is recorded and
    obeyed later, so the traceback Python would print for it ("Exception ignored in ...") is
    noise; anything else is printed as usual."""
    if not (isinstance(unraisable.exc_value, SystemExit) and _received):
        sys.__unraisablehook__(unraisable)


def os_error_line(error):
    """'data/raw.npz: No space left on device' from an OSError, without the errno noise."""
    where = error.filename or ""
    if error.filename2:
        where = f"{where} -> {error.filename2}"
    cause = error.strerror or str(error)
    return f"{where}: {cause}" if where else cause


def run(main):
    """Run a stage's `main()` with clean signal handling and one-line errors."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    catch_signals()
    sys.unraisablehook = quiet_lost_stop
    try:
        main()
        exit_if_stopped()
    except StageError as error:
        end(f"error: {error}")
    except OSError as error:  # a full disk, a read-only folder, an output path that is a folder
        end(f"error: {os_error_line(error)}")
    except SystemExit as stop:  # a stop signal, or a stage's own sys.exit
        end(stop.code)
    if "tensorflow" in sys.modules:
        end(0)


def end(status):
    """Exit as sys.exit(status) would: a message goes to stderr with status 1. A stage that
    imported TensorFlow skips Python's teardown (os._exit): tearing TensorFlow down costs a
    second or more of CPU once a model has run, and does nothing for the stage, whose files
    are all written and closed by now (its `with` blocks are done). The exit handlers still
    run, for a millisecond: TensorFlow's remove the Python files it wrote to the temporary
    folder for each traced function (a handful per run, which would pile up in /tmp)."""
    if "tensorflow" not in sys.modules:
        sys.exit(status)
    if isinstance(status, str):
        print(status, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()  # as Python's own exit runs them; logging.shutdown is one
    if _received and not status:  # a stop signal while they ran: its exception was dropped
        status = 128 + _received[0]
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status or 0)


# What TensorFlow prints on stderr while it is imported, twice over, whatever
# TF_CPP_MIN_LOG_LEVEL says: notices, not problems.
_IMPORT_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on"
    r"|cpu_feature_guard|This TensorFlow binary is optimized|To enable the following instructions")


def import_tensorflow():
    """Import TensorFlow for a stage: the same kernels on every CPU, its import-time notices
    filtered out of stderr (anything else it prints there still reaches the user)."""
    if "tensorflow" in sys.modules:
        return
    # oneDNN's kernels are TensorFlow's default on Intel CPUs but not on AMD ones, where its
    # convolutions run 2-3x faster than the fallback: asked for everywhere, every x86 CPU takes
    # the same code path. TensorFlow's own INFO lines are dropped; warnings stay.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    # The notices come from C++ before Python's logging exists: only the file descriptor can
    # be caught.
    sys.stderr.flush()
    saved = os.dup(2)
    # The import makes millions of objects that live until the stage ends: without the cyclic
    # collector, which would scan them again and again as they pile up, it takes a fifth less
    # CPU; frozen, later collections skip them. (Freed memory is still freed: by refcount.)
    gc.disable()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            gc.enable()
            gc.freeze()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not _IMPORT_NOTICES.search(line):
                    print(line, file=sys.stderr)
    # absl's failure-signal handler, which TensorFlow installs, takes SIGTERM over and dies of
    # it with a stack dump: take it back, so a stopped stage still unwinds and cleans up.
    catch_signals()
