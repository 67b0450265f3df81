"""One layout: every path is named once, in stages/common/layout.py, and dvc.yaml tells DVC the
truth about what each stage reads: every module it imports, and the paths layout.py names."""

import ast
from pathlib import Path

import pytest

from stages.common import layout
from tests.conftest import REPO, read_yaml

DVC_YAML = read_yaml(REPO / "dvc.yaml")
STAGE_NAMES = list(DVC_YAML["stages"])
OWN = ("stages", "app")  # the packages whose modules a stage may run


def imported_modules(path: Path, seen: set | None = None) -> set[Path]:
    """Every module of this project `path` imports, directly or through another, at any depth
    (imports inside functions included: TensorFlow's stages import lazily)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(OWN):
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            module = REPO / (name.replace(".", "/") + ".py")
            if name.startswith(OWN) and module.is_file() and module not in seen:
                seen.add(module)
                imported_modules(module, seen)
    return seen


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_dvc_yaml_lists_every_module_a_stage_imports(stage):
    script = REPO / f"stages/{stage}.py"
    needed = {script} | imported_modules(script)
    listed = {REPO / dep for dep in DVC_YAML["stages"][stage]["deps"] if dep.endswith(".py")}
    assert listed == needed, (
        "dvc.yaml must list exactly the code the stage runs, or a change to it would not rerun "
        "the stage (or an unrelated one would)")


def layout_paths() -> set[str]:
    return {str(value) for value in vars(layout).values() if isinstance(value, Path)} | {
        str(p) for p in layout.SPLITS.values()}


def test_dvc_yaml_spells_the_paths_layout_names():
    for stage in DVC_YAML["stages"].values():
        for section in ("deps", "outs", "metrics", "plots"):
            for entry in stage.get(section, []):
                path = entry if isinstance(entry, str) else next(iter(entry))
                if not path.endswith(".py"):
                    assert path in layout_paths() or path.startswith(
                        f"{layout.DATASETS}/${{"), path


def test_no_path_is_spelled_outside_the_layout_module():
    """A path or file name of layout.py written out as a literal anywhere else in stages/ is a
    second place to change when it moves."""
    names = layout_paths() | {Path(p).name for p in layout_paths()} | {layout.CATALOGUE_ENTRY}
    names = {name for name in names if "/" in name or "." in name}  # not words: train, data
    found = []
    for module in sorted((REPO / "stages").rglob("*.py")):
        if module.name == "layout.py":
            continue
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Constant) and node.value in names and (
                    module.name, node.value) != ("keras_file.py", "metadata.json"):  # a member
                # of Keras' own zip format, which merely shares our file's name
                found.append(f"{module.name}:{node.lineno}: {node.value!r}")
    assert found == []
