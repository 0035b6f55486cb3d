"""The HTTP server, driven by the real clients (openai, huggingface_hub.InferenceClient) and
plain HTTP against uvicorn on 127.0.0.1: every route family, error statuses, limits, dynamic
batching under concurrency (results equal to the direct pipeline's), loading, model search."""

import base64
import json
import math
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch

from lightpipe import pipeline
from lightpipe.server import create_app, start_in_thread
from lightpipe.server import registry as registry_module
from tiny import bpe_tokenizer, encoder_checkpoint, labels, save_checkpoint, sentences
from tiny import chatml_gpt2_checkpoint as decoder_checkpoint

pytestmark = pytest.mark.server

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SST2 = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
BIO = ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"]
NLI = ["contradiction", "neutral", "entailment"]
TEXTS = sentences(24, start=60)
LONG = " ".join(sentences(30, start=10))  # far beyond the tiny models' 64 tokens


def seq2seq_checkpoint(folder, seed=0):
    """A tiny BART (byte-level BPE, RoBERTa-style specials) for summarization / translation."""
    import transformers

    tok = bpe_tokenizer(folder, "roberta")
    config = transformers.BartConfig(
        vocab_size=len(tok), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=48, decoder_ffn_dim=48, max_position_embeddings=64,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=tok.eos_token_id)
    torch.manual_seed(seed)
    return save_checkpoint(folder, transformers.BartForConditionalGeneration(config).eval(), tok)


def close(a, b, tol=1e-4):
    """Same structure and strings; floats within tol."""
    if isinstance(b, dict):
        return isinstance(a, dict) and set(a) == set(b) and all(close(a[k], b[k], tol) for k in b)
    if isinstance(b, (list, tuple)):
        return isinstance(a, (list, tuple)) and len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(b, float):
        return math.isclose(a, b, abs_tol=tol)
    return a == b


def as_dicts(elements):
    """huggingface_hub output dataclasses → plain dicts with only the fields the server sent."""
    if isinstance(elements, list):
        return [as_dicts(e) for e in elements]
    return {k: v for k, v in dict(elements).items() if v is not None}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    mk = tmp_path_factory.mktemp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "cls": encoder_checkpoint(mk("cls"), "bert", "sequence-classification", **SST2),
            "ner": encoder_checkpoint(mk("ner"), "bert", "token-classification", lowercase=False, **labels(BIO)),
            "qa": encoder_checkpoint(mk("qa"), "bert", "question-answering"),
            "mlm": encoder_checkpoint(mk("mlm"), "bert", "masked-lm"),
            "nli": encoder_checkpoint(mk("nli"), "bert", "sequence-classification", **labels(NLI)),
            "gpt": decoder_checkpoint(mk("gpt")),
            "sum": seq2seq_checkpoint(mk("sum"), seed=0),
            "mt": seq2seq_checkpoint(mk("mt"), seed=1),
        }


@pytest.fixture(scope="module")
def direct(folders):
    """The same pipelines, called directly: the reference for every served result."""
    return {
        "emb": pipeline("feature-extraction", model=MINILM),
        "cls": pipeline("text-classification", model=folders["cls"]),
        "ner": pipeline("ner", model=folders["ner"]),
        "qa": pipeline("question-answering", model=folders["qa"]),
        "mlm": pipeline("fill-mask", model=folders["mlm"]),
        "nli": pipeline("zero-shot-classification", model=folders["nli"]),
        "gpt": pipeline("text-generation", model=folders["gpt"]),
        "sum": pipeline("summarization", model=folders["sum"]),
        "mt": pipeline("translation", model=folders["mt"]),
    }


@pytest.fixture(autouse=True)
def clients_online(monkeypatch):
    """huggingface_hub's InferenceClient refuses every request under HF_HUB_OFFLINE=1, even to
    127.0.0.1; the test server is local, so let it through."""
    from huggingface_hub import constants
    from huggingface_hub.inference import _common
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # InferenceClient remembers, per process and per model (None for every URL), the TGI
    # parameters a server refused once, and then treats it as no TGI server (no details, no
    # stream): each test starts from a client that has seen no refusal
    monkeypatch.setattr(_common, "_UNSUPPORTED_TEXT_GENERATION_KWARGS", {})
    reset_sessions()
    yield
    reset_sessions()


