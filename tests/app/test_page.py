"""The draw-a-digit page in a real headless Chromium (Selenium, Debian's chromium and
chromedriver), against the API under uvicorn with the fixture model: strokes drawn with the
mouse are read as the digit drawn, the bars show every class, Clear starts over, and the page
asks nothing of any host but the app."""

import math

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.serving import (  # noqa: F401
    BROWSER_WAIT_S,
    base_url_fixture,
    draw,
)

pytestmark = pytest.mark.browser


def ellipse(cx, cy, rx, ry, points=36):
    return [(cx + rx * math.sin(2 * math.pi * i / points),
             cy - ry * math.cos(2 * math.pi * i / points)) for i in range(points + 1)]


# Digits as a hand draws them on the 280x280 pad, stroke by stroke, in shapes a model trained
# on printed digits reads (the fixture model gives each over 95 %).
DRAWINGS = {
    "1": [[(140, 40), (140, 240)]],
    "7": [[(70, 50), (210, 50)], [(210, 50), (120, 240)]],
    "0": [ellipse(140, 140, 60, 95)],
    "4": [[(170, 40), (60, 170), (215, 170)], [(170, 40), (170, 245)]],
}


@pytest.fixture
def page(browser, base_url):
    browser.get(base_url + "/")
    return browser


def find(driver, testid):
    return driver.find_element(By.CSS_SELECTOR, f"[data-testid={testid}]")


def predict_requests(driver):
    return driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => new URL(e.name).pathname === '/predict').length")


def settled(driver, requests):
    """What the page shows once its `requests`-th /predict answer is in (every stroke asks,
    and an earlier stroke's answer must not pass for the drawing's): (digit, bars), bars as
    {class: (probability, marked best?)}."""
    WebDriverWait(driver, BROWSER_WAIT_S).until(lambda d: predict_requests(d) >= requests)
    # The timing entry is in when the answer's last byte is; the page shows it a moment later.
    driver.execute_async_script("setTimeout(arguments[0], 200)")
    bars = {li.get_attribute("data-testid").removeprefix("bar-"):
            (float(li.get_attribute("data-probability")), "best" in li.get_attribute("class"))
            for li in driver.find_elements(By.CSS_SELECTOR, "li[data-testid^=bar-]")}
    return find(driver, "digit").text, bars


def assert_reads(driver, digit, requests):
    shown, bars = settled(driver, requests)
    status = find(driver, "status")
    assert "error" not in status.get_attribute("class"), status.text
    assert shown == digit, f"drew {digit}, the page reads {shown}: {bars}"
    assert sorted(bars) == [str(d) for d in range(10)]
    assert sum(p for p, _ in bars.values()) == pytest.approx(1, abs=1e-3)
    assert max(bars, key=lambda name: bars[name][0]) == shown
    assert [name for name, (_, best) in bars.items() if best] == [shown]


@pytest.mark.parametrize("digit", DRAWINGS)
def test_drawn_digit_is_read(page, digit):
    assert find(page, "digit").text == "?"

    draw(page, DRAWINGS[digit])

    assert_reads(page, digit, requests=len(DRAWINGS[digit]))


def test_bars_are_drawn_to_scale(page):
    """Each bar's coloured part is as long, in its track, as its class is probable."""
    draw(page, DRAWINGS["1"])
    assert_reads(page, "1", requests=1)

    shown = page.execute_script(
        "return [...document.querySelectorAll('li[data-testid^=bar-]')].map(li => ["
        "  li.dataset.testid, +li.dataset.probability,"
        "  li.querySelector('.fill').getBoundingClientRect().width"
        "    / li.querySelector('.track').getBoundingClientRect().width])")

    assert len(shown) == 10
    for name, probability, fraction in shown:
        assert fraction == pytest.approx(probability, abs=0.02), name


def test_clear_starts_over(page):
    draw(page, DRAWINGS["7"])
    assert_reads(page, "7", requests=2)

    find(page, "clear").click()

    assert find(page, "digit").text == "?"
    assert page.find_elements(By.CSS_SELECTOR, "li[data-testid^=bar-]") == []
    white = page.execute_script(
        "const pad = arguments[0];"
        "const px = pad.getContext('2d').getImageData(0, 0, pad.width, pad.height).data;"
        "return px.every(v => v === 255);", find(page, "pad"))
    assert white, "the pad still has ink on it"
    # On the cleared pad a 1 reads as a 1: nothing of the 7 is left in the picture sent.
    draw(page, DRAWINGS["1"])
    assert_reads(page, "1", requests=3)


def test_page_asks_only_the_app_and_keeps_to_its_security_policy(page, base_url):
    """Its Content-Security-Policy allows its own files only: the page breaks none of it."""
    draw(page, DRAWINGS["0"])
    assert_reads(page, "0", requests=1)

    names = page.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")

    assert any(name.endswith("/static/app.js") for name in names)
    assert [name for name in names if not name.startswith(base_url + "/")] == []
    messages = [entry["message"] for entry in page.get_log("browser")]
    assert [m for m in messages if "Content Security Policy" in m] == []


def test_a_dash_is_not_a_digit_and_shows_no_bars(page):
    """A stroke lying flat is refused on its shape, whatever the model guesses: the status line
    says so, and no bar suggests a class."""
    draw(page, [[(50, 150), (230, 140)]])
    WebDriverWait(page, BROWSER_WAIT_S).until(
        lambda d: find(d, "status").text.startswith("not a digit"))
    assert find(page, "status").text == "not a digit: a dash"
    assert find(page, "digit").text == "–"
    assert page.find_elements(By.CSS_SELECTOR, "li[data-testid^=bar-]") == []
    # A digit drawn after it is read again as a digit.
    find(page, "clear").click()
    draw(page, DRAWINGS["1"])
    assert_reads(page, "1", requests=2)


@pytest.fixture(scope="module")
def shapes_url(picture_model_dir):
    from tests.serving import ServedApp

    with ServedApp(picture_model_dir / "model.onnx") as url:
        yield url


def test_a_model_of_pictures_is_asked_with_a_chosen_picture_not_a_drawing(browser, shapes_url,
                                                                         tmp_path):
    """A model of your own pictures: the page says what it tells apart, hides the drawing pad
    (its pictures were no drawings), and reads a picture chosen from disk, with a bar for each
    of its classes."""
    import numpy as np

    from tests.folders import SHAPES, shape_picture

    browser.get(shapes_url + "/")
    WebDriverWait(browser, BROWSER_WAIT_S).until(lambda d: "Which is it" in d.title)
    assert browser.title == "Which is it: circle, square, triangle?"
    assert not find(browser, "pad").is_displayed()
    picture = tmp_path / "a square.png"
    shape_picture("square", np.random.default_rng(11), (120, 90)).save(picture)
    find(browser, "choose").send_keys(str(picture))
    shown, bars = settled(browser, 1)
    assert sorted(bars) == sorted(SHAPES) and shown in SHAPES
    assert find(browser, "chosen").is_displayed()
