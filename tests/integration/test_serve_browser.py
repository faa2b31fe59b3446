"""``anomaly-ov serve`` in a real browser: Debian's chromium, driven by Selenium through chromium-driver.

The server is the command itself (``python -m anomaly_ov.cli serve``, a free port on 127.0.0.1), on a tiny
model folder. The browser opens the page, uploads a held-out defect image, waits for the overlay and the
answer, asks a follow-up question and reads the reply, uploads a file that is not an image and reads the
error, then a valid image works again. Screenshots are saved under ``outputs/browser/`` (their paths are
printed). Set-up: ``apt-get install -y chromium chromium-driver`` when either is missing (as root; never a
browser download).
"""

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from serve_app import held_out_defect_image, saved_tiny_model, serve_overrides  # same folder

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "outputs" / "browser"
START_S = 240  # the server's start (imports, model) on a busy 2-core machine
WAIT_S = 90  # every wait for the page


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    """(browser, driver) paths of Debian's chromium and chromium-driver, installed when missing."""
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        if os.geteuid() != 0:
            pytest.fail(
                "chromium / chromedriver missing: run `sudo apt-get install -y chromium chromium-driver`"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update"], check=True, timeout=900, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "chromium", "chromium-driver"], check=True, timeout=1800, env=env
        )
    return shutil.which("chromium"), shutil.which("chromedriver")


def _lines(stream, sink: queue.Queue) -> None:
    for line in stream:
        sink.put(line)


@pytest.fixture(scope="module")
def served(tiny_zoo, synthetic_data, tmp_path_factory):
    """The command ``anomaly-ov serve --model <tiny folder> --port 0``, stopped with Ctrl+C at the end."""
    model = saved_tiny_model(tiny_zoo.root, tmp_path_factory.mktemp("browser") / "model")
    command = [
        sys.executable,
        "-m",
        "anomaly_ov.cli",
        "serve",
        "--model",
        str(model),
        "--port",
        "0",
        "--config-overrides",
        *serve_overrides(tiny_zoo.root, synthetic_data.root),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(process.stdout, lines), daemon=True).start()
    url, work_dir, seen, deadline = None, None, [], time.monotonic() + START_S
    while url is None and time.monotonic() < deadline and process.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        seen.append(line)
        if line.startswith("serve: open "):
            url = line.split()[2]
            work_dir = Path(line.split("uploads in ")[1].rstrip(")\n"))
    if url is None:
        process.kill()
        pytest.fail(f"serve did not start within {START_S} s:\n{''.join(seen)}")
    try:
        yield {"url": url, "work_dir": work_dir, "model": model, "output": seen}
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
    assert not work_dir.exists(), f"{work_dir} left behind"


@pytest.fixture(scope="module")
def browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1500"):
        options.add_argument(argument)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager never downloads a driver or a browser
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def _wait(driver, condition, what):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        driver, WAIT_S, poll_frequency=0.05, ignored_exceptions=(StaleElementReferenceException,)
    )
    return wait.until(condition, message=f"waiting for {what}")


# The page re-renders as results arrive: every read is one script, so no element reference goes stale.
def _text(driver, selector):
    return driver.execute_script("return document.querySelector(arguments[0])?.innerText ?? '';", selector)


def _value(driver, selector):
    return driver.execute_script("return document.querySelector(arguments[0])?.value ?? '';", selector)


def _texts(driver, selector):
    script = "return Array.from(document.querySelectorAll(arguments[0]), e => e.innerText);"
    return driver.execute_script(script, selector)


def _overlay_src(driver):
    script = "return document.querySelector('#overlay img')?.getAttribute('src') ?? null;"
    return driver.execute_script(script)


def _answer(driver):
    return _value(driver, "#answer textarea") or _value(driver, "#answer input")


