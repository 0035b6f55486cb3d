"""Honest token data from the server's generation engine, through the real clients (openai,
huggingface_hub.InferenceClient): OpenAI logprobs / top_logprobs (chat and completions, plain
and streamed), best_of, TGI details tokens and top_n_tokens, the TGI stream's token ids and
log-probabilities, chat_template_kwargs, and concurrent chat streams. Every log-probability is
checked against transformers' own computation on the same checkpoint, never against numbers the
server produced."""

import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from openai import BadRequestError, OpenAI, UnprocessableEntityError

from lightpipe import pipeline
from lightpipe.server import create_app, start_in_thread
from test_server import clients_online, decoder_checkpoint, wait_healthy  # noqa: F401 (autouse fixture)
from tiny import CHATML

pytestmark = pytest.mark.server

# a template that reads a variable only chat_template_kwargs can set (as Qwen3's enable_thinking)
THINKING = CHATML + ("{% if add_generation_prompt and enable_thinking is defined and not enable_thinking %}"
                     "{{ '<think>\n\n</think>\n\n' }}{% endif %}")
CHAT = [{"role": "user", "content": "Explain attention."}]
PROMPT = "The assert statement"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"gpt": decoder_checkpoint(tmp_path_factory.mktemp("gpt")),
                "think": decoder_checkpoint(tmp_path_factory.mktemp("think"), THINKING)}


@pytest.fixture(scope="module")
def server(folders):
    app = create_app([f"gpt=text-generation={folders['gpt']}", f"think=text-generation={folders['think']}"])
    with start_in_thread(app) as running:
        wait_healthy(running.url)
        yield running


@pytest.fixture(scope="module")
def reference(folders):
    """transformers' model and tokenizer for each checkpoint: the reference computations."""
    import transformers

    return {key: (transformers.AutoModelForCausalLM.from_pretrained(folder).eval(),
                  transformers.AutoTokenizer.from_pretrained(folder)) for key, folder in folders.items()}


@pytest.fixture
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)


def greedy(ref, prompt_ids: list[int], new: int, top: int = 0):
    """transformers' greedy generation: the new ids, their log-probabilities (its
    compute_transition_scores, normalized) and the `top` best (ids, logprobs) per step."""
    model, tok = ref
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=new, output_scores=True, return_dict_in_generate=True,
                             pad_token_id=tok.eos_token_id)
        scores = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0].tolist()
        tops = [torch.log_softmax(s[0].float(), -1).topk(top) for s in out.scores] if top else []
    ids = out.sequences[0, len(prompt_ids):].tolist()
    return ids, scores, [(t.indices.tolist(), t.values.tolist()) for t in tops]


def sampled_logprobs(ref, prompt_ids: list[int], ids: list[int], temperature: float, top_k: int):
    """Each token's log-probability under the distribution sampling draws from (logits /
    temperature, then the top_k best kept), from transformers' model run on prompt + tokens; and
    whether each token was within that top_k."""
    model, _ = ref
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1:-1].float()
    scores = logits / temperature
    kth = scores.topk(top_k, dim=-1).values[:, -1:]
    scores = scores.masked_fill(scores < kth, float("-inf"))
    logp = torch.log_softmax(scores, -1)
    return [logp[t, i].item() for t, i in enumerate(ids)], [bool(scores[t, i] > float("-inf")) for t, i in enumerate(ids)]


def text_of_token(tok, token_id: int) -> str:
    """A token decoded alone, as transformers decodes it (no clean-up of spaces)."""
    return tok.decode([token_id], clean_up_tokenization_spaces=False)


def token_bytes(tok, token_id: int) -> list[int]:
    """A byte-level BPE token's bytes, from transformers' own byte alphabet."""
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    decoder = {c: b for b, c in bytes_to_unicode().items()}
    return [decoder[c] for c in tok.convert_ids_to_tokens(token_id)]


def close_all(got, expected, tol=1e-4) -> bool:
    return len(got) == len(expected) and all(math.isclose(a, b, abs_tol=tol) for a, b in zip(got, expected))


