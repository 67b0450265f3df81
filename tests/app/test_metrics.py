"""What an operator sees, on `mnist-serve` as it runs (two workers, 127.0.0.1): /metrics in
Prometheus' format, valid for Prometheus' own `promtool check metrics` and scraped by a real
Prometheus server (Debian's package), counting every worker's requests; the request's ID kept
or made, and returned; the opt-in JSON log line, without the client's address unless asked.
Prometheus and promtool are skipped where missing (apt-get install prometheus), except with
REQUIRE_PROMETHEUS=1.
"""

import json
import os
import shutil
import subprocess
import urllib.parse

import pytest

from tests.app.test_api import digit_image
from tests.app.test_inference import MODEL, post_tensor
from tests.drawings import canvas_png
from tests.hostile_pictures import encoded, png
from tests.serving import (
    ServedApp,
    answers,
    free_port,
    post_file,
    request,
    served_process,
    wait_for,
    wait_until_answering,
)


def needs(program):
    """The path of Debian's `program`, else a skip (a failure with REQUIRE_PROMETHEUS)."""
    path = shutil.which(program)
    if not path:
        why = f"needs {program}: apt-get install prometheus"
        if os.environ.get("REQUIRE_PROMETHEUS"):
            pytest.fail(why)
        pytest.skip(why)
    return path


@pytest.fixture(scope="module")
def served(model_dir, tmp_path_factory):
    """(URL, the server's log, its metrics folder): two workers, requests logged."""
    folder = tmp_path_factory.mktemp("served")
    counts = folder / "metrics"
    counts.mkdir()
    (counts / "counter_1.db").write_bytes(b"left by an earlier run")  # emptied at start
    with served_process(model_dir / "model.onnx", folder / "log", workers=2, LOG_REQUESTS="1",
                        PROMETHEUS_MULTIPROC_DIR=str(counts)) as (_, url):
        wait_until_answering(url, workers=2)
        yield url, folder / "log", counts


def test_the_metrics_pass_promtool_and_count_what_was_answered(served):
    url, _, _ = served
    seven, dash = encoded(digit_image(7), "PNG"), canvas_png([[(50, 150), (230, 140)]])
    answers = [post_file(url, picture).json() for picture in (seven, seven, dash)]
    assert post_file(url, png(7000, 7000, 0, 8)).status == 413  # over the pixels allowed

    metrics = request(f"{url}/metrics")

    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    checked = subprocess.run([needs("promtool"), "check", "metrics"], input=metrics.body,
                             capture_output=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    text = metrics.text
    assert 'mnist_answers_total{label="7"} 2.0' in text, text
    assert answers[2]["refusal"] == "not a digit: a dash"
    assert 'mnist_refusals_total{reason="not a digit: a dash"} 1.0' in text
    assert 'mnist_pictures_refused_total{limit="pixels"} 1.0' in text
    assert 'mnist_requests_total{route="/predict",status="413"} 1.0' in text
    assert 'mnist_request_duration_seconds_bucket{le="+Inf",route="/predict"}' in text
    assert 'mnist_model_info{dataset="mnist",family="mlp",name="model"' in text


def query(prometheus, expression):
    answer = request(f"{prometheus}/api/v1/query?"
                     + urllib.parse.urlencode({"query": expression})).json()
    return answer["data"]["result"]


def test_a_real_prometheus_scrapes_every_workers_counts(served, tmp_path):
    """Prometheus scraping every 0.5 s: the requests it counts for /v2/models/{name}/infer are
    those sent, whichever worker took them (each counts in a file of its own, added up at
    each scrape)."""
    url, _, counts = served
    for _ in range(20):
        assert post_tensor(url, {"inputs": []}).status == 422
    port = free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 500ms}\nscrape_configs:\n  - job_name: mnist\n"
        f"    static_configs: [{{targets: ['{url.removeprefix('http://')}']}}]\n")
    prometheus = subprocess.Popen(
        [needs("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        served_counts = ('sum(mnist_requests_total{job="mnist",route="/v2/models/{name}/infer",'
                         'status="422"})')
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/-/ready") and query(
            f"http://127.0.0.1:{port}", served_counts), "Prometheus scraped nothing")
        [sample] = query(f"http://127.0.0.1:{port}", served_counts)
        [up] = query(f"http://127.0.0.1:{port}", 'up{job="mnist"}')
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)

    assert float(sample["value"][1]) == 20 and up["value"][1] == "1"
    assert len(list(counts.glob("counter_*.db"))) == 2, "two workers counted, nothing stale"


def test_a_request_keeps_its_id_and_is_logged_in_one_json_line(served):
    url, log, _ = served
    given = request(f"{url}/v2/models/{MODEL}", headers={"X-Request-ID": "from-the-client-1"})
    made = post_file(url, encoded(digit_image(3), "PNG"))
    refused = request(f"{url}/nowhere", headers={"X-Request-ID": "a space"})

    assert given.headers["x-request-id"] == "from-the-client-1"
    made_id, refused_id = made.headers["x-request-id"], refused.headers["x-request-id"]
    assert len(made_id) == 32 and refused_id != "a space"
    wait_for(lambda: refused_id in log.read_text(), "no line logged")
    lines = {line["id"]: line for line in (json.loads(text) for text in
                                           log.read_text().splitlines() if text[:1] == "{")}
    assert lines["from-the-client-1"].keys() == {"id", "method", "route", "status", "seconds"}
    assert {k: v for k, v in lines[made_id].items() if k != "seconds"} == {
        "id": made_id, "method": "POST", "route": "/predict", "status": 200, "classes": ["3"]}
    assert (lines[refused_id]["route"], lines[refused_id]["status"]) == ("unmatched", 404)
    assert not any("client" in line for line in lines.values())


def test_the_client_address_is_logged_only_when_asked_for(model_dir, tmp_path):
    with served_process(model_dir / "model.onnx", tmp_path / "log", LOG_REQUESTS="1",
                        LOG_CLIENT_ADDRESS="1") as (_, url):
        request(f"{url}/v2/health/live")
        wait_for(lambda: '"client"' in (tmp_path / "log").read_text(), "no address logged")

    assert '"client": "127.0.0.1"' in (tmp_path / "log").read_text()


def test_metrics_can_be_turned_off(model_dir):
    with ServedApp(model_dir / "model.onnx", metrics=False) as url:
        answer = request(f"{url}/metrics")

    assert (answer.status, answer.json()) == (404, {"detail": "Not Found"})


def test_a_counts_file_a_worker_is_still_making_does_not_fail_the_scrape(served):
    """prometheus-client makes a worker's file empty, then sizes it: a scrape in between (or
    after that worker died there) still answers with every other worker's counts, where
    MultiProcessCollector alone answers 500 (prometheus/client_python#1199)."""
    url, _, counts = served
    request(f"{url}/health")
    empty = counts / "counter_999999.db"
    empty.touch()
    try:
        for _ in range(4):  # whichever worker answers
            answer = request(f"{url}/metrics")
            assert answer.status == 200 and 'mnist_requests_total{route="/health"' in answer.text
    finally:
        empty.unlink()
