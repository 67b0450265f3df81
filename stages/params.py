"""Load and validate params.yaml: the one place the pipeline reads its configuration.

Every stage calls `load(section)` before doing any work. The whole file is checked, not only the
stage's own section, so a typo anywhere stops the first stage that runs, with one line naming the
key, the value and what is allowed.
"""

import re
import sys
from pathlib import Path

import yaml

PARAMS_FILE = Path("params.yaml")


class ParamsError(ValueError):
    """params.yaml is missing, unreadable, or holds a key or value the pipeline does not accept."""


# --- checks: each takes a value and returns an error text (what is allowed) or None -----------

def integer(lo, hi):
    def check(v):
        ok = isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi
        return None if ok else f"an integer from {lo} to {hi}"
    return check


def number(lo, hi, *, lo_open=False):
    def check(v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return allowed
        return None if (lo < v if lo_open else lo <= v) and v <= hi else allowed
    allowed = f"a number {'>' if lo_open else '>='} {lo} and <= {hi}"
    return check


def choice(*options):
    def check(v):
        return None if v in options else "one of " + ", ".join(options)
    return check


def boolean(v):
    return None if isinstance(v, bool) else "true or false"


def int_list(lo, hi, max_len):
    def check(v):
        ok = (isinstance(v, list) and 1 <= len(v) <= max_len
              and all(integer(lo, hi)(x) is None for x in v))
        return None if ok else f"a list of 1 to {max_len} integers from {lo} to {hi}"
    return check


def string_list(v):
    ok = isinstance(v, list) and all(isinstance(x, str) and x for x in v)
    return None if ok else "a list of directory paths or file://, http:// or https:// URLs"


_DIGEST = re.compile(r"^(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})$")
DATA_FILES = ("mnist.npz", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
              "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def checksums(v):
    ok = (isinstance(v, dict) and set(v) == set(DATA_FILES)
          and all(isinstance(d, str) and _DIGEST.match(d) for d in v.values()))
    return None if ok else (f"a mapping of exactly {', '.join(DATA_FILES)} "
                            "to 'md5:<32 hex>' or 'sha256:<64 hex>'")


# --- the schema: every key params.yaml may hold, and what it may be ----------------------------

SCHEMA = {
    "data": {
        "mirrors": string_list,
        "public_sources": boolean,
        "timeout_s": number(0, 600, lo_open=True),
        "retries": integer(0, 10),
        "backoff_s": number(0, 60),
        "checksums": checksums,
    },
    "preprocess": {
        "normalization": choice("scale", "standardize"),
        "val_fraction": number(0, 0.5, lo_open=True),
        "seed": integer(0, 2**31 - 1),
    },
    "train": {
        "seed": integer(0, 2**31 - 1),
        "hidden_units": int_list(1, 8192, 8),
        "activation": choice("relu", "gelu", "tanh", "sigmoid", "elu", "selu", "swish"),
        "dropout": number(0, 0.9),
        "optimizer": choice("adam", "adamw", "sgd"),
        "learning_rate": number(0, 1, lo_open=True),
        "weight_decay": number(0, 1),
        "schedule": choice("constant", "cosine"),
        "warmup_epochs": number(0, 100),
        "batch_size": integer(1, 60000),
        "epochs": integer(1, 1000),
        "augment_shift": integer(0, 4),
        "threads": integer(0, 256),
    },
    "evaluate": {
        "batch_size": integer(1, 60000),
        "error_grid": integer(1, 100),
    },
}


def validate(params):
    """Raise ParamsError for the first key that is missing, unknown or out of range."""
    if not isinstance(params, dict):
        raise ParamsError(f"{PARAMS_FILE}: expected a mapping of sections {', '.join(SCHEMA)}")
    for section in params:
        if section not in SCHEMA:
            raise ParamsError(f"{PARAMS_FILE}: unknown section '{section}'; "
                              f"allowed: {', '.join(SCHEMA)}")
    for section, fields in SCHEMA.items():
        values = params.get(section)
        if not isinstance(values, dict):
            raise ParamsError(f"{PARAMS_FILE}: section '{section}' is missing or not a mapping")
        for key in values:
            if key not in fields:
                raise ParamsError(f"{PARAMS_FILE}: unknown key {section}.{key} = "
                                  f"{values[key]!r}; allowed keys: {', '.join(fields)}")
        for key, check in fields.items():
            if key not in values:
                # Every check rejects None, so check(None) is the text of what is allowed.
                raise ParamsError(f"{PARAMS_FILE}: missing key {section}.{key}; "
                                  f"expected {check(None)}")
            allowed = check(values[key])
            if allowed:
                raise ParamsError(f"{PARAMS_FILE}: {section}.{key} = {values[key]!r} "
                                  f"is not allowed; expected {allowed}")


def load(section, path=PARAMS_FILE):
    """Return one validated section of params.yaml, or exit with a one-line error."""
    try:
        params = yaml.safe_load(Path(path).read_text())
        validate(params)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        sys.exit(f"error: cannot read {path}: {e}".replace("\n", " "))
    except ParamsError as e:
        sys.exit(f"error: {e}")
    return params[section]
