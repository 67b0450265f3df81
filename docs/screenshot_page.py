"""Draw a 4 on the draw-a-digit page in headless Chromium and save a screenshot of it.

    .venv/bin/python docs/screenshot_page.py OUT.png    # after `make repro`; docs/page.png is
                                                        # the README's picture

Serves the repository's model (model/model.onnx) on 127.0.0.1 for the occasion. Needs Debian's
chromium and chromium-driver.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOUR = [[(170, 40), (60, 170), (215, 170)], [(170, 40), (170, 245)]]  # two strokes


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: docs/screenshot_page.py OUT.png")
    target = Path(sys.argv[1])
    sys.path.insert(0, str(REPO))  # run as a script, Python sees docs/ only, not app/ and tests/
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.serving import ServedApp, chromium, draw

    with ServedApp(REPO / "model" / "model.onnx") as url, chromium(window=(800, 720)) as driver:
        driver.get(url + "/")
        draw(driver, FOUR)
        # Every stroke asks /predict: wait for the last answer, then for the page to show it.
        WebDriverWait(driver, 60).until(lambda d: d.execute_script(
            "return performance.getEntriesByType('resource')"
            ".filter(e => e.name.endsWith('/predict')).length") >= len(FOUR))
        driver.execute_async_script("setTimeout(arguments[0], 300)")
        digit = driver.find_element("css selector", "[data-testid=digit]").text
        driver.save_screenshot(str(target))
    print(f"wrote {target} (the page reads {digit})")


if __name__ == "__main__":
    main()
