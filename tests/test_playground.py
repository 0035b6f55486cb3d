"""The playground (`GET /`), driven in real headless Chromium (Debian's chromium +
chromium-driver, through Selenium): pick a pipeline, type, submit, see the rendered result —
score bars, entity spans, the QA answer highlighted, the similarity table, streamed
generation — and search Hub models by task and language; chat mode (a conversation streamed
from /v1/chat/completions, stopped, cleared), generation parameters sent only when set,
language fields for mBART-50, the truncation toggle, the loading indicators, and the request
copied as curl and Python, run as they are. Screenshots land in the test's tmp dir."""

import ast
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pytest

from lightpipe import pipeline
from lightpipe.server import create_app, start_in_thread
from test_server import BIO, LONG, MINILM, SST2, decoder_checkpoint, labels
from tiny import causal_lm_checkpoint, encoder_checkpoint, llama3_tokenizer, mbart50_checkpoint

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
        "mt": mbart50_checkpoint(mk("mt")),
    }
    chat = mk("chat")  # Llama 3's tokenizer conventions and chat template
    folders["chat"] = causal_lm_checkpoint(chat, "llama", llama3_tokenizer(chat))
    # served under their names (cls, ner, ...); the folders are for the reference pipelines
    app = create_app([MINILM, f"cls=text-classification={folders['cls']}", f"ner=ner={folders['ner']}",
                      f"qa=question-answering={folders['qa']}", f"gpt=text-generation={folders['gpt']}",
                      f"mt=translation={folders['mt']}", f"chat=text-generation={folders['chat']}"])
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
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pipeline option")) == 7)

    # text-classification: one score bar per label, best first
    choose(browser, "cls")
    text = "I've been waiting for a HuggingFace course my whole life."
    type_into(browser, "text", text)
    rows = run(browser, shots, "classification", lambda d: d.find_elements(By.CSS_SELECTOR, "#result .bar-row"))
    expected = pipeline("text-classification", model=folders["cls"])(text, top_k=None)
    assert [r.find_element(By.CLASS_NAME, "label").text for r in rows] == [e["label"] for e in expected]
    assert rows[0].find_element(By.CLASS_NAME, "score").text == f"{expected[0]['score']:.3f}"

    # token-classification: entity spans highlighted in the text
    choose(browser, "ner")
    sentence = "My name is Sylvain and I work at Hugging Face in Brooklyn."
    type_into(browser, "text", sentence)
    run(browser, shots, "ner", lambda d: d.find_elements(By.CSS_SELECTOR, "#result .text-box"))
    entities = pipeline("ner", model=folders["ner"])(sentence, aggregation_strategy="simple")
    marks = browser.find_elements(By.CSS_SELECTOR, "#result mark.ent")
    assert [m.get_attribute("data-label") for m in marks] == [e["entity_group"] for e in entities]
    assert browser.find_element(By.CSS_SELECTOR, "#result .text-box").text.replace("\n", "").count("Brooklyn") == 1

    # question-answering: the answer highlighted in its context
    choose(browser, "qa")
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

    # text generation: tokens stream into the page (the model has a chat template: plain text is the second mode)
    choose(browser, "gpt")
    assert browser.find_element(By.ID, "mode-chat").is_selected()
    browser.find_element(By.ID, "mode-text").click()
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


# -- chat mode, parameters, languages, truncation, loading, copy as curl / Python ----------------

# records what the page sends (fetch is the page's only way out), leaving the requests as they are
FETCH_SPY = """
window.sent = [];
window.signals = [];
const realFetch = window.fetch;
window.fetch = (url, options = {}) => {
  window.sent.push({url: String(url), body: options.body ? JSON.parse(options.body) : null});
  window.signals.push(options.signal);
  return realFetch(url, options);
};
"""