def wait_healthy(url, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if httpx.get(url + "/health").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(httpx.get(url + "/info").text)


@pytest.fixture(scope="module")
def server(folders):
    """One server with nine pipelines, loaded by the server itself from `NAME=TASK=MODEL` specs.
    The embeddings model comes first: it is what `POST /` means for a plain text."""
    specs = [MINILM, f"cls=text-classification={folders['cls']}", f"ner=ner={folders['ner']}",
             f"qa=question-answering={folders['qa']}", f"mlm=fill-mask={folders['mlm']}",
             f"nli=zero-shot-classification={folders['nli']}", f"gpt=text-generation={folders['gpt']}",
             f"sum=summarization={folders['sum']}", f"mt=translation={folders['mt']}"]
    app = create_app(specs, max_client_batch_size=32, max_body_bytes=200_000)
    with start_in_thread(app) as running:
        running.app = app
        wait_healthy(running.url)
        yield running


def name(folders, key):
    return key  # the name the server fixture serves folders[key] under


def post(server, path, body, **kw):
    return httpx.post(server.url + path, json=body, timeout=60, **kw)


# -- clients -------------------------------------------------------------------------------

def test_openai_client_embeddings_and_models(server, direct):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="-")
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == MINILM and len(ids) == 9
    expected = direct["emb"].embed(["hello", "a second sentence"]).numpy()
    for fmt in ("base64", "float"):  # the client asks for base64 unless told otherwise
        kwargs = {} if fmt == "base64" else {"encoding_format": "float"}
        out = client.embeddings.create(model=MINILM, input=["hello", "a second sentence"], **kwargs)
        got = np.array([d.embedding for d in out.data])
        np.testing.assert_allclose(got, expected, atol=1e-4)
        assert [d.index for d in out.data] == [0, 1]
        assert out.usage.prompt_tokens == out.usage.total_tokens == 3 + 5  # [CLS] ... [SEP]
    one = client.embeddings.create(model=MINILM, input="hello", encoding_format="float", dimensions=8)
    assert len(one.data) == 1 and len(one.data[0].embedding) == 8
    assert math.isclose(float(np.linalg.norm(one.data[0].embedding)), 1.0, rel_tol=1e-5)


def test_inference_client_base_url_routes_by_request_shape(server, direct):
    """InferenceClient("http://host:port") posts every task to `/`: the request's shape and
    parameters pick the model; a request several served tasks could take is a 400 naming the
    served models (the client shows it), never another task's answer."""
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    client = InferenceClient(server.url)
    vec = client.feature_extraction("Hello world")
    assert vec.shape == (1, 384)
    np.testing.assert_allclose(vec[0], direct["emb"].embed(["Hello world"])[0].numpy(), atol=1e-4)
    sims = client.sentence_similarity("I love learning.", other_sentences=["I like studying.", "Stocks fell."])
    expected = direct["emb"].embed(["I love learning.", "I like studying.", "Stocks fell."])
    assert close(sims, (expected[1:] @ expected[0]).tolist())
    assert close(as_dicts(client.zero_shot_classification(TEXTS[0], candidate_labels=["code", "food"])),
                 [dict(label=l, score=s) for l, s in zip(*(direct["nli"](TEXTS[0], candidate_labels=["code", "food"])[k]
                                                            for k in ("labels", "scores")))])
    qa = client.question_answering(question="Where do I work?", context="I work at Hugging Face in Brooklyn.")
    assert close(as_dicts(qa), direct["qa"](question="Where do I work?", context="I work at Hugging Face in Brooklyn."))
    # parameters only one task takes
    got = as_dicts(client.text_classification("I love this", function_to_apply="softmax"))
    assert close(got, direct["cls"]("I love this", top_k=None, function_to_apply="softmax"))
    ner = client.token_classification(TEXTS[1], aggregation_strategy="first")
    assert close(as_dicts(ner), direct["ner"](TEXTS[1], aggregation_strategy="first"))
    text = TEXTS[2].split(" ", 1)[1] + " [MASK]."  # the fill-mask model's mask token claims the text
    assert close(as_dicts(client.fill_mask(text)), direct["mlm"](text))
    prompt = "The assert statement"
    expected = direct["gpt"](prompt, do_sample=False, max_new_tokens=6, return_full_text=False)[0]["generated_text"]
    assert client.text_generation(prompt, max_new_tokens=6) == expected
    # a plain text and no telling parameter: classification, NER, generation, summarization and
    # translation models could all take it
    for call in (lambda: client.text_classification("I love this"), lambda: client.summarization(TEXTS[3]),
                 lambda: client.translation(TEXTS[3]), lambda: client.fill_mask("no mask token here")):
        with pytest.raises(HfHubHTTPError) as err:
            call()
        assert err.value.response.status_code == 400
        assert "Served models" in str(err.value) and "cls (text-classification)" in str(err.value)
        assert "/models/{name}" in str(err.value)


def test_inference_client_per_model_urls(server, folders, direct):
    from huggingface_hub import InferenceClient

    ner = InferenceClient(f"{server.url}/models/{name(folders, 'ner')}")
    assert close(as_dicts(ner.token_classification(TEXTS[1])), direct["ner"](TEXTS[1], aggregation_strategy="simple"))
    mlm = InferenceClient(f"{server.url}/models/{name(folders, 'mlm')}")
    text = TEXTS[2].split(" ", 1)[1] + " [MASK]."
    assert close(as_dicts(mlm.fill_mask(text, top_k=3)), direct["mlm"](text, top_k=3))
    cls = InferenceClient(f"{server.url}/models/text-classification")  # a task name finds its model too
    assert close(as_dicts(cls.text_classification(TEXTS[3], top_k=1)), direct["cls"](TEXTS[3], top_k=1))
    emb = InferenceClient(f"{server.url}/models/{MINILM}/pipeline/feature-extraction")
    assert emb.feature_extraction(["a", "b"]).shape == (2, 384)


