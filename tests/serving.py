"""The API served for real: app/server/main.py on 127.0.0.1 on a free port, in a thread of the test
process (ServedApp) or as `mnist-serve` runs, a process with its workers (served_process);
standard-library HTTP helpers that return 4xx/5xx answers instead of raising, and raw
sockets that watch when the server closes; and headless Chromium under Selenium, which can reach
no other host and counts the requests its pages make, with a pen to draw on the page's pad.

Used by tests/app/, docs/screenshot_page.py and bench/.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest
import uvicorn
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from app.server.api import create_app
from app.server.main import server_config
from app.server.settings import Limits, Settings

START_TIMEOUT_S = 60  # generous: training experiments may share this machine's two cores
REQUEST_TIMEOUT_S = 60
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's packages
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    # Nothing but the page's own requests: no updates, sync, metrics or field trials.
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--no-default-browser-check", "--disable-domain-reliability",
    "--metrics-recording-only",
    # No host but this one resolves: a page that asked another host for anything would get
    # nothing, and the request would still be counted (requests_elsewhere).
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
BROWSER_WAIT_S = 60  # generous: Chromium and a training run may share two cores
PAD_SIDE = 280  # the page's pad in CSS pixels; strokes are in those units, (0, 0) top left


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until_closed(sock, drip=None, limit_s=15, every_s=0.2):
    """(seconds until the server closed the connection, or None if it was still open after
    `limit_s`; all it sent). With `drip`, those bytes are sent every `every_s` until the
    server stops taking them."""
    started, received = time.monotonic(), b""
    sock.settimeout(every_s)
    while time.monotonic() - started < limit_s:
        try:
            if drip:
                sock.sendall(drip)
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset, or refused to take more
            break
        if not data:
            break
        received += data
    else:
        return None, received
    return time.monotonic() - started, received


def process_tree(pid):
    """`pid` and all its descendants alive now (Linux: /proc's children lists)."""
    found, todo = [], [int(pid)]
    while todo:
        pid = todo.pop()
        found.append(pid)
        try:
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo += map(int, (task / "children").read_text().split())
        except OSError:  # ended meanwhile
            pass
    return found


def cpu_seconds(pids):
    """User + system CPU time spent so far by the processes `pids` that are alive, and by
    their children that have ended and been waited for."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(map(int, fields[11:15])) / os.sysconf("SC_CLK_TCK")
    return total


def memory_mb(pid, field="VmRSS"):
    """A process's memory in MB, 0 if it has ended: VmRSS (now), VmHWM (its peak so far), or
    Pss (now, the pages it shares with others divided among them: what it adds to a tree)."""
    try:
        text = Path(f"/proc/{pid}/{'smaps_rollup' if field == 'Pss' else 'status'}").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in text.splitlines()
                 if line.startswith(field + ":")), 0.0)


class PeakMemory:
    """The most the processes of a tree held at once while in the `with`, sampled every 10 ms:
    `pss`, the sum of their proportional set sizes (what they add to the machine: a decode
    process shares most of its pages with its fork server), and `rss`, the sum of their RSS
    (shared pages counted in each); then `top`, the peak RSS (VmHWM) of the tree's root."""

    def __init__(self, pid):
        self.pid, self.pss, self.rss, self.done = pid, 0.0, 0.0, threading.Event()
        self.thread = threading.Thread(target=self.watch)

    def watch(self):
        while not self.done.wait(0.01):
            tree = process_tree(self.pid)
            self.pss = max(self.pss, sum(memory_mb(pid, "Pss") for pid in tree))
            self.rss = max(self.rss, sum(memory_mb(pid) for pid in tree))

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()
        self.top = memory_mb(self.pid, "VmHWM")


class Response:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)

    @property
    def text(self):
        return self.body.decode("utf-8")


def request(url, data=None, headers=None, method=None):
    """One HTTP request; an error status is an answer to look at, not an exception."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as answer:
            return Response(answer.status, answer.headers, answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, error.headers, error.read())


def multipart(fields):
    """(body, content type) of a multipart/form-data form: fields maps a name to
    (filename, content type, bytes)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, (filename, content_type, data) in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                     f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'.encode()
                     + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def post_file(base_url, data, filename="digit.png", content_type="image/png", field="file"):
    """POST /predict with `data` uploaded as the multipart field `field`."""
    body, form_type = multipart({field: (filename, content_type, data)})
    return request(f"{base_url}/predict", body, {"Content-Type": form_type}, "POST")


def wait_until_answering(base_url, workers=1, timeout_s=START_TIMEOUT_S):
    """Until each of the server's `workers` has loaded its model (each takes connections once
    it starts, and loads its model then): for one, until it says it is ready; for several,
    until the metrics, which add up every worker's, count as many models served."""
    deadline = time.monotonic() + timeout_s
    while not (answers(f"{base_url}/v2/health/ready") if workers == 1 else re.search(
            rf'^mnist_model_loads_total{{outcome="served"}} {workers}\.0$',
            text_of(f"{base_url}/metrics"), re.M)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base_url} was not ready within {timeout_s} s")
        time.sleep(0.05)


