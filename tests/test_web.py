"""The web page, driven in headless Chromium (Debian's chromium + chromedriver) against a real server."""
from __future__ import annotations

import shutil

import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="apt-get install chromium chromium-driver")


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # Headless, and no background connections: this machine has no network beyond loopback.
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1200,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_page_builds_no_html_from_strings():
    from pathlib import Path

    import gan_service
    page = (Path(gan_service.__file__).parent / "serving" / "web" / "index.html").read_text()
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "outerHTML" not in page


def test_page_generate_see_image_change_class(tiny_models, start_server, browser, tmp_path):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    srv = start_server({"GAN_MODELS": f"{tiny_models['dc']},{tiny_models['cdc']}"})
    wait = WebDriverWait(browser, 60)
    browser.get(srv.url + "/ui")
    # The page generates once on load: an image appears and the seed used is shown.
    wait.until(lambda d: d.execute_script("const i = document.getElementById('result');"
                                          "return i.complete && i.naturalWidth > 0;"))
    seed = browser.find_element("id", "seed-used").text
    assert seed.isdigit()
    assert browser.find_element("id", "class-wrap").get_attribute("hidden") is not None   # unconditional model

    # Switch to the conditional model, pick a class, fix the seed, generate again.
    Select(browser.find_element("id", "model")).select_by_visible_text("tiny-cdc")
    assert browser.find_element("id", "class-wrap").get_attribute("hidden") is None
    Select(browser.find_element("id", "label")).select_by_visible_text("Bag")
    seed_box = browser.find_element("id", "seed")
    seed_box.clear()
    seed_box.send_keys("1234")
    old_src = browser.find_element("id", "result").get_attribute("src")
    browser.find_element("id", "generate").click()
    wait.until(lambda d: d.find_element("id", "result").get_attribute("src") != old_src)
    assert browser.find_element("id", "seed-used").text == "1234"
    assert browser.find_element("id", "labels-used").text == "classes: " + ", ".join(["Bag"] * 16)   # names, not ids
    # Scaled up by a whole factor, a copyable curl command and a download link for the same request.
    natural, shown = browser.execute_script("const i = document.getElementById('result');"
                                            "return [i.naturalWidth, i.clientWidth];")
    assert shown >= 2 * natural and shown % natural == 0, (natural, shown)
    curl = browser.find_element("id", "curl").text
    assert curl.startswith("curl -X POST " + srv.url + "/generate") and '"seed":1234' in curl and '"labels":8' in curl
    link = browser.find_element("id", "download")
    assert link.get_attribute("href").startswith("blob:") and link.get_attribute("download") == "tiny-cdc-1234.png"
    assert browser.find_element("id", "interp").get_attribute("hidden") is not None        # no broken image yet

    # Interpolation view; a bad value shows the server's message naming the field.
    browser.find_element("id", "interpolate").click()
    wait.until(lambda d: d.execute_script("const i = document.getElementById('interp');"
                                          "return i.complete && i.naturalWidth > 0;"))
    browser.execute_script("document.getElementById('n').value = 999")
    browser.find_element("id", "generate").click()
    wait.until(lambda d: "n" in d.find_element("id", "status").text)
    status = browser.find_element("id", "status").text
    assert status.startswith("400: n: ") and "n: n:" not in status, status
    browser.save_screenshot(str(tmp_path / "page.png"))
