"""Load and validate params.yaml: the one place the pipeline reads its configuration.

The stages must see exactly the values DVC sees, or `dvc.lock` and the run-cache would describe
one run while the model came from another. DVC reads params.yaml with ruamel.yaml as YAML 1.2
(`YAML(typ="safe")`), so we do too. Where a YAML 1.1 reader (PyYAML, and many other tools)
would read a value differently (`010` is 10 in YAML 1.2 but 8 in 1.1, `1:00` is a string or 60,
`yes` a string or true), the value is refused as ambiguous rather than guessed at.

Every stage calls `load(section)` before doing any work. The whole file is checked, not only the
stage's own section, so a typo anywhere stops the first stage that runs, with one line naming the
key, the value and what is allowed.
"""

import math
import reprlib
import urllib.parse
import warnings
from pathlib import Path

PARAMS_FILE = Path("params.yaml")
MAX_FILE_BYTES = 1_000_000  # params.yaml is about 4 KB; anything near this is not a config
MAX_VALUES = 10_000  # nodes once YAML aliases are expanded: refuses "billion laughs"
MAX_DEPTH = 50  # nesting of mappings and lists (the real file has 4 levels)


class ParamsError(ValueError):
    """params.yaml is missing, unreadable, or holds a key or value the pipeline does not accept."""


_SHOWN = reprlib.Repr()  # Python 3.11's Repr takes no arguments
_SHOWN.maxlevel, _SHOWN.maxlist, _SHOWN.maxdict = 2, 6, 6
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 60, 60, 40


def shown(value):
    """A value as an error message shows it: bounded, whatever its size, on one line."""
    return _SHOWN.repr(value).replace("\n", "\\n")


# --- reading the file as DVC does -------------------------------------------------------------