# the chat stream delivered one server-sent event every `delay` ms, whatever the network bunched
# together: time to see each piece arrive, and to press stop
SLOW_CHAT_STREAM = """
const delay = arguments[0];
const fastFetch = window.fetch;
window.fetch = async (url, options = {}) => {
  const response = await fastFetch(url, options);
  if (!String(url).endsWith("/v1/chat/completions")) return response;
  const decoder = new TextDecoder(), encoder = new TextEncoder();
  const slow = new TransformStream({
    async transform(chunk, controller) {
      for (const event of decoder.decode(chunk, {stream: true}).split(/(?<=\\n\\n)/)) {
        await new Promise((resolve) => setTimeout(resolve, delay));
        controller.enqueue(encoder.encode(event));
      }
    },
  });
  return new Response(response.body.pipeThrough(slow), {status: response.status, headers: response.headers});
};
"""

# every text the assistant's last bubble showed, in order
WATCH_REPLY = """
window.shown = [];
new MutationObserver(() => {
  const bubbles = document.querySelectorAll("#messages .msg.assistant .content");
  const text = bubbles.length ? bubbles[bubbles.length - 1].textContent : "";
  if (text && text !== window.shown[window.shown.length - 1]) window.shown.push(text);
}).observe(document.getElementById("messages"), {subtree: true, childList: true, characterData: true});
"""


def open_page(driver, server, models=7):
    driver.get(server.url + "/")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pipeline option")) == models)
    driver.execute_script(FETCH_SPY)


def sent(driver) -> list[dict]:
    return driver.execute_script("return window.sent")


def last_body(driver, path: str) -> dict:
    bodies = [s["body"] for s in sent(driver) if s["url"].endswith(path)]
    assert bodies, sent(driver)
    return bodies[-1]


def text_of(element) -> str:
    return element.get_attribute("textContent")


def idle(driver) -> bool:
    return not driver.find_element(By.ID, "busy").is_displayed() and driver.find_element(By.ID, "run").is_enabled()


def replies(driver) -> list[str]:
    return [text_of(e) for e in driver.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant .content")]


def send_message(driver, text: str, turns: int) -> str:
    """Type `text`, send it, wait for the assistant's `turns`-th reply to finish streaming."""
    type_into(driver, "chat-input", text)
    driver.find_element(By.ID, "run").click()
    wait(driver, lambda d: idle(d) and len(replies(d)) == turns)
    errors = driver.find_elements(By.CSS_SELECTOR, "#result .error")
    assert not errors, errors[0].text
    return replies(driver)[-1]


def chat_completion(server, body: dict) -> str:
    """The reply /v1/chat/completions gives the same request without streaming."""
    r = httpx.post(server.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def copied(driver, kind: str) -> str:
    driver.find_element(By.ID, f"copy-{kind}").click()
    box = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, f"#snippet[data-kind={kind}]"))
    status = wait(driver, lambda d: d.find_element(By.ID, "copy-status").text)
    assert box.is_displayed() and ("copied" in status or "copy it" in status), status
    return text_of(box)


def run_curl(command: str) -> str:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, check=True).stdout


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout


def chat_stream_text(output: str) -> str:
    """The assistant's text in /v1/chat/completions' server-sent events."""
    text = ""
    for line in output.split("\n"):
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            for choice in json.loads(line[5:])["choices"]:
                text += choice["delta"].get("content") or ""
    return text


