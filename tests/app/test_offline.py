"""Nothing leaves the machine from a page the app serves: /, /docs and /redoc in a real headless
Chromium that can resolve no host but 127.0.0.1, each page drawn in full, and every request it
began counted. (ReDoc's own bundle draws Redocly's logo from their CDN; the app serves it with
that address pointed at its own icon.)"""

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.serving import (  # noqa: F401
    BROWSER_WAIT_S,
    base_url_fixture,
    requests_elsewhere,
)

pytestmark = pytest.mark.browser

# What shows each page is drawn in full, whatever it would fetch for it.
DRAWN = {
    "/": "[data-testid=pad]",
    "/docs": ".opblock-post",  # Swagger UI's POST /predict, drawn from openapi.json
    "/redoc": "img[alt='redocly logo']",  # the last thing ReDoc draws, in its sidebar
}


def loaded(driver, selector):
    """Whether `selector` is on the page and, if it is a picture, loaded."""
    found = driver.find_elements(By.CSS_SELECTOR, selector)
    return found and driver.execute_script(
        "return arguments[0].tagName !== 'IMG' || arguments[0].complete", found[0])


@pytest.mark.parametrize("path", DRAWN)
def test_a_page_asks_no_other_host_for_anything(browser, base_url, path):
    requests_elsewhere(browser, base_url)  # what earlier pages asked for is not this one's
    elsewhere = []

    def drawn_or_gone_elsewhere(driver):
        elsewhere.extend(requests_elsewhere(driver, base_url))
        return elsewhere or loaded(driver, DRAWN[path])

    browser.get(base_url + path)
    WebDriverWait(browser, BROWSER_WAIT_S).until(drawn_or_gone_elsewhere)

    assert elsewhere + requests_elsewhere(browser, base_url) == []