def parse_yaml(text, version=None):
    """Parse `text` as DVC does (YAML 1.2, ruamel's safe loader), or as YAML 1.1 if asked."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MantissaNoDotYAML1_1Warning

    yaml = YAML(typ="safe", pure=True)
    if version:
        yaml.version = version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MantissaNoDotYAML1_1Warning)  # `1e3` read as 1.1
        return yaml.load(text)


def bracket_depth(text):
    """How deep `[` and `{` nest in `text`, quoted strings and comments aside. ruamel's scanner
    takes quadratic time on deep flow nesting (100,000 brackets: seconds), so this is checked
    before parsing."""
    depth = deepest = 0
    for line in text.splitlines():
        quote = None  # an apostrophe in a plain word (don't) ends with its line
        for char in line:
            if quote:
                quote = None if char == quote else quote
            elif char in "'\"":
                quote = char
            elif char == "#":
                break
            elif char in "[{":
                depth += 1
                deepest = max(deepest, depth)
            elif char in "]}":
                depth -= 1
    return deepest


def check_size(node, path="", depth=0, sizes=None):
    """Count values as if aliases were expanded, without expanding them: each shared object is
    counted once and its size reused. Raises ParamsError past MAX_VALUES or MAX_DEPTH."""
    sizes = {} if sizes is None else sizes
    if id(node) in sizes:
        return sizes[id(node)]
    if depth > MAX_DEPTH:
        raise ParamsError(f"{PARAMS_FILE}: nested more than {MAX_DEPTH} levels deep at {path}")
    children = node if isinstance(node, list) else ()
    size = 1
    for key, child in (node.items() if isinstance(node, dict) else enumerate(children)):
        size += check_size(child, f"{path}.{key}" if path else str(key), depth + 1, sizes)
        if size > MAX_VALUES:
            raise ParamsError(f"{PARAMS_FILE}: {path or 'the file'} expands to more than "
                              f"{MAX_VALUES:,} values (YAML aliases?); params.yaml needs a few "
                              "hundred")
    sizes[id(node)] = size
    return size


def same_value(a, b):
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return type(a) is type(b) and a == b


def find_ambiguity(as_dvc, as_yaml11, path="", seen=None):
    """The first (dotted key, YAML 1.2 value, YAML 1.1 value) that the two readings disagree on,
    or None. Shared (aliased) subtrees are compared once."""
    seen = set() if seen is None else seen
    if (id(as_dvc), id(as_yaml11)) in seen:
        return None
    seen.add((id(as_dvc), id(as_yaml11)))
    if isinstance(as_dvc, dict) and isinstance(as_yaml11, dict):
        if list(as_dvc) != list(as_yaml11):  # a key itself reads differently (`yes:`, `010:`)
            for k12, k11 in zip(as_dvc, as_yaml11):
                if not same_value(k12, k11):
                    return f"{path}{'.' if path else ''}{k12}", k12, k11
        for key in as_dvc:
            found = find_ambiguity(as_dvc[key], as_yaml11[key], f"{path}{'.' if path else ''}"
                                   f"{key}", seen)
            if found:
                return found
        return None
    if isinstance(as_dvc, list) and isinstance(as_yaml11, list) and len(as_dvc) == len(as_yaml11):
        for i, (a, b) in enumerate(zip(as_dvc, as_yaml11)):
            found = find_ambiguity(a, b, f"{path}[{i}]", seen)
            if found:
                return found
        return None
    return None if same_value(as_dvc, as_yaml11) else (path, as_dvc, as_yaml11)


def read_params(path=PARAMS_FILE):
    """params.yaml as DVC reads it. Raises ParamsError for what cannot be read, what is too
    large or too deep, and what a YAML 1.1 reader would read differently."""
    from ruamel.yaml import YAMLError

    try:
        if Path(path).stat().st_size > MAX_FILE_BYTES:
            raise ParamsError(f"{path}: over {MAX_FILE_BYTES:,} bytes; params.yaml is a few KB")
        text = Path(path).read_text(encoding="utf-8")
        if bracket_depth(text) > MAX_DEPTH:
            raise ParamsError(f"{path}: [ and {{ nest more than {MAX_DEPTH} levels deep; "
                              "params.yaml needs a few")
        as_dvc = parse_yaml(text)
        check_size(as_dvc)
        as_yaml11 = parse_yaml(text, version=(1, 1))
    except ParamsError:
        raise
    except OSError as e:
        raise ParamsError(f"cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ParamsError(f"cannot read {path}: not UTF-8 text ({e.reason} at byte "
                          f"{e.start})") from e
    except YAMLError as e:  # duplicate keys, bad syntax, unknown tags
        raise ParamsError(f"cannot read {path}: {one_line(e)}") from e
    except (ValueError, RecursionError) as e:  # an integer of 5,000 digits; deep nesting
        raise ParamsError(f"cannot read {path}: {type(e).__name__}: {shown(str(e))}") from e
    found = find_ambiguity(as_dvc, as_yaml11)
    if found:
        key, v12, v11 = found
        raise ParamsError(
            f"{path}: {key or 'the file'} is ambiguous: DVC (YAML 1.2) reads {shown(v12)}, "
            f"YAML 1.1 tools read {shown(v11)}; write it so both agree (e.g. 10, not 010; "
            f"true, not yes; quote a string)")
    return as_dvc


def one_line(error):
    """ruamel's multi-line messages (with a pointer under the text) on one line."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text if len(text) <= 300 else text[:297] + "..."


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
        return None if isinstance(v, str) and v in options else "one of " + ", ".join(options)
    return check


def boolean(v):
    return None if isinstance(v, bool) else "true or false"


def int_list(lo, hi, max_len, min_len=1):
    def check(v):
        ok = (isinstance(v, list) and min_len <= len(v) <= max_len
              and all(integer(lo, hi)(x) is None for x in v))
        return None if ok else f"a list of {min_len} to {max_len} integers from {lo} to {hi}"
    return check