def test_inference_client_text_generation_and_stream(server, folders, direct):
    from huggingface_hub import InferenceClient

    gen = InferenceClient(f"{server.url}/models/{name(folders, 'gpt')}")
    prompt = "The assert statement"
    expected = direct["gpt"](prompt, do_sample=False, max_new_tokens=10, return_full_text=False)[0]["generated_text"]
    assert gen.text_generation(prompt, max_new_tokens=10) == expected  # TGI: greedy, new text only
    pieces = list(gen.text_generation(prompt, max_new_tokens=10, stream=True))
    assert len(pieces) > 1 and "".join(pieces) == expected
    details = gen.text_generation(prompt, max_new_tokens=10, details=True)
    assert details.generated_text == expected and details.details.generated_tokens > 0
    with pytest.warns(UserWarning, match="watermark"):  # refused as TGI does: the client retries without it
        assert gen.text_generation(prompt, max_new_tokens=10, watermark=True) == expected


def test_summarization_and_translation(server, folders, direct):
    from huggingface_hub import InferenceClient
    from openai import OpenAI

    text, gen = TEXTS[13], {"max_new_tokens": 6}
    summarize = InferenceClient(f"{server.url}/models/{name(folders, 'sum')}")
    assert summarize.summarization(text, generate_parameters=gen).summary_text == direct["sum"](text, **gen)[0]["summary_text"]
    translate = InferenceClient(f"{server.url}/models/{name(folders, 'mt')}")
    assert translate.translation(text, generate_parameters=gen).translation_text == direct["mt"](text, **gen)[0]["translation_text"]
    batch = post(server, f"/models/{name(folders, 'sum')}", {"inputs": TEXTS[12:14], "parameters": {"generate_parameters": gen}})
    assert batch.json() == direct["sum"](TEXTS[12:14], **gen)
    ids = post(server, f"/models/{name(folders, 'sum')}", {"inputs": text, "parameters": {"return_tensors": True, **gen}})
    expected_ids = direct["sum"](text, return_tensors=True, **gen)[0]["summary_token_ids"]  # a tensor: JSON sends a list
    assert ids.status_code == 200 and ids.json() == [{"summary_token_ids": expected_ids.tolist()}]
    done = OpenAI(base_url=server.url + "/v1", api_key="-").completions.create(
        model=name(folders, "mt"), prompt=text, max_tokens=6, temperature=0)
    assert done.choices[0].text == direct["mt"](text, max_new_tokens=6, do_sample=False)[0]["translation_text"]


