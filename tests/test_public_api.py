"""The project uses other packages through their public APIs only: no `_name` of Ray, DVC or
the standard library, and of DVC nothing beyond `dvc.api` and the `dvc` command, in the product
and in its tests and benchmark alike. (A private API is a break waiting for the next minor
release.) To check another folder, add it to FOLDERS; the lines in ALLOWED are the exceptions,
each with why."""

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

FOLDERS = ["stages", "app", "sweep", "tests", "bench"]
ALLOWED = {
    # The one workaround: Ray has no public way to a cluster of several nodes on 127.0.0.1
    # (tests/ray_cluster.py says why); tests/sweep/test_ray_cluster.py fails on a Ray it breaks.
    ("tests/ray_cluster.py",
     'JOIN = ("import sys, types; from ray._private import ray_constants; "'),
    # Text, not code: a line of `python -X importtime` output that a bench test parses.
    ("tests/bench/test_bench.py", "import time:      5000 |     150000 |   numpy._core"),
}
CHECKER = Path(__file__).relative_to(REPO)  # its own test writes the private uses it must find
PRIVATE_USES = {
    "a private attribute": re.compile(r"\b(?!self\.|cls\.)[A-Za-z_]\w*\._[a-z]\w*"),
    "a private keyword argument": re.compile(r"[(,]\s*_[a-z]\w*\s*="),
    "a private name imported": re.compile(r"^\s*from\s+\S+\s+import\s+(.*,\s*)?_[a-z]", re.M),
    "DVC internals": re.compile(r"^\s*(from|import)\s+dvc\.(?!api\b)", re.M),
}


def private_api_uses(folder: Path, allowed: set = frozenset()) -> list[str]:
    """"path:line: what: the line" for each use of a private API in the Python files under
    `folder`, paths relative to its parent, but the (path, line) pairs `allowed`."""
    found = []
    for path in sorted(folder.rglob("*.py")):
        name, text = str(path.relative_to(folder.parent)), path.read_text()
        for what, pattern in PRIVATE_USES.items():
            for match in pattern.finditer(text):
                number = text.count("\n", 0, match.start()) + 1
                line = text.splitlines()[number - 1].strip()
                if (name, line) not in allowed and name != str(CHECKER):
                    found.append((name, number, what, line))
    return [f"{name}:{number}: {what}: {line}" for name, number, what, line in sorted(found)]


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_project_uses_public_apis_only(folder):
    assert private_api_uses(REPO / folder, ALLOWED) == []


def test_the_check_finds_each_kind_of_private_use(tmp_path):
    (tmp_path / "bad.py").write_text(
        "from ray._private import ray_constants\n"
        "ray.init(address='local', _temp_dir='/tmp/x')\n"
        "atexit._run_exitfuncs()\n"
        "from dvc.repo import Repo\n"
        "import dvc.utils.hydra\n"
        "from threading import _shutdown\n")
    (tmp_path / "good.py").write_text(
        "import dvc.api\nfrom dvc.api import exp_show\nself._ready.set()\n"
        "ray.init(address='local', include_dashboard=False)\n")
    found = private_api_uses(tmp_path)
    assert [line.split(":")[1] for line in found] == ["1", "2", "3", "4", "5", "6"]
    assert all("bad.py" in line for line in found)