def location_problem(location):
    """Why `location` is no usable mirror (a directory, or a file:// or http(s):// URL), or None.

    Checked before any connection, so that `http://[::1` or `http://a..b/` is a clear error
    rather than a traceback from deep inside urllib."""
    if not isinstance(location, str) or not location.strip():
        return "an empty location"
    if "\n" in location or "\0" in location:
        return "a location with a newline or NUL in it"
    if "://" not in location:
        return None  # a directory path
    try:
        url = urllib.parse.urlsplit(location)
        host, _ = url.hostname, url.port  # .port raises ValueError for a bad port
    except ValueError as e:
        return f"a malformed URL ({e})"
    if url.scheme == "file":
        return None if not url.netloc or url.netloc == "localhost" else \
            "a file:// URL with a host; use file:///absolute/path"
    if url.scheme not in ("http", "https"):
        return f"a URL with scheme '{url.scheme}'; expected file, http or https"
    if not host:
        return "an http(s) URL without a host"
    labels = host.split(".")
    if ":" not in host and not all(0 < len(label) <= 63 for label in labels):
        return f"a URL whose host name '{host}' has an empty or overlong part"
    try:
        host.encode("idna")
    except UnicodeError as e:
        return f"a URL whose host name '{host}' is not valid ({e})"
    return None


def locations(v):
    if not isinstance(v, list):
        return "a list of directory paths or file://, http:// or https:// URLs"
    for item in v:
        problem = location_problem(item)
        if problem:
            return f"a list of directories or URLs, and {shown(item)} is {problem}"
    return None


IDX_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
HEX_DIGITS = {"md5": 32, "gz_md5": 32, "sha256": 64}


def hex_digest(algo):
    def check(v):
        ok = (isinstance(v, str) and len(v) == HEX_DIGITS[algo]
              and all(c in "0123456789abcdef" for c in v))
        return None if ok else f"{HEX_DIGITS[algo]} lowercase hex digits"
    return check


def checksums(v):
    """The four IDX files, each {sha256: <of the decompressed bytes>, gz_md5: <of the .gz>
    (optional)}, and at most one <name>.npz: {sha256 or md5: <of the file>}."""
    allowed = (f"a mapping of {', '.join(IDX_FILES)} to {{sha256: <64 hex>, gz_md5: <32 hex> "
               "(optional)}, and optionally one <name>.npz to {sha256: <64 hex>} or "
               "{md5: <32 hex>}")
    if not isinstance(v, dict):
        return allowed
    npz = [name for name in v if isinstance(name, str) and name.endswith(".npz")]
    if set(v) - set(npz) != set(IDX_FILES) or len(npz) > 1:
        return allowed
    for name, digests in v.items():
        keys = ({"sha256"}, {"md5"}) if name in npz else ({"sha256"}, {"sha256", "gz_md5"})
        if not (isinstance(digests, dict) and set(digests) in keys
                and all(hex_digest(algo)(d) is None for algo, d in digests.items())):
            return allowed
    return None


def class_names(v):
    ok = (isinstance(v, list) and 2 <= len(v) <= 100 and len(set(map(str, v))) == len(v)
          and all(isinstance(x, str) and 0 < len(x) <= 40 for x in v))
    return None if ok else "a list of 2 to 100 different names, each 1 to 40 characters"


DATASET = {
    "mirrors": locations,
    "npz_sources": locations,
    "idx_sources": locations,
    "class_names": class_names,
    "checksums": checksums,
}
DATASETS = ("mnist", "fashion-mnist")


# --- the schema: every key params.yaml may hold, and what it may be ----------------------------

FAMILIES = ("mlp", "cnn")


class Optional(dict):
    """A section of the schema that may be left out, as may each of its keys."""


# How a model is trained: each family has its own copy of these keys, tuned for it.
RECIPE = {
    "optimizer": choice("adam", "adamw", "sgd"),
    "learning_rate": number(0, 1, lo_open=True),
    "weight_decay": number(0, 1),
    "schedule": choice("constant", "cosine"),
    "warmup_epochs": number(0, 100),
    "batch_size": integer(1, 60000),
    "epochs": integer(1, 1000),
    "augment": choice("none", "shift", "affine"),
    "augment_shift": integer(0, 4),
    "augment_rotate": number(0, 45),
    "augment_scale": number(0, 0.5),
    "augment_flip": boolean,
    "threads": integer(0, 256),
}

