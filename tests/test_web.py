"""The web page, driven in headless Chromium (Debian's chromium + chromedriver) against a real server."""
from __future__ import annotations

import base64
import json
import re
import shlex
import shutil

import httpx
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


@pytest.fixture(scope="module")
def srv(tiny_models, start_server):
    """One real server with both tiny models (unconditional tiny-dc first, the default) for this module's tests."""
    return start_server({"GAN_MODELS": f"{tiny_models['dc']},{tiny_models['cdc']}"})


def _wait(browser):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(browser, 60)


def _loaded(img_id: str, old_src: str | None = None):
    """Until the image shows a (new) picture."""
    return lambda d: d.execute_script("const i = document.getElementById(arguments[0]);"
                                      "return !i.hidden && i.complete && i.naturalWidth > 0 && i.src !== arguments[1];",
                                      img_id, old_src)


def _open_page(browser, srv) -> None:
    browser.get(srv.url + "/ui")
    _wait(browser).until(_loaded("result"))        # the page generates once on load


def _click_and_wait(browser, button: str, img_id: str) -> None:
    old_src = browser.find_element("id", img_id).get_attribute("src")
    browser.find_element("id", button).click()
    _wait(browser).until(_loaded(img_id, old_src))


def _type(browser, box_id: str, text: str) -> None:
    box = browser.find_element("id", box_id)
    box.clear()
    box.send_keys(text)


