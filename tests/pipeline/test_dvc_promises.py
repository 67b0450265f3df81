"""The promises DVC makes, held for this pipeline and checked with the real dvc and git CLIs.

Each test works on a temporary git repo holding a copy of the pipeline, on the tiny datasets
served over 127.0.0.1 (see conftest.py). The session's repo has run `dvc repro` once; tests that
change anything get a copy of it, DVC cache included.
"""

import json
import re

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO, PipelineRepo, read_yaml, stages_run, write_yaml
from tests.pipeline.conftest import epochs_trained, lock_md5s

pytestmark = pytest.mark.slow

ALL_STAGES = ["download", "preprocess", "train", "evaluate", "export"]
AFTER_TRAIN = ["train", "evaluate", "export"]
OUTPUTS = {"data/raw.npz", "data/processed", "metrics/data.json", "model/model.keras",
           "model/metadata.json", "model/model.onnx", "metrics/train", "metrics/test.json",
           "metrics/per_class.csv", "metrics/confusion.csv", "metrics/errors.png",
           "metrics/export.json"}


def test_repro_builds_every_output_then_does_nothing(reproduced_repo, tiny_arrays):
    repo = reproduced_repo
    raw = np.load(repo.path / "data/raw.npz")
    for key, array in tiny_arrays.items():
        np.testing.assert_array_equal(raw[key], array[..., None] if key[0] == "x" else array)
    assert raw["x_train"].dtype == np.uint8
    assert raw["class_names"].tolist() == [str(d) for d in range(10)]

    # The test pictures reach preprocess only to be split off; train + val partition train.
    processed = {s: np.load(repo.path / f"data/processed/{s}.npz")
                 for s in ("train", "val", "test")}
    # The tiny digits are drawn from few sizes and offsets: some test ones are copies of
    # training ones, and the test set leaves them out.
    train_pictures = {p.tobytes() for p in tiny_arrays["x_train"]}
    kept = np.array([p.tobytes() not in train_pictures for p in tiny_arrays["x_test"]])
    np.testing.assert_array_equal(processed["test"]["y"], tiny_arrays["y_test"][kept])
    assert processed["test"]["x"].shape == (kept.sum(), 28, 28, 1) and 0 < kept.sum() < 200
    assert len(processed["train"]["y"]) + len(processed["val"]["y"]) == len(tiny_arrays["y_train"])
    assert np.bincount(processed["val"]["y"]).tolist() == [6] * 10, "stratified: 10 % of each"

    metadata = json.loads((repo.path / "model/metadata.json").read_text())
    assert (metadata["family"], metadata["dataset"]) == ("mlp", "mnist")
    assert metadata["class_names"] == [str(d) for d in range(10)]
    curves = repo.path / "metrics/train/plots/metrics"
    assert sorted(p.stem for p in curves.iterdir()) == [
        "learning_rate", "train_accuracy", "train_loss", "val_accuracy", "val_loss"]
    assert epochs_trained(repo) == repo.params()["train"]["mlp"]["epochs"]

    test = json.loads((repo.path / "metrics/test.json").read_text())
    assert set(test) == {"test_accuracy", "test_loss"}
    assert test["test_accuracy"] > 0.5, "5 epochs on printed digits should beat chance (0.1)"
    confusion = (repo.path / "metrics/confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted"
    assert len(confusion) - 1 == round(kept.sum() * (1 - test["test_accuracy"])), "the errors"
    export = json.loads((repo.path / "metrics/export.json").read_text())
    assert export == {"onnx_mismatches": 0}
    assert json.loads((repo.path / "metrics/data.json").read_text()) == {
        "skipped_files": 0, "test_copies": int((~kept).sum())}
    timing = json.loads((repo.path / "metrics/timing.json").read_text())
    assert timing["train_seconds"] > 0

    # Nothing changed: nothing runs, and DVC agrees everything is up to date.
    assert set(lock_md5s(repo)) == OUTPUTS
    assert repo.repro() == []
    assert "up to date" in repo.dvc("status").stdout
    assert repo.git("status", "--porcelain").stdout == ""
    # Timings are local: neither a DVC output nor something git would commit.
    assert "timing" not in (repo.path / "dvc.lock").read_text()
    assert repo.git("check-ignore", "metrics/timing.json").returncode == 0


def test_repro_leaves_nothing_in_the_temporary_folder(reproduced):
    """TensorFlow writes a Python file there for each function it converts, and removes them
    as the process exits, but not the bytecode Python caches beside them (runner.py), on a
    machine that does not set PYTHONDONTWRITEBYTECODE (the `reproduced` fixture's)."""
    assert list((reproduced.path.parent / "tmp").iterdir()) == []


def test_a_train_param_reruns_train_evaluate_and_export_only(experimented_repo):
    """The first experiment changed train.mlp.epochs: what `dvc exp run` ran."""
    assert stages_run(experimented_repo.first_run) == AFTER_TRAIN


def test_other_changes_rerun_exactly_the_stages_they_affect(reproduced_repo):
    repo = reproduced_repo
    # A preprocess param: preprocess is out of date, download is not (what follows reruns as
    # above, once the split changes). Put back, nothing to do.
    repo.set_param("preprocess.seed", 7)
    changed = json.loads(repo.dvc("status", "--json").stdout)
    assert list(changed) == ["preprocess"], changed
    repo.set_param("preprocess.seed", 42)

    repo.set_param("evaluate.error_grid", 4)
    assert repo.repro() == ["evaluate"]

    # The catalogue entry is download's: another source reruns it, and nothing else, as the
    # data it gives are the same.
    entry = read_yaml(repo.path / "datasets/mnist/dataset.yaml")
    entry["urls"] = ["http://127.0.0.1:9/never-asked/"]  # the mirror answers first
    write_yaml(repo.path / "datasets/mnist/dataset.yaml", entry)
    assert repo.repro() == ["download"]

    # A comment-only edit reruns train; the model comes out bit-identical, so DVC skips the rest.
    train_py = repo.path / "stages/train.py"
    train_py.write_text(train_py.read_text() + "\n# a comment\n")
    assert repo.repro() == ["train"]
    assert "up to date" in repo.dvc("status").stdout


def test_two_clones_produce_bit_identical_outputs(reproduced, tmp_path):
    clone_path = tmp_path / "second-clone"
    reproduced.git("clone", "-q", str(reproduced.path), str(clone_path))
    clone = PipelineRepo(clone_path, reproduced.mirrors)
    assert clone.repro("-f") == ALL_STAGES
    # Every output, DVCLive's curves included, is declared in dvc.yaml, and each has the same
    # bytes in both clones.
    assert lock_md5s(clone) == lock_md5s(reproduced)
    assert clone.git("status", "--porcelain").stdout == ""  # dvc.lock and metrics unchanged


def test_a_branch_compares_with_diff_and_going_back_comes_from_the_run_cache(experimented_repo,
                                                                            tmp_path):
    """An experiment made a branch and checked out: `dvc metrics/params/plots diff` against
    main, the pull request's summary, and back to main's params from the run-cache."""
    repo = experimented_repo
    base = json.loads((repo.path / "metrics/test.json").read_text())
    model_md5 = lock_md5s(repo)["model/model.keras"]
    repo.dvc("exp", "branch", "fewer-epochs", "fewer-epochs")
    repo.git("checkout", "-q", "fewer-epochs")
    repo.dvc("checkout")
    new = json.loads((repo.path / "metrics/test.json").read_text())

    metrics = json.loads(repo.dvc("metrics", "diff", "main", "--json").stdout)
    assert set(metrics) == {"metrics/test.json"}, "the export's parity did not move: no row"
    loss = metrics["metrics/test.json"]["test_loss"]
    assert (loss["old"], loss["new"]) == (base["test_loss"], new["test_loss"])
    params = json.loads(repo.dvc("params", "diff", "main", "--json").stdout)
    assert params == {"params.yaml": {"train.mlp.epochs": {"old": 5, "new": 3, "diff": -2}}}

    # What the workflow puts in a pull request's job summary: both diffs, and each chart of
    # `dvc plots diff` as a PNG, drawn without a browser.
    summary = tmp_path / "summary"
    repo.python(str(REPO / ".github/pr_summary.py"), "main", str(summary),
                "--image-url", "https://example.invalid/run-1")
    text = (summary / "summary.md").read_text()
    assert re.search(r"\| metrics/test.json +\| test_loss +\|", text), text
    assert re.search(r"\| params.yaml +\| train.mlp.epochs +\| 5 +\| 3 ", text), text
    images = re.findall(r"!\[(.+?)\]\(https://example.invalid/run-1/(.+?\.png)\)", text)
    assert [plot_id for plot_id, _ in images] == list(json.loads(
        repo.dvc("plots", "show", "--json").stdout)["data"])[:5], "every chart but errors.png"
    for _, name in images:
        with Image.open(summary / name) as png:
            assert png.format == "PNG" and png.width >= 600, name

    # Back to main's 5 epochs: DVC restores main's outputs from its run-cache, without training.
    timing = repo.path / "metrics/timing.json"
    last_training = timing.stat().st_mtime_ns
    repo.set_param("train.mlp.epochs", 5)
    out = repo.dvc("repro").stdout
    assert "Running stage" not in out
    assert "Stage 'train' is cached - skipping run, checking out outputs" in out
    assert timing.stat().st_mtime_ns == last_training, "train.py ran: timing.json was rewritten"
    assert lock_md5s(repo)["model/model.keras"] == model_md5
    assert repo.dvc("metrics", "diff", "main", "--json").stdout.strip() == "{}"


def test_push_then_fresh_clone_pulls_everything_and_the_model_is_an_artifact(reproduced_repo,
                                                                             tmp_path):
    repo = reproduced_repo
    storage = tmp_path / "mnist-dvc-storage"  # the default remote: ../../ from .dvc/, beside
    assert "url = ../../mnist-dvc-storage" in (repo.path / ".dvc/config").read_text()
    repo.dvc("push")
    assert storage.is_dir() and any(storage.rglob("*"))

    clone = PipelineRepo(tmp_path / "fresh-clone", {"MNIST_MIRROR": "http://127.0.0.1:9/x/"})
    repo.git("clone", "-q", str(repo.path), str(clone.path))
    clone.dvc("pull")
    assert (clone.path / "model/model.keras").is_file()
    assert "up to date" in clone.dvc("status").stdout
    assert clone.repro() == []

    # The model as an artifact. Before any version tag, `dvc artifacts get` fails with a
    # message about Studio: what it means is "tag a version first".
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    untagged = repo.dvc("artifacts", "get", str(repo.path), "classifier", "-o",
                        str(fetched / "model.onnx"), check=False)
    assert untagged.returncode != 0 and "Studio" in untagged.stderr
    # A version is a git tag (GTO's name@version form); anyone can then fetch it by name from
    # the repository and its remote, outside any clone.
    repo.git("tag", "-a", "classifier@v1.0.0", "-m", "first version")
    repo.dvc("artifacts", "get", str(repo.path), "classifier", "-o", str(fetched / "model.onnx"))
    assert (fetched / "model.onnx").read_bytes() == (repo.path / "model/model.onnx").read_bytes()


def test_plots_draw_in_a_clone_where_make_never_ran(reproduced_repo, tmp_path):
    """No page of our own (no npm, no `make`): DVC's own, which loads Vega from its CDN."""
    repo = reproduced_repo
    (repo.path / ".dvc/config.local").unlink()
    (repo.path / ".dvc/plots/offline.html").unlink()
    repo.dvc("plots", "show", "-o", str(tmp_path / "plots"))
    page = (tmp_path / "plots/index.html").read_text()
    assert page.count("vegaEmbed(") == 5 and "cdn.jsdelivr.net/npm/vega@" in page


def test_the_per_class_plots_stay_readable_with_50_classes(reproduced_repo):
    """A row per class at 16 px, however many classes there are, in the bars and the matrix."""
    repo = reproduced_repo
    rows = ["class,name,errors,error_rate,precision,recall"] + [
        f"{c},class {c},1,2.0,0.9,0.9" for c in range(50)]
    (repo.path / "metrics/per_class.csv").write_text("\n".join(rows) + "\n")
    (repo.path / "metrics/confusion.csv").write_text("actual,predicted\n" + "".join(
        f"class {c},class {(c + 1) % 50}\n" for c in range(50)))
    shown = json.loads(repo.dvc("plots", "show", "--json").stdout)["data"]
    bars = shown["metrics/per_class.csv"][0]["content"]
    assert bars["height"] == {"step": 16, "for": "position"} and len(bars["data"]["values"]) == 50
    matrix = shown["metrics/confusion.csv"][0]["content"]
    assert {"width": {"step": 16}, "height": {"step": 16}}.items() <= matrix["spec"]["layer"][
        0].items()
