"""The playground (`GET /`), driven in real headless Chromium (Debian's chromium +
chromium-driver, through Selenium): pick a pipeline, type, submit, see the rendered result —
score bars, entity spans, the QA answer highlighted, the similarity table, streamed
generation — and search Hub models by task and language. Screenshots land in the test's
tmp dir."""

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from lightpipe import pipeline
from lightpipe.server import create_app, start_in_thread
from test_server import BIO, MINILM, SST2, decoder_checkpoint, labels
from tiny import encoder_checkpoint

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,900"]


def have_browser() -> bool:
    return Path(CHROMIUM).exists() and (Path(CHROMEDRIVER).exists() or shutil.which("chromedriver"))


# `make test` installs both; a missing browser is a set-up failure, never a silent skip
if not have_browser():
    raise RuntimeError(f"the playground test needs {CHROMIUM} and {CHROMEDRIVER}: apt-get install -y chromium chromium-driver")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver")),
                              options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    folders = {
        "cls": encoder_checkpoint(mk("cls"), "bert", "sequence-classification", **SST2),
        "ner": encoder_checkpoint(mk("ner"), "bert", "token-classification", lowercase=False, **labels(BIO)),
        "qa": encoder_checkpoint(mk("qa"), "bert", "question-answering"),
        "gpt": decoder_checkpoint(mk("gpt")),
    }
    app = create_app([MINILM, f"text-classification={folders['cls']}", f"ner={folders['ner']}",
                      f"question-answering={folders['qa']}", f"text-generation={folders['gpt']}"])
    with start_in_thread(app) as running:
        deadline = time.monotonic() + 60
        while httpx.get(running.url + "/health").status_code != 200:
            assert time.monotonic() < deadline, httpx.get(running.url + "/info").text
            time.sleep(0.05)
        yield running, {k: str(v) for k, v in folders.items()}


def choose(driver, model_id):
    Select(driver.find_element(By.ID, "pipeline")).select_by_value(model_id)
    wait(driver, lambda d: model_id in d.find_element(By.ID, "task-title").text)


def wait(driver, condition, seconds=30):
    return WebDriverWait(driver, seconds).until(condition)


def type_into(driver, element_id, text):
    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(text)


def run(driver, shots: Path, name: str, done):
    driver.find_element(By.ID, "run").click()
    result = wait(driver, done)
    driver.save_screenshot(str(shots / f"{name}.png"))
    errors = driver.find_elements(By.CSS_SELECTOR, "#result .error")
    assert not errors, errors[0].text
    return result


def test_playground_in_chromium(browser, served, tmp_path, hub_server):
    server, folders = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    browser.get(server.url + "/")
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pipeline option")) == 5)

    # text-classification: one score bar per label, best first
    choose(browser, folders["cls"])
    text = "I've been waiting for a HuggingFace course my whole life."
    type_into(browser, "text", text)
    rows = run(browser, shots, "classification", lambda d: d.find_elements(By.CSS_SELECTOR, "#result .bar-row"))
    expected = pipeline("text-classification", model=folders["cls"])(text, top_k=None)
    assert [r.find_element(By.CLASS_NAME, "label").text for r in rows] == [e["label"] for e in expected]
    assert rows[0].find_element(By.CLASS_NAME, "score").text == f"{expected[0]['score']:.3f}"

    # token-classification: entity spans highlighted in the text
    choose(browser, folders["ner"])
    sentence = "My name is Sylvain and I work at Hugging Face in Brooklyn."
    type_into(browser, "text", sentence)
    run(browser, shots, "ner", lambda d: d.find_elements(By.CSS_SELECTOR, "#result .text-box"))
    entities = pipeline("ner", model=folders["ner"])(sentence, aggregation_strategy="simple")
    marks = browser.find_elements(By.CSS_SELECTOR, "#result mark.ent")
    assert [m.get_attribute("data-label") for m in marks] == [e["entity_group"] for e in entities]
    assert browser.find_element(By.CSS_SELECTOR, "#result .text-box").text.replace("\n", "").count("Brooklyn") == 1

    # question-answering: the answer highlighted in its context
    choose(browser, folders["qa"])
    type_into(browser, "question", "Where do I work?")
    type_into(browser, "context", "My name is Sylvain and I work at Hugging Face in Brooklyn.")
    mark = run(browser, shots, "qa", lambda d: d.find_element(By.CSS_SELECTOR, "#result mark.answer"))
    answer = pipeline("question-answering", model=folders["qa"])(question="Where do I work?", context=sentence)
    assert mark.text == answer["answer"].strip()

    # sentence similarity: a table of scores against the source sentence
    choose(browser, MINILM)
    type_into(browser, "source", "I love learning.")
    type_into(browser, "sentences", "I like studying.\nThe stock market fell.")
    cells = run(browser, shots, "similarity", lambda d: d.find_elements(By.CSS_SELECTOR, "#result table.sim td.score-cell"))
    scores = pipeline("sentence-similarity", model=MINILM)({"source_sentence": "I love learning.",
                                                           "sentences": ["I like studying.", "The stock market fell."]})
    assert [c.text for c in cells] == [f"{s:.3f}" for s in scores]

    # text generation: tokens stream into the page
    choose(browser, folders["gpt"])
    type_into(browser, "text", "The assert statement")
    type_into(browser, "max_new_tokens", "8")
    assert browser.find_element(By.ID, "stream").is_selected()
    run(browser, shots, "generation", lambda d: d.find_elements(By.CSS_SELECTOR, "#generated-text:not(.cursor)"))
    expected = pipeline("text-generation", model=folders["gpt"])("The assert statement", do_sample=False, max_new_tokens=8,
                                                                  return_full_text=False)[0]["generated_text"]
    assert browser.find_element(By.ID, "generated-text").get_attribute("textContent") == expected

    # model search by task and language, through the server, against the fake Hub: the models
    # lightpipe loads first, the others greyed with the reason
    marian = json.dumps({"model_type": "marian", "architectures": ["MarianMTModel"]})
    weights = {"model.safetensors": b"\0" * 8}
    hub_server.add("org/en-fr", {"config.json": marian, **weights}, pipeline_tag="translation", tags=["fr"], downloads=50)
    hub_server.add("org/en-fr-big", {"config.json": marian, **weights}, pipeline_tag="translation", tags=["fr"], downloads=900)
    hub_server.add("org/en-fr-pickle", {"config.json": marian, "pytorch_model.bin": b"\0" * 8},
                   pipeline_tag="translation", tags=["fr"], downloads=3000)
    hub_server.add("org/en-de", {"config.json": marian, **weights}, pipeline_tag="translation", tags=["de"], downloads=5000)
    Select(browser.find_element(By.ID, "search-task")).select_by_value("translation")
    type_into(browser, "search-language", "fr")
    browser.find_element(By.ID, "search-btn").click()
    items = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#search-results li"))
    assert [i.find_element(By.CLASS_NAME, "model-id").text for i in items] == ["org/en-fr-big", "org/en-fr", "org/en-fr-pickle"]
    assert [i.get_attribute("class") for i in items] == ["", "", "unloadable"]
    assert float(items[2].value_of_css_property("opacity")) < 1 and float(items[0].value_of_css_property("opacity")) == 1
    assert items[2].find_element(By.CLASS_NAME, "reason").text.startswith("can't load: pickle weights only")
    browser.save_screenshot(str(shots / "search.png"))

    for name in ("classification", "ner", "qa", "similarity", "generation", "search"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
