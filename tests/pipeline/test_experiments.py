"""The daily DVC loop as a user meets it, with the real dvc CLI on the tiny datasets: experiments
run and queued, `dvc exp show` read at 120 columns with the README's own command, what trained
being what DVC shows, going back to the committed results, and the plots page drawn offline in
Chromium.
"""

import json
import os
import re
import shlex
import time

import pytest

from tests import dvc_cli
from tests.conftest import REPO, run
from tests.pipeline.conftest import EXPERIMENTS, FASHION, epochs_trained, shown_experiments
from tests.serving import requests_elsewhere

pytestmark = pytest.mark.slow


def readme_command(starts_with):
    """The one command the README gives that starts with `starts_with`, as a list of words."""
    lines = [line.split("  #")[0].strip() for line in (REPO / "README.md").read_text().splitlines()
             if line.startswith(starts_with)]
    assert len(lines) == 1, f"the README should give one `{starts_with}` command: {lines}"
    return shlex.split(lines[0])


def dotted(params, key):
    for part in key.split("."):
        params = params[part]
    return params


def test_each_experiment_shows_the_params_it_trained_with_and_its_test_metrics(experimented_repo):
    shown = shown_experiments(experimented_repo)
    assert set(EXPERIMENTS) <= set(shown)
    for name, params in EXPERIMENTS.items():
        for key, value in params.items():
            assert dotted(shown[name]["params"], key) == value, (name, key)
        assert 0 <= shown[name]["test"]["test_accuracy"] <= 1
    baseline = json.loads((experimented_repo.path / "metrics/test.json").read_text())
    assert all(shown[name]["test"] != baseline for name in EXPERIMENTS), "each its own metrics"


def test_the_readmes_exp_show_is_readable_in_120_columns(experimented_repo):
    """The README's command, as printed in a 120-column terminal, for three experiments that
    each change one param the README names: every experiment with its name, its test accuracy
    and the value of the param it changed, and no cell cut to '…'. (The export's check, the
    same for every model, is no column.)"""
    experimented_repo.dvc("exp", "remove", "fashion")
    command = readme_command("dvc exp show")
    env = {**experimented_repo.env, "COLUMNS": "120"}
    table = run([dvc_cli.SCRIPT, *command[1:]], experimented_repo.path, env).stdout
    lines = table.splitlines()
    assert "…" not in table, table
    assert max(len(line) for line in lines) <= 120, table
    header = " ".join(line for line in lines[:4])
    assert "test_accuracy" in header, table
    shown = shown_experiments(experimented_repo)
    assert "onnx" not in table and "skipped" not in table, table
    for name, params in EXPERIMENTS.items():
        if name == "fashion":
            continue
        [row] = [line for line in lines if f"[{name}]" in line]
        cells = row.split()
        accuracy = shown[name]["test"]["test_accuracy"]  # shown to 5 significant digits
        assert f"{accuracy:.5g}" in cells, (name, table)
        for key, value in params.items():
            assert key in header or key.split(".")[-1] in header, (key, table)
            assert str(value) in cells, (name, value, table)


def test_metrics_show_fits_120_columns_and_says_what_each_number_is(reproduced_repo):
    table = run([dvc_cli.SCRIPT, "metrics", "show"], reproduced_repo.path,
                {**reproduced_repo.env, "COLUMNS": "120"}).stdout
    assert max(len(line) for line in table.splitlines()) <= 120, table
    header = table.splitlines()[0].split()
    assert {"test_accuracy", "test_loss", "onnx_mismatches", "skipped_files",
            "test_copies"} <= set(header), table
    assert "accuracy" not in header, "no number without the set it was measured on"


def test_what_trained_is_what_dvc_shows_and_going_back_is_clean(experimented_repo):
    """The Fashion-MNIST experiment, queued with an explicit -S: the epochs that trained are the
    ones params show; applied, the outputs are Fashion-MNIST's; then the README's way back
    leaves git clean and DVC silent."""
    repo = experimented_repo
    assert "trained 1 epochs" in repo.fashion_log
    shown = shown_experiments(repo)["fashion"]
    assert shown["params"]["train"]["mlp"]["epochs"] == 1
    repo.dvc("exp", "apply", "fashion")
    assert epochs_trained(repo) == 1, "one epoch trained, as `exp show` says"
    metadata = json.loads((repo.path / "model/metadata.json").read_text())
    assert metadata["dataset"] == "fashion-mnist" and metadata["class_names"] == FASHION
    assert "Ankle boot" in (repo.path / "metrics/per_class.csv").read_text()

    back = readme_command("git checkout --")
    assert back[-3:] == ["&&", "dvc", "checkout"], back
    repo.git(*back[1:-3])
    restored = repo.dvc("checkout")
    assert "WARNING" not in restored.stdout + restored.stderr, restored.stderr
    assert repo.git("status", "--porcelain").stdout == ""
    assert repo.dvc("status").stdout.strip().endswith("up to date.")
    assert json.loads((repo.path / "model/metadata.json").read_text())["dataset"] == "mnist"


def charts_drawn(driver, page, expected):
    """How many Vega charts `page` draws in headless Chromium with every request to another
    host blocked, waiting up to 30 s for `expected` of them (Vega draws each in its own time:
    on a busy machine the first can be there long before the last), and the requests over the
    network it tried (blocked ones included)."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": ["http://*", "https://*"]})
    requests_elsewhere(driver, "file://")  # the shared browser's earlier pages are not this one
    try:
        driver.get(page.as_uri())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            drawn = driver.execute_script(  # what Vega drew each chart on, canvas or svg
                "return document.querySelectorAll('.vega-embed .marks').length")
            if drawn >= expected and driver.execute_script(
                    "return document.readyState") == "complete":
                break
            time.sleep(0.2)
        return drawn, requests_elsewhere(driver, "file://")  # a file: page has no host
    finally:  # the browser is the next test's too, and it may load pages over http
        driver.execute_cdp_cmd("Network.setBlockedURLs", {"urls": []})


@pytest.mark.browser
def test_plots_draw_every_chart_offline_and_diff_overlays_experiments(experimented_repo, browser,
                                                                     tmp_path):
    repo = experimented_repo
    definitions = repo.dvc("plots", "show", "--json").stdout
    ids = list(json.loads(definitions)["data"])
    vega = [i for i in ids if not i.endswith(".png")]
    assert len(ids) == len(set(ids)) and len(vega) == 5, ids  # each curve drawn once

    repo.dvc("plots", "show", "-o", str(tmp_path / "show"))
    drawn, outside = charts_drawn(browser, tmp_path / "show/index.html", len(vega))
    assert drawn == len(vega) and outside == []

    repo.dvc("plots", "diff", "fewer-epochs", "fashion", "-o", str(tmp_path / "diff"))
    page = (tmp_path / "diff/index.html").read_text()
    assert "fewer-epochs" in page and "fashion" in page, "both experiments on each chart"
    drawn, outside = charts_drawn(browser, tmp_path / "diff/index.html", len(vega))
    assert drawn == len(vega) and outside == []
    assert not re.search(r"<script[^>]+src=", page), "no library fetched at view time"
    assert os.path.getsize(tmp_path / "diff/index.html") > 500_000, "the libraries are inside"