def test_openai_chat_and_completions(server, folders, direct):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="-")
    gpt = name(folders, "gpt")
    chat = [{"role": "user", "content": "Explain attention."}]
    expected = direct["gpt"](chat, do_sample=False, max_new_tokens=8, return_full_text=False)[0]["generated_text"]
    out = client.chat.completions.create(model=gpt, messages=chat, max_tokens=8, temperature=0)
    assert out.choices[0].message.content == expected and out.choices[0].message.role == "assistant"
    assert out.usage.completion_tokens > 0 and out.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(model=gpt, messages=chat, max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    prompt = "Python lists are"
    plain = direct["gpt"](prompt, do_sample=False, max_new_tokens=6, return_full_text=False)[0]["generated_text"]
    done = client.completions.create(model=gpt, prompt=prompt, max_tokens=6, temperature=0)
    assert done.choices[0].text == plain
    streamed = client.completions.create(model=gpt, prompt=prompt, max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == plain
    raw = httpx.post(server.url + "/v1/completions", json={"model": gpt, "prompt": prompt, "max_tokens": 3,
                                                           "temperature": 0, "stream": True}).text
    assert raw.rstrip().endswith("data: [DONE]")


def test_inference_client_every_task_method(server, folders, direct):
    """Every InferenceClient task method the served tasks cover, called the way its docs call it
    on a per-model URL, answers what the pipeline answers; chat_completion works on the base URL
    (the client sends model="dummy": the one chat model answers, as TGI does) and on a per-model
    URL (it posts to /models/NAME/v1/chat/completions), plain and streamed."""
    from huggingface_hub import InferenceClient

    def at(key):
        return InferenceClient(f"{server.url}/models/{MINILM if key == 'emb' else name(folders, key)}")

    emb = at("emb")
    np.testing.assert_allclose(emb.feature_extraction(["a cat", "a dog"]), direct["emb"].embed(["a cat", "a dog"]).numpy(),
                               atol=1e-4)
    sims = emb.sentence_similarity("a cat", other_sentences=["a kitten", "stocks"])
    vectors = direct["emb"].embed(["a cat", "a kitten", "stocks"])
    assert close(sims, (vectors[1:] @ vectors[0]).tolist())
    assert close(as_dicts(at("cls").text_classification(TEXTS[5])), direct["cls"](TEXTS[5], top_k=None))
    assert close(as_dicts(at("cls").text_classification(TEXTS[5], top_k=1)), direct["cls"](TEXTS[5], top_k=1))
    assert close(as_dicts(at("ner").token_classification(TEXTS[6])), direct["ner"](TEXTS[6], aggregation_strategy="simple"))
    masked = "The [MASK] statement is used for debugging."
    assert close(as_dicts(at("mlm").fill_mask(masked, top_k=2)), direct["mlm"](masked, top_k=2))
    qa = at("qa").question_answering(question="Who works?", context="Sarah works at a bakery in Paris.")
    assert close(as_dicts(qa), direct["qa"](question="Who works?", context="Sarah works at a bakery in Paris."))
    zs = at("nli").zero_shot_classification(TEXTS[7], candidate_labels=["code", "food"], multi_label=True)
    want = direct["nli"](TEXTS[7], candidate_labels=["code", "food"], multi_label=True)
    assert close(as_dicts(zs), [{"label": l, "score": s} for l, s in zip(want["labels"], want["scores"])])
    gen = {"max_new_tokens": 5}
    assert at("sum").summarization(TEXTS[8], generate_parameters=gen).summary_text == \
        direct["sum"](TEXTS[8], **gen)[0]["summary_text"]
    assert at("mt").translation(TEXTS[8], generate_parameters=gen).translation_text == \
        direct["mt"](TEXTS[8], **gen)[0]["translation_text"]

    gpt, prompt = at("gpt"), "Python lists are"
    expected = direct["gpt"](prompt, do_sample=False, max_new_tokens=8, return_full_text=False)[0]["generated_text"]
    details = gpt.text_generation(prompt, max_new_tokens=8, details=True)
    assert details.generated_text == expected and details.details.finish_reason in ("length", "eos_token")
    streamed = list(gpt.text_generation(prompt, max_new_tokens=8, stream=True, details=True))
    assert "".join(e.token.text for e in streamed) == expected and streamed[-1].generated_text == expected
    assert streamed[-1].details.finish_reason == details.details.finish_reason

    chat = [{"role": "user", "content": "Explain attention."}]
    reply = direct["gpt"](chat, do_sample=False, max_new_tokens=8, return_full_text=False)[0]["generated_text"]
    for client in (InferenceClient(server.url), gpt):  # base URL (model "dummy"), per-model URL
        out = client.chat_completion(chat, max_tokens=8, temperature=0)
        assert out.choices[0].message.content == reply and out.model == "gpt"
        chunks = list(client.chat_completion(chat, max_tokens=8, temperature=0, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply


def test_openai_client_every_call(server, folders, direct):
    """Embeddings from strings and from token ids (the model's own, used as given), chat with n,
    stop and stream_options, completions, models.list — and errors whose message the client
    shows. Also through base_url /models/NAME/v1, where the path names the model."""
    from openai import BadRequestError, NotFoundError, OpenAI, UnprocessableEntityError

    client = OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
    tokenizer = direct["emb"].tokenizer
    texts = ["hello world", "a second, longer sentence"]
    ids = [tokenizer.encode(t).ids for t in texts]  # [CLS] ... [SEP]: what the text embeds as
    expected = direct["emb"].embed(texts).numpy()
    many = client.embeddings.create(model=MINILM, input=ids, encoding_format="float")
    np.testing.assert_allclose([d.embedding for d in many.data], expected, atol=1e-4)
    assert many.usage.prompt_tokens == sum(len(i) for i in ids)
    one = client.embeddings.create(model=MINILM, input=ids[0])  # a list of ints: one input
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, expected[0], atol=1e-4)
    hundred = client.embeddings.create(model=MINILM, input=[f"sentence {i}" for i in range(30)] * 1)
    assert len(hundred.data) == 30
    assert client.embeddings.create(model="text-embedding-3-small", input="x").model == MINILM  # the one embedder

    gpt, chat = name(folders, "gpt"), [{"role": "user", "content": "Explain attention."}]
    sampled = client.chat.completions.create(model=gpt, messages=chat, max_tokens=6, n=3, seed=3, temperature=1.0)
    assert [c.index for c in sampled.choices] == [0, 1, 2]
    assert len({c.message.content for c in sampled.choices}) > 1  # three samples
    greedy = client.chat.completions.create(model=gpt, messages=chat, max_tokens=6, n=2, temperature=0)
    assert greedy.choices[0].message.content == greedy.choices[1].message.content  # one answer, twice
    plain = client.chat.completions.create(model=gpt, messages=chat, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=gpt, messages=chat, max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == plain.choices[0].message.content
    text = plain.choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 2]
    cut = client.chat.completions.create(model=gpt, messages=chat, max_tokens=8, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[:text.find(stop)] and cut.choices[0].finish_reason == "stop"
    done = client.completions.create(model=gpt, prompt=["Python lists are", "A class"], max_tokens=4, temperature=0)
    assert [c.index for c in done.choices] == [0, 1]
    assert {m.id for m in client.models.list().data} >= {gpt, MINILM, "cls"}

    named = OpenAI(base_url=f"{server.url}/models/{gpt}/v1", api_key="-", max_retries=0)
    assert named.chat.completions.create(model="whatever", messages=chat, max_tokens=8,
                                         temperature=0).choices[0].message.content == text
    assert [m.id for m in named.models.list().data] == [gpt]

    with pytest.raises(UnprocessableEntityError, match="top_logprobs must be an integer from 0 to 20") as err:
        client.chat.completions.create(model=gpt, messages=chat, logprobs=True, top_logprobs=21)
    assert err.value.param == "top_logprobs"
    with pytest.raises(BadRequestError, match="top_logprobs needs logprobs: true"):
        client.chat.completions.create(model=gpt, messages=chat, top_logprobs=2)
    with pytest.raises(UnprocessableEntityError, match=r"max_tokens=1000000: the prompt's \d+ tokens .*\(--max-total-tokens\)"):
        client.chat.completions.create(model=gpt, messages=chat, max_tokens=10**6)
    with pytest.raises(UnprocessableEntityError, match=r"n=9 is more than the 8 sequences"):
        client.chat.completions.create(model=gpt, messages=chat, n=9)
    with pytest.raises(NotFoundError, match="'gpt-4o' is not served here") as err:
        client.completions.create(model="gpt-4o", prompt="hi")  # three generation models: no guessing
    assert err.value.code == "model_not_found" and err.value.param == "model"


def sse_events(text: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


@pytest.mark.parametrize("stopped", [False, True])
def test_finish_reasons_and_stop_strings_agree_on_every_generation_route(server, folders, direct, stopped):
    """TGI (plain with details, streamed) and OpenAI (plain, streamed) cut at the same stop string
    and give the same finish reason, each in its API's words."""
    gpt, prompt, limit = name(folders, "gpt"), "The assert statement", 10
    full = direct["gpt"](prompt, do_sample=False, max_new_tokens=limit, return_full_text=False)[0]["generated_text"]
    at = len(full) // 2
    stop = [full[at:at + 3]] if stopped else []
    text = full[:full.find(stop[0])] if stopped else full
    tgi_reason, openai_reason = ("stop_sequence", "stop") if stopped else ("length", "length")
    params = {"max_new_tokens": limit, "stop": stop, "details": True}

    plain = post(server, f"/models/{gpt}", {"inputs": prompt, "parameters": params}).json()[0]
    assert (plain["generated_text"], plain["details"]["finish_reason"]) == (text, tgi_reason)
    events = sse_events(post(server, f"/models/{gpt}", {"inputs": prompt, "parameters": params, "stream": True}).text)
    assert "".join(e["token"]["text"] for e in events) == text
    assert (events[-1]["generated_text"], events[-1]["details"]["finish_reason"]) == (text, tgi_reason)

    body = {"model": gpt, "prompt": prompt, "max_tokens": limit, "temperature": 0, "stop": stop}
    choice = post(server, "/v1/completions", body).json()["choices"][0]
    assert (choice["text"], choice["finish_reason"]) == (text, openai_reason)
    chunks = sse_events(post(server, "/v1/completions", {**body, "stream": True}).text)
    assert "".join(c["choices"][0]["text"] for c in chunks) == text
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * (len(chunks) - 1) + [openai_reason]


def test_token_counts_and_finish_reasons_come_from_the_generated_ids(server, folders):
    """Non-streamed generation counts the tokens the model generated (transformers' ids for the
    same call), not the text re-tokenized: max_tokens=8 is 8 tokens and "length"; an
    end-of-sequence token is counted and is "eos_token"; a stop string counts the tokens up
    to the one that completed it."""
    import transformers

    gpt, prompt = name(folders, "gpt"), "The assert statement"
    reference = transformers.pipeline("text-generation", model=folders["gpt"])
    tok = reference.tokenizer
    prompt_ids = tok(prompt)["input_ids"]

    def new_ids(**kw):
        out = reference(prompt, do_sample=False, return_tensors=True, **kw)[0]["generated_token_ids"]
        return list(out)[len(prompt_ids):]

    def text_of(ids):
        return tok.decode(prompt_ids + ids, skip_special_tokens=True)[len(tok.decode(prompt_ids, skip_special_tokens=True)):]

    free = new_ids(max_new_tokens=8)
    assert len(free) == 8 and tok.eos_token_id not in free
    body = {"model": gpt, "prompt": prompt, "max_tokens": 8, "temperature": 0}
    done = post(server, "/v1/completions", body).json()
    assert done["usage"]["completion_tokens"] == 8 and done["choices"][0]["finish_reason"] == "length"
    assert done["usage"]["prompt_tokens"] == len(prompt_ids)
    tgi = post(server, f"/models/{gpt}", {"inputs": prompt, "parameters": {"max_new_tokens": 8, "details": True}})
    assert tgi.json()[0]["details"]["generated_tokens"] == 8 and tgi.json()[0]["details"]["finish_reason"] == "length"

    # the third new token made the end-of-sequence token (no token twice: the tiny model repeats
    # itself otherwise): generation ends there, and it counts
    distinct = new_ids(max_new_tokens=8, no_repeat_ngram_size=1)
    ended = new_ids(max_new_tokens=8, no_repeat_ngram_size=1, eos_token_id=distinct[2])
    assert ended == distinct[:3]
    params = {"max_new_tokens": 8, "details": True, "no_repeat_ngram_size": 1, "eos_token_id": distinct[2]}
    got = post(server, f"/models/{gpt}", {"inputs": prompt, "parameters": params}).json()[0]
    tokens = got["details"].pop("tokens")
    assert got["details"] == {"finish_reason": "eos_token", "generated_tokens": 3, "seed": None, "prefill": []}
    assert [t["id"] for t in tokens] == ended
    assert got["generated_text"] == text_of(ended)

    # a stop string: the tokens up to the one that completes it
    full = text_of(free)
    stop = full[len(full) // 2:len(full) // 2 + 2]
    upto = next(n for n in range(1, 9) if stop in text_of(free[:n]))
    cut = post(server, "/v1/completions", {**body, "stop": [stop]}).json()
    assert cut["choices"][0] == {"index": 0, "text": full[:full.find(stop)], "logprobs": None, "finish_reason": "stop"}
    assert cut["usage"]["completion_tokens"] == upto


def test_seeded_sampling_is_the_same_alone_and_under_load(server, folders):
    """A request's seed gives the text the pipeline gives with that seed alone, while other
    requests sample (seeded, unseeded, streamed) at the same time: requests with the same seed
    and options are not coalesced, and no one reseeds torch's global generator under a stream."""
    gen = pipeline("text-generation", model=folders["gpt"])
    path = f"/models/{name(folders, 'gpt')}"
    prompts = ["The assert statement", "Python lists are", "A class", "Ünïcödé café"]
    params = {"do_sample": True, "max_new_tokens": 10}
    jobs = [(p, seed, stream) for seed in (1, 2) for p in prompts for stream in (False, True)]
    jobs += [(p, None, stream) for p in prompts for stream in (False, True)]  # unseeded noise
    expected = {(p, s): gen(p, seed=s, return_full_text=False, **params)[0]["generated_text"]
                for p, s, _ in jobs if s is not None}
    assert len(set(expected.values())) > len(prompts)  # the seed matters

    def ask(job):
        prompt, seed, stream = job
        body = {"inputs": prompt, "parameters": {**params, **({} if seed is None else {"seed": seed})}, "stream": stream}
        r = httpx.post(server.url + path, json=body, timeout=60)
        assert r.status_code == 200, r.text
        if not stream:
            return r.json()[0]["generated_text"]
        events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
        return events[-1]["generated_text"]

    with ThreadPoolExecutor(16) as pool:
        got = list(pool.map(ask, jobs * 2))
    wrong = [(job, text, expected[job[:2]]) for job, text in zip(jobs * 2, got)
             if job[1] is not None and text != expected[job[:2]]]
    assert not wrong, wrong[:3]


def test_tei_routes(server, direct):
    emb = post(server, "/embed", {"inputs": ["hello", "world"]}).json()
    np.testing.assert_allclose(emb, direct["emb"].embed(["hello", "world"]).numpy(), atol=1e-4)
    assert len(post(server, "/embed", {"inputs": "hello"}).json()) == 1
    single = post(server, "/predict", {"inputs": TEXTS[4]}).json()
    assert close(single, direct["cls"](TEXTS[4], top_k=None))
    batch = post(server, "/predict", {"inputs": [[TEXTS[4]], [TEXTS[5], TEXTS[6]]]}).json()
    assert close(batch, [direct["cls"](TEXTS[4], top_k=None),
                         direct["cls"]({"text": TEXTS[5], "text_pair": TEXTS[6]}, top_k=None)])
    ranked = post(server, "/rerank", {"query": "a cat on a mat", "texts": ["stock prices", "a kitten on a rug"],
                                      "return_text": True}).json()
    assert [r["index"] for r in ranked] == [1, 0] and ranked[0]["text"] == "a kitten on a rug"


def test_tei_tokenize_decode_and_embed_all(server, direct):
    """TEI's shapes: /tokenize gives per input [{id, text, special, start, stop}] with byte offsets
    into the input (text: the input's own bytes there; special tokens: their token, null offsets);
    /decode takes {ids, skip_special_tokens} and gives one string per sequence; /embed_all gives
    every token's hidden state, special tokens included."""
    text = "Héllo wörld, café!"
    tokenizer = direct["emb"].tokenizer
    enc = tokenizer.encode(text)
    got = post(server, "/tokenize", {"inputs": text}).json()
    assert len(got) == 1 and [t["id"] for t in got[0]] == enc.ids
    data = text.encode()
    for token, special in zip(got[0], enc.special_tokens_mask):
        assert token["special"] == bool(special)
        if special:
            assert token["start"] is None and token["stop"] is None and token["text"] in ("[CLS]", "[SEP]")
        else:
            assert data[token["start"]:token["stop"]].decode() == token["text"]
    assert got[0][1] == {"id": enc.ids[1], "text": "Héllo", "special": False, "start": 0, "stop": 6}  # é: 2 bytes
    bare = post(server, "/tokenize", {"inputs": ["a b", "c"], "add_special_tokens": False}).json()
    assert [[t["text"] for t in seq] for seq in bare] == [["a", "b"], ["c"]]

    assert post(server, "/decode", {"ids": enc.ids}).json() == [tokenizer.decode(enc.ids, skip_special_tokens=True)]
    both = post(server, "/decode", {"ids": [enc.ids, enc.ids[:3]], "skip_special_tokens": False}).json()
    assert both == [tokenizer.decode(enc.ids), tokenizer.decode(enc.ids[:3])]
    assert post(server, "/decode", {"ids": [10**6]}).status_code == 422

    per_token = post(server, "/embed_all", {"inputs": ["hello", "a longer sentence here"]}).json()
    expected = direct["emb"](["hello", "a longer sentence here"])  # transformers' (1, T, D) per input
    assert [np.array(p).shape for p in per_token] == [np.array(e[0]).shape for e in expected]
    for p, e in zip(per_token, expected):
        np.testing.assert_allclose(p, e[0], atol=1e-4)


# -- errors and limits -----------------------------------------------------------------------

@pytest.mark.parametrize("path, body, status, kind", [
    ("/models/no-such-model", {"inputs": "x"}, 404, "not_found"),
    ("/", b"{not json", 422, "validation"),
    ("/", {"parameters": {}}, 422, "validation"),
    ("/v1/embeddings", {"model": MINILM, "input": [1, 2, 10**9]}, 422, "validation"),
    ("/v1/embeddings", {"model": MINILM, "input": "x", "encoding_format": "int8"}, 422, "validation"),
    ("/v1/embeddings", {"model": "gpt", "input": "x"}, 422, "validation"),
    ("/embed", {"inputs": ["x"] * 33}, 413, "payload_too_large"),
    ("/embed", {"inputs": "word " * 50_000}, 413, "payload_too_large"),
    ("/predict", {"inputs": "x", "nope": 1, "raw_scores": "yes"}, 422, "validation"),
    ("/v1/chat/completions", {"model": MINILM, "messages": [{"role": "user", "content": "hi"}]}, 422, "validation"),
    ("/v1/chat/completions", {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
     400, "validation"),
    ("/v1/completions", {"model": "gpt", "prompt": "hi", "logprobs": 21}, 422, "validation"),
    ("/v1/nowhere", {}, 404, "not_found"),
    ("/nowhere", {}, 404, "not_found"),
])
def test_error_statuses(server, path, body, status, kind):
    """HF routes answer {"error", "error_type"}; OpenAI routes OpenAI's {"error": {"message",
    "type", "param", "code"}}."""
    r = httpx.post(server.url + path, content=body if isinstance(body, bytes) else json.dumps(body).encode(),
                   headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    if path.startswith("/v1/"):
        assert set(error) == {"message", "type", "param", "code"} and error["message"], error
        assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
        assert error["code"] in (kind, "model_not_found")
    else:
        assert r.json()["error_type"] == kind and isinstance(error, str) and error


def test_pipeline_errors_are_422_with_the_pipelines_message(server, folders):
    cls = f"/models/{name(folders, 'cls')}"
    r = post(server, cls, {"inputs": "fine", "parameters": {"bogus": 1}})
    assert r.status_code == 422 and "bogus" in r.json()["error"]
    r = post(server, cls, {"inputs": LONG})
    assert r.status_code == 422 and "truncation" in r.json()["error"]
    assert post(server, cls, {"inputs": LONG, "parameters": {"truncation": True}}).status_code == 200
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError
    from openai import OpenAI, UnprocessableEntityError

    with pytest.raises(HfHubHTTPError, match="422"):
        InferenceClient(server.url + cls).text_classification(LONG)
    with pytest.raises(UnprocessableEntityError, match="token ids in"):  # the client shows the server's message
        OpenAI(base_url=server.url + "/v1", api_key="-").embeddings.create(model=MINILM, input=[[1, 10**7]])


class Gated:
    """A pipeline whose runs wait for a gate: keeps requests in flight and queued on purpose."""

    def __init__(self, pipe):
        self.pipe, self.gate, self.calls = pipe, threading.Event(), []

    def __getattr__(self, attr):
        return getattr(self.pipe, attr)

    def batch(self, items, **options):
        self.calls.append(list(items))
        assert self.gate.wait(30)
        return self.pipe.batch(items, **options)


def test_batching_limits_and_isolation(folders, direct):
    """While the model is busy: requests queue and coalesce into one batch, the event loop still
    answers, requests beyond --max-concurrent-requests get 429, and the one bad input of the
    coalesced batch fails alone (the others get their own correct results)."""
    gated = Gated(pipeline("text-classification", model=folders["cls"]))
    app = create_app(pipelines={"cls": gated}, max_concurrent_requests=8)
    batcher = app.state.lightpipe.registry.get("cls").batcher
    texts = [TEXTS[0], *TEXTS[7:12], LONG, TEXTS[12]]  # LONG is too long for the model: 422
    with start_in_thread(app) as srv, ThreadPoolExecutor(8) as pool:
        def ask(text):
            return httpx.post(srv.url + "/models/cls", json={"inputs": text}, timeout=60)

        futures = [pool.submit(ask, texts[0])]
        deadline = time.monotonic() + 10
        while not gated.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        for i, text in enumerate(texts[1:], start=1):
            futures.append(pool.submit(ask, text))
            while batcher.depth < i and time.monotonic() < deadline:  # queued, in order
                time.sleep(0.01)
        assert batcher.depth == 7
        start = time.monotonic()
        assert httpx.get(srv.url + "/health").status_code == 200 and time.monotonic() - start < 1
        over = ask("one too many")
        assert over.status_code == 429 and over.json()["error_type"] == "overloaded"
        gated.gate.set()
        answers = [f.result() for f in futures]
    assert len(gated.calls[1]) == 7  # the seven queued requests ran as one batch
    for text, r in zip(texts, answers):
        if text is LONG:
            assert r.status_code == 422 and "truncation" in r.json()["error"]
        else:
            assert r.status_code == 200 and close(r.json(), [direct["cls"](text, top_k=None)])


def test_concurrent_requests_are_batched_and_correct(server, folders, direct):
    """200 requests from 32 threads, embeddings and classification mixed: every one answered
    with the direct pipeline's result for its input, none 5xx, and some were coalesced."""
    emb_expected = direct["emb"].embed(TEXTS).numpy()
    cls_expected = [direct["cls"](t, top_k=None) for t in TEXTS]
    cls_path = f"/models/{name(folders, 'cls')}"

    client = httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=32))

    def one(i):
        k = i % len(TEXTS)
        if i % 2:
            r = client.post("/v1/embeddings", json={"model": MINILM, "input": TEXTS[k], "encoding_format": "float"})
            ok = r.status_code == 200 and np.allclose(r.json()["data"][0]["embedding"], emb_expected[k], atol=1e-4)
        else:
            r = client.post(cls_path, json={"inputs": TEXTS[k]})
            ok = r.status_code == 200 and close(r.json(), [cls_expected[k]])
        return r.status_code, ok

    with client, ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(200)))
    assert all(status < 500 for status, _ in results)
    assert all(ok for _, ok in results), [s for s, ok in results if not ok]
    metrics = server.app.state.lightpipe.metrics
    assert metrics.batch_requests.max_bucket(MINILM) > 1  # concurrent requests shared a batch
    text = httpx.get(server.url + "/metrics").text
    for metric in ("lightpipe_requests_total", "lightpipe_request_errors_total", "lightpipe_queue_depth",
                   "lightpipe_batch_inputs_bucket", "lightpipe_request_duration_seconds_bucket",
                   "lightpipe_requests_in_flight"):
        assert metric in text
    assert f'lightpipe_batch_requests_count{{model="{MINILM}"}}' in text


def test_health_info_docs_and_playground_page(server):
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    info = httpx.get(server.url + "/info").json()
    assert {m["task"] for m in info["models"]} >= {"feature-extraction", "text-classification", "token-classification",
                                                   "question-answering", "fill-mask", "zero-shot-classification",
                                                   "text-generation", "summarization", "translation"}
    assert all(m["status"] == "ready" for m in info["models"]) and info["max_client_batch_size"] == 32
    spec = httpx.get(server.url + "/openapi.json").json()
    assert {"/", "/v1/embeddings", "/v1/chat/completions", "/embed", "/rerank", "/metrics"} <= set(spec["paths"])
    assert "openapi.json" in httpx.get(server.url + "/docs").text
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert httpx.get(server.url + "/static/app.js").status_code == 200


# -- loading -----------------------------------------------------------------------------------

def test_health_is_503_while_loading_and_load_route(folders, monkeypatch):
    release = threading.Event()
    real = registry_module.load_pipeline

    def slow(task, model, **kw):
        if "slow" in model:
            assert release.wait(30)
            raise OSError("no such model")
        return real(task, model, **kw)

    monkeypatch.setattr(registry_module, "load_pipeline", slow)
    app = create_app(["org/slow"], allow_load=True, allow_load_local=True)
    with start_in_thread(app) as srv:
        health = httpx.get(srv.url + "/health")
        assert health.status_code == 503 and health.json()["error_type"] == "loading"
        r = httpx.post(srv.url + "/models/org/slow", json={"inputs": "x"})
        assert r.status_code == 503 and r.json()["error_type"] == "loading"
        release.set()
        deadline = time.monotonic() + 10
        while httpx.get(srv.url + "/health").json().get("status") == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        failed = httpx.get(srv.url + "/health")
        assert failed.status_code == 503 and "no such model" in failed.json()["error"]

        r = httpx.post(srv.url + "/api/load", json={"model": str(folders["cls"])})
        assert r.status_code in (200, 202)
        loaded = r.json()["id"]  # a folder is served under its own name
        assert loaded == os.path.basename(folders["cls"])
        while httpx.get(srv.url + "/info").json()["models"][-1]["status"] == "loading" and time.monotonic() < deadline + 20:
            time.sleep(0.05)
        r = httpx.post(f"{srv.url}/models/{loaded}", json={"inputs": "hello"})
        assert r.status_code == 200 and {d["label"] for d in r.json()[0]} == {"NEGATIVE", "POSITIVE"}
        bad = httpx.post(srv.url + "/api/load", json={"model": "x", "task": "no-such-task"})
        assert bad.status_code == 422 and "known tasks" in bad.json()["error"]


def test_load_route_is_refused_without_allow_load(server):
    r = httpx.post(server.url + "/api/load", json={"model": "org/any"})
    assert r.status_code == 403 and r.json()["error_type"] == "forbidden"


def test_base64_encoding_is_little_endian_float32(server):
    r = post(server, "/v1/embeddings", {"model": MINILM, "input": "hello", "encoding_format": "base64"}).json()
    vec = np.frombuffer(base64.b64decode(r["data"][0]["embedding"]), dtype="<f4")
    assert vec.shape == (384,) and math.isclose(float(np.linalg.norm(vec)), 1.0, rel_tol=1e-5)


def test_rerank_with_a_cross_encoder(tmp_path):
    """A one-label text-classification model reranks (query, text) pairs, TEI's way: sigmoid
    scores, best first; raw_scores gives the logits."""
    folder = encoder_checkpoint(tmp_path, "bert", "sequence-classification", num_labels=1)
    cross = pipeline("text-classification", model=folder)
    query, docs = "a cat on a mat", TEXTS[:4]
    pairs = [{"text": query, "text_pair": d} for d in docs]
    scores = [r[0]["score"] for r in cross(pairs, top_k=None, function_to_apply="sigmoid")]
    logits = [r[0]["score"] for r in cross(pairs, top_k=None, function_to_apply="none")]
    with start_in_thread(create_app(pipelines={"reranker": cross})) as srv:
        ranked = httpx.post(srv.url + "/rerank", json={"query": query, "texts": docs}).json()
        raw = httpx.post(srv.url + "/rerank", json={"query": query, "texts": docs, "raw_scores": True}).json()
    assert [r["index"] for r in ranked] == sorted(range(4), key=lambda i: -scores[i])
    assert close([r["score"] for r in ranked], sorted(scores, reverse=True))
    assert close(sorted(r["score"] for r in raw), sorted(logits))
