"""What every stage's `python -m stages.<name>` entry point shares.

- Expected failures (bad params, a missing or damaged input, a full disk, a read-only folder)
  end the stage with one line on stderr and exit status 1, not a traceback.
- SIGTERM, SIGHUP and SIGINT (`kill`, a closed terminal, Ctrl-C, `dvc` stopped by CI) unwind
  the stage like an error (exit status 128 + the signal's number), so its temporary files are
  removed on the way out and no output is left half-written.
  SIGKILL cannot be caught: what it leaves behind is removed by the next run of the stage
  (fileio.remove_stale_temporaries), and DVC removes a stage's outputs before it reruns it.
"""

import logging
import os
import re
import signal
import sys
import tempfile

from stages.fileio import InputError
from stages.params import ParamsError

# TensorFlow's C++ INFO lines (CPU features, oneDNN) on stderr; warnings stay. Set here, before
# any stage imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


class StageError(RuntimeError):
    """The stage cannot do its work; the message says why, in one line."""


def _exit_on_signal(signum, frame):
    # SystemExit runs every `finally` and context manager on the way out.
    sys.exit(128 + signum)


def os_error_line(error):
    """'data/mnist.npz: No space left on device' from an OSError, without the errno noise."""
    where = error.filename or ""
    if error.filename2:
        where = f"{where} -> {error.filename2}"
    cause = error.strerror or str(error)
    return f"{where}: {cause}" if where else cause


def catch_signals():
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _exit_on_signal)


def run(main):
    """Run a stage's `main()` with clean signal handling and one-line errors."""
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    catch_signals()
    try:
        main()
    except (StageError, InputError, ParamsError) as error:
        sys.exit(f"error: {error}")
    except OSError as error:  # a full disk, a read-only folder, an output path that is a folder
        sys.exit(f"error: {os_error_line(error)}")


# What TensorFlow prints on stderr while it is imported, twice over, whatever
# TF_CPP_MIN_LOG_LEVEL says: notices, not problems.
_IMPORT_NOTICES = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on"
    r"|cpu_feature_guard|This TensorFlow binary is optimized|To enable the following instructions")


def import_tensorflow():
    """Import TensorFlow with its import-time notices filtered out of stderr; anything else it
    prints there (a real warning, an error) still reaches the user."""
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if not _IMPORT_NOTICES.search(line):
                    print(line, file=sys.stderr)
    # absl's failure-signal handler, which TensorFlow installs, takes SIGTERM over and dies of
    # it with a stack dump: take it back, so a stopped stage still unwinds and cleans up.
    catch_signals()
