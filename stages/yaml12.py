"""YAML files as DVC reads them: params.yaml, and the data catalogue beside it.

The stages must see exactly the values DVC sees, or `dvc.lock` and the run-cache would describe
one run while the model came from another. DVC reads YAML 1.2 with ruamel.yaml, so we do too,
and refuse what a YAML 1.1 reader (PyYAML, many other tools) would read otherwise: `010` is 10
in 1.2 but 8 in 1.1, `1:00` a string or 60, `yes` a string or true. Hostile files (alias bombs,
deep nesting, huge integers) are refused quickly, in one line.
"""

import reprlib
import warnings

from stages.runner import StageError

MAX_BYTES = 16_000  # our files are a few KB; this also bounds ruamel's time on odd input
MAX_VALUES = 10_000  # values once YAML aliases are expanded: refuses a "billion laughs"
MAX_DEPTH = 50  # nesting of mappings and lists (params.yaml has 4 levels)
# Flow brackets, [ and {: a config has a dozen. ruamel's scanner takes quadratic time on deep
# flow nesting (8,000 brackets in 16 KB: seconds), so they are counted before it runs.
MAX_BRACKETS = 1_000


class ParamsError(StageError):
    """A config file that cannot be read, or a key or value the pipeline does not accept."""


_SHORT = reprlib.Repr()  # Python 3.11's Repr takes no arguments
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict = 2, 6, 6
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 60, 60, 40


def shown(value):
    """A value as an error message shows it: bounded, whatever its size, on one line."""
    return _SHORT.repr(value).replace("\n", "\\n")


def parse(text, version=None):
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MantissaNoDotYAML1_1Warning

    yaml = YAML(typ="safe", pure=True)
    yaml.version = version
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MantissaNoDotYAML1_1Warning)  # `1e3` read as YAML 1.1
        return yaml.load(text)


def count_values(node, where, depth=0, counted=None):
    """How many values `node` holds once aliases are expanded, counted without expanding them
    (a shared object is counted once and its size reused); refused past the limits."""
    counted = {} if counted is None else counted
    if id(node) not in counted:
        if depth > MAX_DEPTH:
            raise ParamsError(f"{where}: nested more than {MAX_DEPTH} levels deep")
        children = node.values() if isinstance(node, dict) else (
            node if isinstance(node, list) else ())
        counted[id(node)] = 1 + sum(count_values(c, where, depth + 1, counted) for c in children)
        if counted[id(node)] > MAX_VALUES:
            raise ParamsError(f"{where} expands to more than {MAX_VALUES:,} values (YAML "
                              "aliases?); a config needs a few hundred")
    return counted[id(node)]


def same(a, b):
    return type(a) is type(b) and (a == b or a != a and b != b)  # NaN is NaN


def first_difference(as_dvc, as_yaml11, key=""):
    """(dotted key, YAML 1.2 value, YAML 1.1 value) of the first value, or key, the two readings
    disagree on; None if they agree."""
    if isinstance(as_dvc, dict) and isinstance(as_yaml11, dict):
        for k12, k11 in zip(as_dvc, as_yaml11):
            here = f"{key}.{k12}" if key else str(k12)
            found = (here, k12, k11) if not same(k12, k11) else first_difference(
                as_dvc[k12], as_yaml11[k11], here)
            if found:
                return found
        return None
    if isinstance(as_dvc, list) and isinstance(as_yaml11, list) and len(as_dvc) == len(as_yaml11):
        pairs = (first_difference(a, b, f"{key}[{i}]") for i, (a, b) in enumerate(
            zip(as_dvc, as_yaml11)))
        return next((found for found in pairs if found), None)
    return None if same(as_dvc, as_yaml11) else (key, as_dvc, as_yaml11)


def read_yaml(path):
    """A YAML file as DVC reads it; ParamsError (one line) for what cannot be read, what is too
    big or too deep, and what a YAML 1.1 reader would read differently."""
    from ruamel.yaml import YAMLError

    try:
        if path.stat().st_size > MAX_BYTES:
            raise ParamsError(f"{path}: over {MAX_BYTES:,} bytes; a config is a few KB")
        text = path.read_text(encoding="utf-8")
        if text.count("[") + text.count("{") > MAX_BRACKETS:
            raise ParamsError(f"{path}: more than {MAX_BRACKETS:,} [ and {{ brackets; a config "
                              "has a few")
        as_dvc = parse(text)
        count_values(as_dvc, path)
        as_yaml11 = parse(text, version=(1, 1))
    except OSError as e:
        raise ParamsError(f"cannot read {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ParamsError(f"cannot read {path}: not UTF-8 text ({e.reason} at byte "
                          f"{e.start})") from e
    except (YAMLError, ValueError, RecursionError) as e:  # bad syntax, duplicate keys, tags,
        # an integer of 5,000 digits, brackets nested thousands deep
        text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        text = text if len(text) <= 300 else text[:297] + "..."
        raise ParamsError(f"cannot read {path}: {text or type(e).__name__}") from e
    found = first_difference(as_dvc, as_yaml11)
    if found:
        key, v12, v11 = found
        raise ParamsError(f"{path}: {key} is ambiguous: DVC (YAML 1.2) reads {shown(v12)}, "
                          f"YAML 1.1 tools read {shown(v11)}; write it so both agree (e.g. 10, "
                          "not 010; true, not yes; quote a string)")
    return as_dvc