def _upload(driver, *paths):
    from selenium.webdriver.common.by import By

    clear = driver.find_elements(By.CSS_SELECTOR, "#upload button[aria-label='Clear']")
    if clear:
        clear[0].click()
        _wait(
            driver,
            lambda d: not d.find_elements(By.CSS_SELECTOR, "#upload button[aria-label='Clear']"),
            "the upload to be cleared",
        )
    field = _wait(
        driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), "the upload"
    )
    field[0].send_keys("\n".join(str(p) for p in paths))


def _status(driver):
    return _text(driver, "#status")


def test_the_page_in_a_real_browser(served, browser, synthetic_data, tmp_path):
    from selenium.webdriver.common.by import By

    SHOTS.mkdir(parents=True, exist_ok=True)
    driver = browser
    driver.get(served["url"])
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#upload input[type=file]"), "the page")
    assert str(Path(served["model"]).resolve()) in _text(driver, "#model-name")

    # 1. a held-out defect image: the overlay, the score and the answer
    image = held_out_defect_image(synthetic_data)
    start = time.perf_counter()
    _upload(driver, image)
    _wait(driver, lambda d: _overlay_src(d), "the overlay")
    to_overlay = time.perf_counter() - start
    _wait(driver, _answer, "the answer")
    to_answer = time.perf_counter() - start
    answer = _answer(driver)
    _wait(driver, lambda d: _status(d).startswith("Done"), "the status")
    summary = _text(driver, "#summary")
    assert "anomaly score" in summary and "suspicious" in summary
    assert _texts(driver, "#chat [data-testid='bot']") == [answer]
    print(
        f"\nbrowser: {image.name}: overlay after {to_overlay:.2f} s, answer after {to_answer:.2f} s "
        f"(from the upload); {summary!r}; answer {answer!r}"
    )

    # 2. a follow-up question: the reply joins the conversation
    box = driver.find_element(By.CSS_SELECTOR, "#question textarea")
    box.send_keys("Where is the anomaly located?")
    driver.find_element(By.CSS_SELECTOR, "#send").click()
    _wait(driver, lambda d: len(_texts(d, "#chat [data-testid='bot']")) == 2, "the reply")
    _wait(driver, lambda d: _status(d) == "Answered.", "the status")
    users = _texts(driver, "#chat [data-testid='user']")
    reply = _texts(driver, "#chat [data-testid='bot']")[1]
    assert users[1] == "Where is the anomaly located?"
    print(f"browser: follow-up reply {reply!r}")
    answered = SHOTS / "serve_answered.png"
    driver.save_screenshot(str(answered))

    # 3. a file that is not an image: an error in the page, the overlay gone
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image\n")
    _upload(driver, fake)
    _wait(driver, lambda d: "Error" in _status(d), "the error")
    assert "notes.png: not a readable image" in _status(driver)
    _wait(driver, lambda d: _overlay_src(d) is None, "the overlay to be cleared")
    error_shot = SHOTS / "serve_error.png"
    driver.save_screenshot(str(error_shot))

    # 4. a valid image works again
    _upload(driver, image)
    _wait(driver, lambda d: _status(d).startswith("Done"), "the second inspection")
    assert _overlay_src(driver) and _answer(driver) == answer

    # 5. an example of the gallery (a held-out class) runs on a click; clearing the upload clears the results
    driver.find_element(By.CSS_SELECTOR, "#upload button[aria-label='Clear']").click()
    _wait(driver, lambda d: _overlay_src(d) is None and not _status(d), "the results to be cleared")
    example = driver.find_elements(By.XPATH, "//button[contains(., '(held out)')]")[-1]
    caption = example.text
    example.click()
    _wait(driver, lambda d: _overlay_src(d) and _status(d).startswith("Done"), f"the example {caption}")
    assert "anomaly score" in _text(driver, "#summary")
    final = SHOTS / "serve_page.png"
    driver.save_screenshot(str(final))
    for shot in (answered, error_shot, final):
        assert shot.stat().st_size > 0
        print(f"browser: screenshot {shot}")