def test_chat_logprobs_plain_and_streamed_are_transformers_own(client, reference):
    _, tok = reference["gpt"]
    prompt_ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    ids, logprobs, tops = greedy(reference["gpt"], prompt_ids, 8, top=3)
    out = client.chat.completions.create(model="gpt", messages=CHAT, max_tokens=8, temperature=0, logprobs=True,
                                         top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert [c.token for c in content] == [text_of_token(tok, i) for i in ids]
    assert [c.bytes for c in content] == [token_bytes(tok, i) for i in ids]
    assert close_all([c.logprob for c in content], logprobs)
    for c, (top_ids, top_values) in zip(content, tops):
        assert [t.token for t in c.top_logprobs] == [text_of_token(tok, i) for i in top_ids]
        assert close_all([t.logprob for t in c.top_logprobs], top_values)
        assert [t.bytes for t in c.top_logprobs] == [token_bytes(tok, i) for i in top_ids]
    assert out.usage.completion_tokens == len(ids)

    plain = client.chat.completions.create(model="gpt", messages=CHAT, max_tokens=8, temperature=0)
    assert plain.choices[0].logprobs is None  # not asked, not sent

    chunks = list(client.chat.completions.create(model="gpt", messages=CHAT, max_tokens=8, temperature=0,
                                                 logprobs=True, top_logprobs=3, stream=True))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [c.token for c in content]
    assert close_all([t.logprob for t in streamed], logprobs)
    assert all(len(t.top_logprobs) == 3 for t in streamed)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == out.choices[0].message.content


def test_completion_logprobs_in_the_legacy_shape_plain_and_streamed(client, reference):
    _, tok = reference["gpt"]
    prompt_ids = tok(PROMPT)["input_ids"]
    ids, logprobs, tops = greedy(reference["gpt"], prompt_ids, 8, top=2)
    texts = [text_of_token(tok, i) for i in ids]
    offsets = [sum(len(t) for t in texts[:k]) for k in range(len(texts))]
    done = client.completions.create(model="gpt", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2)
    got = done.choices[0].logprobs
    assert got.tokens == texts and got.text_offset == offsets
    assert close_all(got.token_logprobs, logprobs)
    for alternatives, (top_ids, top_values) in zip(got.top_logprobs, tops):
        assert list(alternatives) == [text_of_token(tok, i) for i in top_ids]
        assert close_all(list(alternatives.values()), top_values)

    chunks = list(client.completions.create(model="gpt", prompt=PROMPT, max_tokens=8, temperature=0, logprobs=2,
                                            stream=True, stream_options={"include_usage": True}))
    parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert [t for p in parts for t in p.tokens] == texts
    assert [o for p in parts for o in p.text_offset] == offsets
    assert close_all([lp for p in parts for lp in p.token_logprobs], logprobs)
    assert chunks[-1].usage.completion_tokens == len(ids)  # counted from the ids
    assert "".join(c.choices[0].text for c in chunks if c.choices) == done.choices[0].text

    with pytest.raises(BadRequestError, match="echo") as err:  # no prompt log-probabilities
        client.completions.create(model="gpt", prompt=PROMPT, max_tokens=2, logprobs=1, echo=True)
    assert err.value.param == "echo"
    with pytest.raises(UnprocessableEntityError, match="logprobs must be an integer from 0 to 20"):
        client.completions.create(model="gpt", prompt=PROMPT, max_tokens=2, logprobs=21)


def test_sampled_logprobs_are_those_of_the_distribution_sampled_from(server, reference):
    """Sampling with temperature and top_k: each token's log-probability is under the
    distribution it was drawn from (logits / temperature, top_k kept), and top_n_tokens are
    that distribution's best."""
    from huggingface_hub import InferenceClient

    gen = InferenceClient(f"{server.url}/models/gpt")
    _, tok = reference["gpt"]
    prompt_ids = tok(PROMPT)["input_ids"]
    out = gen.text_generation(PROMPT, max_new_tokens=10, do_sample=True, temperature=0.7, top_k=10, seed=3,
                              details=True, top_n_tokens=3)
    tokens = out.details.tokens
    ids = [t.id for t in tokens]
    expected, inside = sampled_logprobs(reference["gpt"], prompt_ids, ids, 0.7, 10)
    assert all(inside)
    assert close_all([t.logprob for t in tokens], expected)
    assert [t.text for t in tokens] == [text_of_token(tok, i) for i in ids]
    assert [t.special for t in tokens] == [i in tok.all_special_ids for i in ids]
    assert out.details.generated_tokens == len(ids)
    model, _ = reference["gpt"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1:-1].float()
    for step, alternatives in enumerate(out.details.top_tokens):  # the client leaves them as dicts
        best = torch.log_softmax((logits[step] / 0.7).topk(10).values, -1)[:3]
        assert [a["id"] for a in alternatives] == (logits[step] / 0.7).topk(3).indices.tolist()
        assert close_all([a["logprob"] for a in alternatives], best.tolist())
    # the same seed gives the same tokens: the logprobs belong to the tokens the text is made of
    again = gen.text_generation(PROMPT, max_new_tokens=10, do_sample=True, temperature=0.7, top_k=10, seed=3)
    assert again == out.generated_text


def test_tgi_stream_sends_the_real_token_ids_and_logprobs(server, folders, reference):
    from huggingface_hub import InferenceClient

    _, tok = reference["gpt"]
    prompt_ids = tok(PROMPT)["input_ids"]
    ids, logprobs, _ = greedy(reference["gpt"], prompt_ids, 10)
    direct = pipeline("text-generation", model=folders["gpt"])
    pipeline_ids = direct(PROMPT, do_sample=False, max_new_tokens=10, return_tensors=True)[0]["generated_token_ids"]
    assert pipeline_ids.tolist()[len(prompt_ids):] == ids
    text = direct(PROMPT, do_sample=False, max_new_tokens=10, return_full_text=False)[0]["generated_text"]

    gen = InferenceClient(f"{server.url}/models/gpt")
    events = list(gen.text_generation(PROMPT, max_new_tokens=10, stream=True, details=True))
    assert [e.token.id for e in events] == ids
    assert close_all([e.token.logprob for e in events], logprobs)
    assert [e.index for e in events] == list(range(1, len(ids) + 1))
    assert "".join(e.token.text for e in events) == text == events[-1].generated_text
    last = events[-1].details
    assert (last.generated_tokens, last.finish_reason, last.input_length) == (len(ids), "length", len(prompt_ids))
    assert all(e.details is None and e.generated_text is None for e in events[:-1])

    details = gen.text_generation(PROMPT, max_new_tokens=10, details=True)
    assert [t.id for t in details.details.tokens] == ids
    assert close_all([t.logprob for t in details.details.tokens], logprobs)


def test_best_of_returns_the_samples_with_the_highest_mean_logprob(client, reference):
    """best_of=3 with n=1 (and n=2): of the three seeded samples (the same three n=3 gives), the
    ones whose tokens have the highest mean log-probability, computed here with transformers
    (the chat route's bytes name each token's id); completions choose by the same rule."""
    _, tok = reference["gpt"]
    prompt_ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    by_bytes = {tuple(token_bytes(tok, i)): i for i in range(len(tok))}
    body = {"model": "gpt", "messages": CHAT, "max_tokens": 6, "temperature": 1.0, "seed": 11}
    pool = client.chat.completions.create(**body, n=3, logprobs=True, extra_body={"top_k": 20})
    assert len({c.message.content for c in pool.choices}) > 1  # the samples differ: the choice matters
    means = []
    for choice in pool.choices:
        ids = [by_bytes[tuple(t.bytes)] for t in choice.logprobs.content]
        values, _ = sampled_logprobs(reference["gpt"], prompt_ids, ids, 1.0, 20)
        means.append(sum(values) / len(values))
    order = sorted(range(3), key=lambda k: -means[k])
    best = client.chat.completions.create(**body, n=1, extra_body={"top_k": 20, "best_of": 3})
    assert [c.message.content for c in best.choices] == [pool.choices[order[0]].message.content]
    assert best.usage.completion_tokens == pool.usage.completion_tokens  # every candidate was generated
    two = client.chat.completions.create(**body, n=2, extra_body={"top_k": 20, "best_of": 3})
    assert [c.message.content for c in two.choices] == [pool.choices[k].message.content for k in order[:2]]

    plain = {"model": "gpt", "prompt": PROMPT, "max_tokens": 6, "temperature": 1.0, "seed": 11}
    samples = client.completions.create(**plain, n=3, logprobs=0).choices
    assert len({c.text for c in samples}) > 1
    top = max(samples, key=lambda c: sum(c.logprobs.token_logprobs) / len(c.logprobs.token_logprobs))
    assert [c.text for c in client.completions.create(**plain, best_of=3).choices] == [top.text]

    with pytest.raises(UnprocessableEntityError, match="best_of must be at least n") as err:
        client.completions.create(**plain, n=3, best_of=2)
    assert err.value.param == "best_of"
    with pytest.raises(UnprocessableEntityError, match=r"best_of=9 .*--max-sequences"):
        client.completions.create(**plain, best_of=9)
    with pytest.raises(UnprocessableEntityError, match="best_of"):
        client.completions.create(**plain, best_of=2, stream=True)


def test_chat_template_kwargs_reach_the_template(server, client, folders, reference):
    """vLLM's chat_template_kwargs, sent as the openai client sends extra fields: the template
    renders with them (transformers' apply_chat_template with the same kwargs gives the prompt)."""
    model, tok = reference["think"]
    kwargs = {"enable_thinking": False}
    with_ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True, **kwargs)
    without_ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    assert len(with_ids) > len(without_ids)  # the template reads the variable
    ids, _, _ = greedy(reference["think"], with_ids, 6)
    expected = tok.decode(ids, skip_special_tokens=True)

    out = client.chat.completions.create(model="think", messages=CHAT, max_tokens=6, temperature=0,
                                         extra_body={"chat_template_kwargs": kwargs})
    assert out.usage.prompt_tokens == len(with_ids) and out.choices[0].message.content == expected
    plain = client.chat.completions.create(model="think", messages=CHAT, max_tokens=6, temperature=0)
    assert plain.usage.prompt_tokens == len(without_ids)
    named = OpenAI(base_url=f"{server.url}/models/think/v1", api_key="-", max_retries=0)
    chunks = list(named.chat.completions.create(model="x", messages=CHAT, max_tokens=6, temperature=0, stream=True,
                                                extra_body={"chat_template_kwargs": kwargs}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected

    for bad, match in [("x", "must be an object"), ({"add_generation_prompt": False}, "add_generation_prompt"),
                       ({"add_special_tokens": True}, "not a chat template variable"),
                       ({"v": "x" * 5000}, "longer than 4096")]:
        with pytest.raises(UnprocessableEntityError, match=match):
            client.chat.completions.create(model="think", messages=CHAT, max_tokens=2,
                                           extra_body={"chat_template_kwargs": bad})
    with pytest.raises(UnprocessableEntityError, match="applies to chat") as err:
        client.completions.create(model="think", prompt="x", max_tokens=2, extra_body={"chat_template_kwargs": kwargs})
    assert err.value.param == "chat_template_kwargs"


def test_concurrent_inference_client_chat_streams(server, folders):
    """Several InferenceClient.chat_completion(stream=True) clients at once on one engine: each
    gets the text the pipeline gives its chat alone, with its tokens' log-probabilities."""
    from huggingface_hub import InferenceClient

    direct = pipeline("text-generation", model=folders["gpt"])
    chats = [[{"role": "user", "content": text}] for text in ("Explain attention.", "What is a list?",
                                                                "Define a class.", "Why assert?")]
    expected = [direct(c, do_sample=False, max_new_tokens=12, return_full_text=False)[0]["generated_text"]
                for c in chats]

    def ask(chat):
        client = InferenceClient(f"{server.url}/models/gpt")
        text, tokens = "", 0
        for chunk in client.chat_completion(chat, max_tokens=12, temperature=0, stream=True, logprobs=True,
                                            top_logprobs=1):
            if chunk.choices and chunk.choices[0].delta.content:
                text += chunk.choices[0].delta.content
            if chunk.choices and chunk.choices[0].logprobs:
                tokens += len(chunk.choices[0].logprobs.content)
        return text, tokens

    with ThreadPoolExecutor(len(chats)) as pool:
        got = list(pool.map(ask, chats * 2))
    assert [text for text, _ in got] == expected * 2
    assert all(0 < tokens <= 12 for _, tokens in got)


def test_logprobs_and_top_n_tokens_are_bounded(server):
    def post(path, body):
        return httpx.post(server.url + path, json=body, timeout=30)

    chat = {"model": "gpt", "messages": CHAT, "max_tokens": 2}
    for body, param in [({**chat, "logprobs": True, "top_logprobs": -1}, "top_logprobs"),
                        ({**chat, "logprobs": 2}, "logprobs"),
                        ({**chat, "logprobs": True, "num_beams": 2}, "logprobs")]:
        r = post("/v1/chat/completions", body)
        assert r.status_code in (400, 422) and r.json()["error"]["param"] == param, r.text
    r = post("/models/gpt", {"inputs": "x", "parameters": {"top_n_tokens": 21, "max_new_tokens": 2}})
    assert r.status_code == 422 and "top_n_tokens" in r.json()["error"]
    ok = post("/models/gpt", {"inputs": "x", "parameters": {"top_n_tokens": 2, "max_new_tokens": 2, "details": True}})
    assert ok.status_code == 200 and all(len(t) == 2 for t in ok.json()[0]["details"]["top_tokens"])