def text_of(url):
    try:
        return request(url).text
    except OSError:
        return ""


class ServedApp:
    """The app as `mnist-serve` serves it (app/server/main.py: uvicorn, h11 and the connection
    limits), on 127.0.0.1, on a port the OS picks, in a thread of the test process; `settings`
    are those of Settings (app/server/settings.py) to change."""

    def __init__(self, model_file, limits=None, **settings):
        settings = Settings(model=model_file, host="127.0.0.1", port=0, **settings)
        limits = limits or Limits()
        config = server_config(create_app(settings, limits), settings, limits, log_level="warning")
        self.server = uvicorn.Server(config)
        # Not the main thread, so uvicorn leaves the test process's signal handlers alone.
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.server.should_exit = True
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]  # port=0: the OS chose it
        self.url = f"http://127.0.0.1:{port}"
        wait_until_answering(self.url)
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=START_TIMEOUT_S)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@contextmanager
def served_process(model, log, workers=1, args=(), **environ):
    """`python -m app.server.main` (mnist-serve) with MODEL=`model` and `args` on a free port of
    127.0.0.1, its output in the file `log`, once it answers /v2/health/live (its model may be
    still loading): yields (the process, its URL). Stopped with SIGTERM after, or killed."""
    port = free_port()
    env = {**os.environ, "MODEL": str(model), "PORT": str(port), "WORKERS": str(workers),
           **environ}
    with open(log, "wb") as output:
        server = subprocess.Popen([sys.executable, "-m", "app.server.main", *args],
                                  cwd=Path(__file__).parent.parent, env=env, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + START_TIMEOUT_S
    try:
        while not answers(f"{url}/v2/health/live"):
            assert server.poll() is None, Path(log).read_text()
            assert time.monotonic() < deadline, f"not live within {START_TIMEOUT_S} s"
            time.sleep(0.05)
        yield server, url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def answers(url):
    """Whether `url` answers 200."""
    try:
        return request(url).status == 200
    except OSError:
        return False


def wait_for(condition, what, timeout_s=START_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(scope="module", name="base_url")
def base_url_fixture(model_dir):
    """`base_url`: the URL (no trailing slash) of the API serving the fixture model. Import
    base_url_fixture into a test module to use it."""
    with ServedApp(model_dir / "model.onnx") as url:
        yield url


@pytest.fixture(scope="session", name="browser")
def browser_fixture():
    """`browser`: a headless Chromium (chromium() below), skipped where it is not installed,
    except under .ci/run. One per pytest worker, for every test that asks for it (tests/
    conftest.py registers it): each test loads its own page, and one that reads the network
    log reads what came before it first."""
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        why = f"needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install chromium chromium-driver"
        if os.environ.get("REQUIRE_BROWSER"):  # .ci/run: a skipped browser test is a failure
            pytest.fail(why)
        pytest.skip(why)
    with chromium(timeout_s=BROWSER_WAIT_S) as driver:
        yield driver


@contextmanager
def chromium(window=(1000, 800), timeout_s=START_TIMEOUT_S):
    """A headless Chromium driven by Selenium, with a fresh profile that is deleted after."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        options = webdriver.ChromeOptions()
        # Both paths given, so Selenium Manager has nothing to look up or download.
        options.binary_location = CHROMIUM
        for flag in (*CHROMIUM_FLAGS, f"--window-size={window[0]},{window[1]}",
                     f"--user-data-dir={profile}"):
            options.add_argument(flag)
        # The DevTools network events, for requests_elsewhere; the console, for what it says.
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            driver.set_page_load_timeout(timeout_s)
            driver.set_script_timeout(timeout_s)
            yield driver
        finally:
            driver.quit()


def requests_elsewhere(driver, base_url):
    """Every request over the network the browser has begun, since this was last asked, to
    anywhere but `base_url` (data:, blob: and the browser's own chrome: pages are none)."""
    urls = []
    for entry in driver.get_log("performance"):
        event = json.loads(entry["message"])["message"]
        if event["method"] == "Network.requestWillBeSent":
            urls.append(event["params"]["request"]["url"])
    return [url for url in urls if url.startswith(("http:", "https:", "ws:", "wss:"))
            and not url.startswith(base_url + "/")]


def draw(driver, strokes):
    """Draw on the pad ([data-testid=pad]) with the mouse. Each stroke, a list of (x, y): press
    at its first point, move through the rest with the button down, release."""
    pad = driver.find_element(By.CSS_SELECTOR, "[data-testid=pad]")
    for stroke in strokes:
        # Offsets are from the pad's centre; each move takes 10 ms rather than 250.
        actions = ActionChains(driver, duration=10)
        for i, (x, y) in enumerate(stroke):
            actions.move_to_element_with_offset(pad, round(x - PAD_SIDE / 2),
                                                round(y - PAD_SIDE / 2))
            if i == 0:
                actions.click_and_hold()
        actions.release().perform()