FAMILY_SCHEMAS = {
    "mlp": {
        "hidden_units": int_list(1, 8192, 8),
        "activation": choice("relu", "gelu", "tanh", "sigmoid", "elu", "selu", "swish"),
        "dropout": number(0, 0.9),
        **RECIPE,
    },
    "cnn": {
        "filters": int_list(1, 512, 3),
        "final_filters": int_list(1, 512, 3, min_len=0),
        "kernel_size": integer(1, 7),
        "padding": choice("valid", "same"),
        "dense_units": integer(0, 4096),
        "dropout": number(0, 0.9),
        **RECIPE,
    },
}

SCHEMA = {
    "data": {
        "dataset": choice(*DATASETS),
        "public_sources": boolean,
        "timeout_s": number(0, 600, lo_open=True),
        "deadline_s": number(0, 86400, lo_open=True),
        "retries": integer(0, 10),
        "backoff_s": number(0, 60),
        **{name: DATASET for name in DATASETS},
    },
    "preprocess": {
        "normalization": choice("scale", "standardize"),
        "val_fraction": number(0, 0.5, lo_open=True),
        "seed": integer(0, 2**31 - 1),
    },
    "train": {
        "model": choice(*FAMILIES),
        "seed": integer(0, 2**31 - 1),
        **FAMILY_SCHEMAS,
        # What a dataset changes in a family's recipe: any of its keys, each optional.
        **{name: Optional({family: Optional(keys) for family, keys in FAMILY_SCHEMAS.items()})
           for name in DATASETS},
    },
    "evaluate": {
        "batch_size": integer(1, 60000),
        "error_grid": integer(1, 100),
    },
}


def key_name(where, key):
    """`train.epochs` for messages; a strange key (a long string, a list) shown bounded."""
    return where + (key if isinstance(key, str) and len(key) <= 60 else shown(key))


def validate(params, schema=SCHEMA, where=""):
    """Raise ParamsError for the first key that is missing, unknown or out of range."""
    if not isinstance(params, dict):
        raise ParamsError(f"{PARAMS_FILE}: expected {where.rstrip('.') or 'the file'} to be a "
                          f"mapping of {', '.join(schema)}; got {shown(params)}")
    for key in params:
        if key not in schema:
            raise ParamsError(f"{PARAMS_FILE}: unknown key {key_name(where, key)} = "
                              f"{shown(params[key])}; allowed here: {', '.join(schema)}")
    for key, check in schema.items():
        if key not in params and (isinstance(schema, Optional) or isinstance(check, Optional)):
            continue
        if key not in params:
            # Every check rejects None, so check(None) is the text of what is allowed.
            expected = "a mapping" if isinstance(check, dict) else check(None)
            raise ParamsError(f"{PARAMS_FILE}: missing key {where}{key}; expected {expected}")
        if isinstance(check, dict):
            validate(params[key], check, f"{where}{key}.")
            continue
        allowed = check(params[key])
        if allowed:
            raise ParamsError(f"{PARAMS_FILE}: {where}{key} = {shown(params[key])} "
                              f"is not allowed; expected {allowed}")


def load(*sections, path=PARAMS_FILE):
    """The validated sections of params.yaml asked for (one section: itself; several: a
    tuple). Raises ParamsError (one line)."""
    params = read_params(path)
    validate(params)
    found = tuple(params[section] for section in sections)
    return found[0] if len(found) == 1 else found


def save(params, path=PARAMS_FILE):
    """Write params as DVC itself writes params.yaml back (`dvc exp run -S`): ruamel.yaml,
    block style. For tests and the benchmark; no stage writes params."""
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(params, f)