def png_pixels(path: Path) -> tuple[int, int, set]:
    """A PNG's width, height and distinct colours, decoded here with zlib (8-bit RGB or RGBA, not
    interlaced: what Chromium writes); a broken file fails an assertion."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, header, compressed = 8, None, b""
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind, chunk = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert zlib.crc32(kind + chunk) == int.from_bytes(data[pos + 8 + length:pos + 12 + length], "big"), kind
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            compressed += chunk
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(compressed)
    assert len(raw) == height * (stride + 1)
    previous, colours = bytearray(stride), set()
    for y in range(height):
        kind, row = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        unfilter(kind, row, previous, bpp)
        colours.update(bytes(row[x:x + bpp]) for x in range(0, stride, bpp * 7))  # every 7th pixel is plenty
        previous = row
    return width, height, colours


def unfilter(kind: int, row: bytearray, previous: bytearray, bpp: int) -> None:
    """PNG's five row filters, undone in place (the PNG specification, section 9)."""
    if kind == 1:
        for i in range(bpp, len(row)):
            row[i] = (row[i] + row[i - bpp]) & 0xFF
    elif kind == 2:
        for i in range(len(row)):
            row[i] = (row[i] + previous[i]) & 0xFF
    elif kind == 3:
        for i in range(len(row)):
            left = row[i - bpp] if i >= bpp else 0
            row[i] = (row[i] + (left + previous[i]) // 2) & 0xFF
    elif kind == 4:
        for i in range(len(row)):
            a, b = (row[i - bpp], previous[i - bpp]) if i >= bpp else (0, 0)
            c_up = previous[i]
            p = a + c_up - b
            pa, pb, pc = abs(p - a), abs(p - c_up), abs(p - b)
            row[i] = (row[i] + (a if pa <= pb and pa <= pc else c_up if pb <= pc else b)) & 0xFF
    else:
        assert kind == 0, f"unknown PNG filter {kind}"


def test_chat_mode_streams_a_conversation(browser, served, tmp_path):
    server, folders = served
    models = {m["id"]: m for m in httpx.get(server.url + "/info").json()["models"]}
    assert models["chat"]["chat"] is True and models["mt"]["chat"] is False
    open_page(browser, server)
    choose(browser, "chat")
    assert browser.find_element(By.ID, "mode-chat").is_selected()
    assert browser.find_element(By.ID, "run").text == "Send"
    assert not browser.find_elements(By.ID, "text")  # no plain text box in chat mode
    browser.execute_script(WATCH_REPLY)
    browser.execute_script(SLOW_CHAT_STREAM, 50)

    # first turn: a system prompt, a seed, temperature left empty (not sent: OpenAI's default applies)
    type_into(browser, "system", "Answer in one word.")
    type_into(browser, "max_new_tokens", "12")
    type_into(browser, "seed", "3")
    first = send_message(browser, "What does the assert statement do?", turns=1)
    body = last_body(browser, "/v1/chat/completions")
    assert body == {"model": "chat", "stream": True, "max_tokens": 12, "seed": 3,
                    "messages": [{"role": "system", "content": "Answer in one word."},
                                 {"role": "user", "content": "What does the assert statement do?"}]}
    assert first and first == chat_completion(server, body)
    shown = browser.execute_script("return window.shown")
    assert len(shown) >= 3 and shown[-1] == first  # streamed: the bubble grew piece by piece
    assert all(first.startswith(s) for s in shown)
    assert [text_of(e) for e in browser.find_elements(By.CSS_SELECTOR, "#messages .msg.user .content")] == [
        "What does the assert statement do?"]

    # second turn: the first reply goes back as the assistant's turn; temperature 0 is sent (greedy)
    type_into(browser, "temperature", "0")
    second = send_message(browser, "And the raise statement?", turns=2)
    body = last_body(browser, "/v1/chat/completions")
    assert body["temperature"] == 0 and body["seed"] == 3
    assert body["messages"] == [{"role": "system", "content": "Answer in one word."},
                                {"role": "user", "content": "What does the assert statement do?"},
                                {"role": "assistant", "content": first},
                                {"role": "user", "content": "And the raise statement?"}]
    assert second == chat_completion(server, body)

    # the request shown, as curl and as Python (the openai client), run as they are: the same reply
    curl = copied(browser, "curl")
    assert curl.startswith(f"curl -sS -N -X POST '{server.url}/v1/chat/completions'")
    assert chat_stream_text(run_curl(curl)) == second
    python = copied(browser, "python")
    assert "from openai import OpenAI" in python
    assert run_python(python) == second + "\n"

    # a screenshot of chat mode: a real PNG of the window's size, not blank
    shot = tmp_path / "chat.png"
    assert browser.save_screenshot(str(shot))
    width, height, colours = png_pixels(shot)
    assert (width, height) == tuple(browser.execute_script("return [window.innerWidth, window.innerHeight]"))
    assert width >= 800 and height >= 600 and len(colours) > 20, (width, height, len(colours))

    # clear: the next request starts a new conversation
    browser.find_element(By.ID, "clear-chat").click()
    assert not browser.find_elements(By.CSS_SELECTOR, "#messages .msg")
    send_message(browser, "Hello", turns=1)
    assert last_body(browser, "/v1/chat/completions")["messages"] == [
        {"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Hello"}]


def test_stop_aborts_a_streamed_reply(browser, served):
    server, folders = served
    open_page(browser, server)
    browser.execute_script(SLOW_CHAT_STREAM, 250)
    choose(browser, "chat")
    type_into(browser, "max_new_tokens", "40")
    type_into(browser, "temperature", "0")
    type_into(browser, "chat-input", "Tell me about the for statement.")
    browser.find_element(By.ID, "run").click()
    wait(browser, lambda d: replies(d) and replies(d)[-1])  # the first piece is in
    assert browser.find_element(By.ID, "busy").is_displayed()  # the loading indicator runs meanwhile
    browser.find_element(By.ID, "stop").click()
    wait(browser, idle)
    assert browser.execute_script("return window.signals[window.signals.length - 1].aborted")
    partial = replies(browser)[-1]
    full = chat_completion(server, last_body(browser, "/v1/chat/completions"))
    assert full.startswith(partial) and len(partial) < len(full)
    assert browser.find_elements(By.CSS_SELECTOR, "#messages .msg.assistant.stopped")
    assert browser.find_element(By.ID, "timing").text == "stopped"
    assert not browser.find_element(By.ID, "stop").is_displayed()
    time.sleep(1)  # nothing more arrives after the stop
    assert replies(browser)[-1] == partial


def test_generation_parameters_are_sent_only_when_set(browser, served):
    server, folders = served
    open_page(browser, server)
    choose(browser, "chat")
    browser.find_element(By.ID, "mode-text").click()
    type_into(browser, "text", "The assert statement")
    for name in ("temperature", "top_p", "top_k", "repetition_penalty", "seed"):
        assert browser.find_element(By.ID, name).get_attribute("value") == ""
    type_into(browser, "max_new_tokens", "8")
    browser.find_element(By.ID, "stream").click()  # not streamed: the whole answer at once

    def generate() -> tuple[dict, str]:
        browser.find_element(By.ID, "run").click()
        wait(browser, lambda d: idle(d) and d.find_elements(By.CSS_SELECTOR, "#generated, #result .error"))
        errors = browser.find_elements(By.CSS_SELECTOR, "#result .error")
        assert not errors, errors[0].text
        body = last_body(browser, "/models/chat")
        prompt = text_of(browser.find_element(By.CSS_SELECTOR, "#generated .prompt"))
        return body, text_of(browser.find_element(By.ID, "generated"))[len(prompt):]

    body, text = generate()  # nothing set but the length: TGI's greedy default
    assert body == {"inputs": "The assert statement", "parameters": {"max_new_tokens": 8}}
    generator = pipeline("text-generation", model=folders["chat"])
    greedy = generator("The assert statement", do_sample=False, max_new_tokens=8,
                       return_full_text=False)[0]["generated_text"]
    assert text == greedy

    type_into(browser, "temperature", "0.7")
    type_into(browser, "top_k", "20")
    type_into(browser, "seed", "5")
    body, text = generate()  # a temperature above 0 samples
    assert body["parameters"] == {"max_new_tokens": 8, "temperature": 0.7, "do_sample": True, "top_k": 20, "seed": 5}
    r = httpx.post(server.url + "/models/chat", json=body, timeout=60)
    assert text == r.json()[0]["generated_text"]

    type_into(browser, "temperature", "0")
    browser.find_element(By.ID, "top_k").clear()
    browser.find_element(By.ID, "seed").clear()
    body, text = generate()  # 0 is greedy
    assert body["parameters"] == {"max_new_tokens": 8, "do_sample": False}
    assert text == greedy


def test_language_fields_for_a_multilingual_translation_model(browser, served, tmp_path):
    from transformers import AutoTokenizer

    server, folders = served
    open_page(browser, server)
    choose(browser, "cls")
    assert not browser.find_elements(By.ID, "src_lang")  # only where the model needs them
    choose(browser, "mt")
    codes = list(AutoTokenizer.from_pretrained(folders["mt"]).lang_code_to_id)  # mBART-50's 52 codes
    for name, default in (("src_lang", "en_XX"), ("tgt_lang", "fr_XX")):  # the pair the tokenizer was saved with
        select = Select(browser.find_element(By.ID, name))
        assert [o.get_attribute("value") for o in select.options] == codes
        assert select.first_selected_option.get_attribute("value") == default
    Select(browser.find_element(By.ID, "tgt_lang")).select_by_value("de_DE")
    text = "This course is produced by Hugging Face."
    type_into(browser, "text", text)
    type_into(browser, "max_new_tokens", "10")
    box = run(browser, tmp_path, "translation", lambda d: d.find_element(By.CSS_SELECTOR, "#result #generated"))
    body = last_body(browser, "/models/mt")
    assert body["parameters"] == {"src_lang": "en_XX", "tgt_lang": "de_DE",
                                  "generate_parameters": {"max_new_tokens": 10, "num_beams": 1}}
    expected = pipeline("translation", model=folders["mt"])(text, src_lang="en_XX", tgt_lang="de_DE", max_new_tokens=10,
                                                            num_beams=1)
    assert text_of(box) == expected[0]["translation_text"]

    # the same request as curl and as Python (requests): the same answer
    assert json.loads(run_curl(copied(browser, "curl"))) == expected
    python = copied(browser, "python")
    assert "import requests" in python
    assert ast.literal_eval(run_python(python)) == expected


def test_truncation_toggle(browser, served):
    server, folders = served
    open_page(browser, server)
    choose(browser, "cls")
    type_into(browser, "text", LONG)
    browser.find_element(By.ID, "run").click()  # off: a too-long input is refused, as the API does
    error = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#result .error"))
    assert "truncation" in error.text and "422" in error.text
    assert "truncation" not in last_body(browser, "/models/cls").get("parameters", {})
    browser.find_element(By.ID, "truncation").click()
    browser.find_element(By.ID, "run").click()
    rows = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#result .bar-row"))
    assert last_body(browser, "/models/cls")["parameters"] == {"truncation": True}
    expected = pipeline("text-classification", model=folders["cls"])(LONG, truncation=True, top_k=None)
    assert [r.find_element(By.CLASS_NAME, "score").text for r in rows] == [f"{e['score']:.3f}" for e in expected]

    # the embedding routes read TEI's name for it
    choose(browser, MINILM)
    browser.find_element(By.ID, "truncation").click()
    browser.find_element(By.ID, "run").click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#result table.sim"))
    assert last_body(browser, "/models/" + MINILM)["parameters"] == {"truncate": True}
    choose(browser, "qa")  # question answering splits long contexts itself: no toggle
    assert not browser.find_elements(By.ID, "truncation")


def test_loading_indicator_while_a_model_loads(browser, hub_server, tmp_path):
    folder = encoder_checkpoint(tmp_path / "cls", "bert", "sequence-classification", **SST2)
    hub_server.add("org/tiny-sentiment", folder)
    app = create_app([], allow_load=True)
    with start_in_thread(app) as server:
        browser.get(server.url + "/")
        wait(browser, lambda d: d.find_element(By.ID, "load-box").is_displayed())
        assert not browser.find_element(By.ID, "load-busy").is_displayed()
        type_into(browser, "load-id", "org/tiny-sentiment")
        browser.find_element(By.ID, "load-btn").click()
        assert browser.find_element(By.ID, "load-busy").is_displayed()  # until the model is in
        wait(browser, lambda d: "is ready" in d.find_element(By.ID, "load-status").text, 120)
        assert not browser.find_element(By.ID, "load-busy").is_displayed()
        assert "org/tiny-sentiment" in browser.find_element(By.ID, "task-title").text


def test_no_chat_mode_without_a_chat_template(browser, tmp_path):
    folder = tmp_path / "plain"
    causal_lm_checkpoint(folder, "llama", llama3_tokenizer(folder, chat_template=None))
    with start_in_thread(create_app([f"text-generation={folder}"])) as server:
        deadline = time.monotonic() + 60
        while httpx.get(server.url + "/health").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (entry,) = httpx.get(server.url + "/info").json()["models"]
        assert entry["chat"] is False and entry["streaming"] is True
        open_page(browser, server, models=1)
        choose(browser, "plain")  # a folder is served under its own name
        assert browser.find_elements(By.ID, "text") and browser.find_elements(By.ID, "temperature")
        assert not browser.find_elements(By.ID, "mode-chat") and not browser.find_elements(By.ID, "messages")
        assert browser.find_element(By.ID, "run").text == "Run"