def _page_bytes(browser, img_id: str) -> bytes:
    """The bytes the page is showing in an image (its blob: URL, read back inside the page)."""
    b64 = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch(document.getElementById(arguments[0]).src).then((r) => r.arrayBuffer()).then((buf) => {
          let s = ''; for (const b of new Uint8Array(buf)) s += String.fromCharCode(b); done(btoa(s)); });""", img_id)
    return base64.b64decode(b64)


def _run_curl(browser) -> tuple[str, str, str]:
    """The curl command the page shows, split as a shell would: (url, JSON body text, -o file)."""
    args = shlex.split(browser.find_element("id", "curl").get_attribute("textContent"))
    assert args[:3] == ["curl", "-X", "POST"] and args[4:6] == ["-H", "Content-Type: application/json"], args
    assert args[6] == "-d" and args[8] == "-o" and len(args) == 10, args
    return args[3], args[7], args[9]


def _reproduce(url: str, body: str) -> bytes:
    r = httpx.post(url, content=body.encode(), headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def test_page_builds_no_html_from_strings():
    from pathlib import Path

    import gan_service
    page = (Path(gan_service.__file__).parent / "serving" / "web" / "index.html").read_text()
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page and "outerHTML" not in page


def test_page_generate_see_image_change_class(srv, browser, tmp_path):
    from selenium.webdriver.support.ui import Select, WebDriverWait

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


BIG_SEED = "2134697516108528254"        # above 2**53: Number() would make it 2134697516108528000, another image


def test_page_seeds_stay_exact_above_2_53(srv, browser):
    from gan_service.serving.latents import MAX_SEED

    _open_page(browser, srv)
    # The seed the server picked on load (almost always above 2**53): the curl command carries its exact digits,
    # and running it gives the very image shown; the download is named after the same seed.
    for typed in (None, BIG_SEED, str(MAX_SEED), "0"):
        if typed is not None:
            _type(browser, "seed", typed)
            _click_and_wait(browser, "generate", "result")
        seed = browser.find_element("id", "seed-used").text
        assert seed.isdigit() and (typed is None or seed == typed), (typed, seed)
        url, body, file = _run_curl(browser)
        assert url == srv.url + "/generate"
        assert re.search(r'"seed":(\d+)[,}]', body).group(1) == seed, body      # a bare integer, every digit
        assert json.loads(body)["seed"] == int(seed)
        assert _reproduce(url, body) == _page_bytes(browser, "result"), typed
        link = browser.find_element("id", "download")
        assert link.get_attribute("download") == file == f"tiny-dc-{seed}.png"
    # Everything the page fetched came from this server (or its own blob: URLs).
    fetched = browser.execute_script("return performance.getEntriesByType('resource').map((e) => e.name);")
    assert fetched and all(u.startswith((srv.url + "/", "blob:")) for u in fetched), fetched
    # Interpolation between big seeds: the same, the GIF byte for byte.
    _type(browser, "seed-a", BIG_SEED)
    _type(browser, "seed-b", str(MAX_SEED))
    _click_and_wait(browser, "interpolate", "interp")
    url, body, file = _run_curl(browser)
    assert url == srv.url + "/interpolate" and f'"seeds":[{BIG_SEED},{MAX_SEED}]' in body, body
    assert json.loads(body)["seeds"] == [int(BIG_SEED), MAX_SEED] and file == f"tiny-dc-{BIG_SEED}-{MAX_SEED}.gif"
    assert _reproduce(url, body) == _page_bytes(browser, "interp")
    # Seeds outside 0..2**63-1, or not a plain number, are refused in the page, naming the field; nothing is sent.
    for box, button, img, bad in (("seed", "generate", "result", str(MAX_SEED + 1)), ("seed", "generate", "result", "12a"),
                                  ("seed", "generate", "result", "-1"), ("seed-a", "interpolate", "interp", "1e3"),
                                  ("seed-b", "interpolate", "interp", "99999999999999999999")):
        _type(browser, box, bad)
        old = browser.find_element("id", img).get_attribute("src")
        browser.find_element("id", button).click()
        _wait(browser).until(lambda d: d.find_element("id", "status").text)
        status = browser.find_element("id", "status").text
        assert status.startswith(f"{box}: ") and str(MAX_SEED) in status, (bad, status)
        assert browser.find_element("id", img).get_attribute("src") == old
        _type(browser, box, "5")
        _click_and_wait(browser, button, img)
        assert browser.find_element("id", "status").text == ""


def _fits(browser, img_id: str) -> dict:
    return browser.execute_script("""
        const i = document.getElementById(arguments[0]), box = i.parentElement, cs = getComputedStyle(box);
        const r = i.getBoundingClientRect(), b = box.getBoundingClientRect();
        return {right: r.right, width: r.width, natural: i.naturalWidth, client: i.clientWidth,
                boxRight: b.right - parseFloat(cs.borderRightWidth) - parseFloat(cs.paddingRight),
                viewport: document.documentElement.clientWidth, scroll: document.documentElement.scrollWidth,
                rendering: getComputedStyle(i).imageRendering};""", img_id)


def _fit_problems(browser) -> list:
    """What is wrong with how the two images are drawn: [] when each is pixelated, a whole multiple of its size,
    inside its box and the window, and the page does not scroll sideways."""
    problems = []
    for img in ("interp", "result"):
        f = _fits(browser, img)
        if not (f["rendering"] == "pixelated" and f["right"] <= f["boxRight"] + 0.5 and f["width"] <= f["viewport"]
                and f["client"] >= f["natural"] and f["client"] % f["natural"] == 0 and f["scroll"] <= f["viewport"]):
            problems.append((img, f))
    return problems


def test_page_images_fit_the_window_and_stay_sharp(srv, browser):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        # Opened at a normal and at a narrow size; then the same page resized after the images were drawn.
        for width, reload in ((1200, True), (380, True), (1200, False), (380, False), (700, False)):
            browser.set_window_size(width, 900)
            if reload:
                _open_page(browser, srv)
                _click_and_wait(browser, "interpolate", "interp")
            try:   # a resize is handled on the page's next frame: give it a moment
                WebDriverWait(browser, 5).until(lambda d: not _fit_problems(d))
            except TimeoutException:
                pass
            assert _fit_problems(browser) == [], (width, reload)
    finally:
        browser.set_window_size(1200, 1000)


def test_page_class_control_only_for_conditional_models(srv, browser):
    from selenium.webdriver.support.ui import Select

    _open_page(browser, srv)
    model = Select(browser.find_element("id", "model"))
    assert model.first_selected_option.text == "tiny-dc"
    for name in ("tiny-dc", "tiny-cdc", "tiny-dc"):
        model.select_by_visible_text(name)
        conditional = name == "tiny-cdc"
        assert browser.find_element("id", "class-wrap").is_displayed() == conditional, name   # really shown/hidden
        assert browser.find_element("id", "label").is_displayed() == conditional, name
        if conditional:
            Select(browser.find_element("id", "label")).select_by_visible_text("Bag")
        for button, img, field in (("generate", "result", "labels"), ("interpolate", "interp", "label")):
            _click_and_wait(browser, button, img)
            assert browser.find_element("id", "status").text == ""
            body = json.loads(_run_curl(browser)[1])
            assert body["model"] == name and body.get(field) == (8 if conditional else None), (name, body)
        assert browser.find_element("id", "labels-used").text.startswith("classes: ") == conditional
