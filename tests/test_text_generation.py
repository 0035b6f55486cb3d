"""text-generation pipeline against transformers 4.57.6's, live, on tiny random GPT-2, Llama,
Mistral and Qwen2 checkpoints whose tokenizers follow the real ones' conventions (Llama 3's and
Mistral's add BOS in their post-processor, GPT-2's and Qwen2's add nothing): greedy, beams,
batches, prefixes, chat templates, lengths, streaming."""

import json

import pytest
import torch
import transformers

from compare import assert_same
from lightpipe import pipeline
from lightpipe.pipelines.text_generation import STREAM_CONTEXT
from tiny import CHATML, bpe_tokenizer, causal_lm_checkpoint, llama2_tokenizer, llama3_tokenizer, qwen2_tokenizer, sentences

pytestmark = pytest.mark.parity

PROMPTS = ["The assert statement", "Python lists are mutable sequences, typically used to store",
           "A class", "Ünïcödé café — naïve"]
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain attention in one sentence."}]


def gpt2_tokenizer(folder, chat_template=None):
    """GPT-2's: byte-level BPE, no BOS added; with a chat template, ChatML's tokens added."""
    tokenizer = bpe_tokenizer(folder, "gpt2")
    if chat_template:
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tokenizer.chat_template = chat_template
    return tokenizer


def decoder_checkpoint(folder, model_type, chat_template=None, **overrides):
    """A tiny GPT-2 tokenizer paired with a `model_type` decoder."""
    return causal_lm_checkpoint(folder, model_type, gpt2_tokenizer(folder, chat_template), **overrides)


# model type → a tokenizer shaped like that family's real ones (BOS: llama, mistral)
TOKENIZERS = {
    "gpt2": lambda folder: gpt2_tokenizer(folder, CHATML),
    "llama": llama3_tokenizer,   # byte-level BPE, <|begin_of_text|> $A, Llama 3's template
    "mistral": llama2_tokenizer,  # sentencepiece BPE, <s> $A, Mistral-Instruct's template
    "qwen2": qwen2_tokenizer,     # byte-level BPE, nothing added, ChatML
}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def folder(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    return causal_lm_checkpoint(path, request.param, TOKENIZERS[request.param](path))


def both(folder):
    return pipeline("text-generation", model=folder), transformers.pipeline("text-generation", model=str(folder))


@pytest.mark.parametrize("kwargs", [
    {"do_sample": False, "max_new_tokens": 12},
    {"do_sample": False, "max_new_tokens": 10, "num_beams": 3, "num_return_sequences": 2},
    {"do_sample": False, "max_new_tokens": 10, "return_full_text": False},
    {"do_sample": False, "max_new_tokens": 8, "return_tensors": True},
    {"do_sample": False, "max_new_tokens": 10, "repetition_penalty": 1.3, "no_repeat_ngram_size": 2},
])
def test_matches_transformers(folder, kwargs):
    ours, theirs = both(folder)
    assert_same(ours(PROMPTS, **kwargs), theirs(PROMPTS, **kwargs))
    assert_same(ours(PROMPTS[1], **kwargs), theirs(PROMPTS[1], **kwargs))


def test_chat_matches_transformers(folder):
    ours, theirs = both(folder)
    assert_same(ours(CHAT, do_sample=False, max_new_tokens=8), theirs(CHAT, do_sample=False, max_new_tokens=8))
    chats = [CHAT, CHAT[1:]]
    assert_same(ours(chats, do_sample=False, max_new_tokens=6), theirs(chats, do_sample=False, max_new_tokens=6))
    prefill = CHAT + [{"role": "assistant", "content": "Attention is"}]
    assert_same(ours(prefill, do_sample=False, max_new_tokens=5), theirs(prefill, do_sample=False, max_new_tokens=5))


@pytest.mark.parametrize("kwargs", [
    {"do_sample": False, "max_new_tokens": 8, "prefix": "In Python, "},
    {"do_sample": False, "max_new_tokens": 8, "prefix": "In Python, ", "return_full_text": False},
    {"do_sample": False, "max_new_tokens": 6, "prefix": "In Python, ", "num_beams": 3, "num_return_sequences": 2},
    {"do_sample": False, "max_new_tokens": 8, "add_special_tokens": False},
    {"do_sample": False, "max_new_tokens": 6, "add_special_tokens": False, "return_tensors": True},
    {"do_sample": False, "max_new_tokens": 6, "add_special_tokens": False, "num_beams": 3},
    {"do_sample": False, "max_new_tokens": 6, "add_special_tokens": True, "prefix": "In Python, "},
    {"do_sample": False, "max_new_tokens": 8, "stop_sequence": " the"},
])
def test_prompt_encoding_matches_transformers(folder, kwargs):
    """The prompt as transformers' pipeline tokenizes it: the tokenizer's own special tokens unless
    add_special_tokens says otherwise, after the prefix (which the output leaves out)."""
    ours, theirs = both(folder)
    assert_same(ours(PROMPTS, **kwargs), theirs(PROMPTS, **kwargs))
    assert_same(ours(PROMPTS[1], **kwargs), theirs(PROMPTS[1], **kwargs))


def test_prompt_starts_with_the_tokenizers_bos(folder):
    """Llama- and Mistral-style tokenizers add BOS; GPT-2 and Qwen2 add nothing. The returned ids
    hold what the model saw, and add_special_tokens=False takes BOS away."""
    ours, theirs = both(folder)
    adds_bos = folder.name.startswith(("llama", "mistral"))
    expected = theirs.tokenizer(PROMPTS[0])["input_ids"]
    assert (expected[0] == theirs.tokenizer.bos_token_id) == adds_bos
    ids = ours(PROMPTS[0], do_sample=False, max_new_tokens=4, return_tensors=True)[0]["generated_token_ids"].tolist()
    assert ids[:len(expected)] == expected
    bare = ours(PROMPTS[0], do_sample=False, max_new_tokens=4, return_tensors=True, add_special_tokens=False)
    assert bare[0]["generated_token_ids"][:len(expected) - adds_bos].tolist() == expected[adds_bos:]


def test_empty_prompt_starts_from_bos_as_in_transformers(folder):
    """An empty prompt is the tokenizer's BOS where it adds one, else the model's bos_token_id
    (which transformers then returns as part of the generated ids)."""
    ours, theirs = both(folder)
    for kwargs in ({"return_tensors": True}, {}, {"skip_special_tokens": False}):
        kwargs.update(do_sample=False, max_new_tokens=5)
        assert_same(ours(["", PROMPTS[2]], **kwargs), theirs(["", PROMPTS[2]], **kwargs))
    assert "".join(ours.stream("", do_sample=False, max_new_tokens=5)) == \
        theirs("", do_sample=False, max_new_tokens=5, return_full_text=False)[0]["generated_text"]


def test_prefix_is_left_out_of_max_length(folder):
    """transformers counts max_length (and min_length) without the prefix. Called the documented
    way (no injected max_new_tokens), it matches lightpipe's honoured max_length."""
    ours, theirs = both(folder)
    theirs.generation_config.max_new_tokens = None
    prefix = "In Python, "
    prompt_len = len(theirs.tokenizer(prefix + PROMPTS[0])["input_ids"])
    prefix_len = len(theirs.tokenizer(prefix, add_special_tokens=False)["input_ids"])
    assert prefix_len >= 3
    # (a max_length under the prompt's length makes transformers cut the prompt: not this test)
    kwargs = {"do_sample": False, "max_length": prompt_len + 2, "prefix": prefix, "return_tensors": True}
    got = ours(PROMPTS[0], **kwargs)
    assert_same(got, theirs(PROMPTS[0], **kwargs))
    assert len(got[0]["generated_token_ids"]) == prompt_len + 2 + prefix_len
    # min_length: the first token the model produces is made the end; counting min_length without
    # the prefix holds generation past it for 3 tokens, counting with it would stop at once
    first = ours(PROMPTS[0], do_sample=False, max_new_tokens=1, prefix=prefix,
                 return_tensors=True)[0]["generated_token_ids"][prompt_len]
    kwargs = {"do_sample": False, "max_new_tokens": 6, "prefix": prefix, "return_tensors": True,
              "eos_token_id": first, "min_length": prompt_len + 3 - prefix_len}
    got = ours(PROMPTS[0], **kwargs)
    assert_same(got, theirs(PROMPTS[0], **kwargs))
    assert len(got[0]["generated_token_ids"]) >= prompt_len + 3


def test_chat_is_tokenized_by_its_template_only(folder):
    """A chat is its rendered template (which writes BOS itself) and nothing more, whatever
    add_special_tokens says; a prefill ending in a space is cut where transformers cuts it (the
    templates here trim messages)."""
    ours, theirs = both(folder)
    kwargs = {"do_sample": False, "max_new_tokens": 6}
    for options in ({"add_special_tokens": True}, {"add_special_tokens": False}, {"return_tensors": True}):
        assert_same(ours(CHAT, **kwargs, **options), theirs(CHAT, **kwargs, **options))
    ids = ours(CHAT, **kwargs, return_tensors=True)[0]["generated_token_ids"].tolist()
    expected = theirs.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    assert ids[:len(expected)] == expected
    bos = theirs.tokenizer.bos_token_id
    assert bos is None or ids[:2].count(bos) <= 1  # never a second BOS before the template's
    prefill = CHAT + [{"role": "assistant", "content": "Attention is "}]
    assert_same(ours(prefill, **kwargs), theirs(prefill, **kwargs))
    assert_same(ours(prefill, **kwargs, continue_final_message=True), theirs(prefill, **kwargs, continue_final_message=True))
    assert_same(ours(CHAT, **kwargs, continue_final_message=False), theirs(CHAT, **kwargs, continue_final_message=False))


def test_caller_max_length_is_honoured(folder):
    """transformers 4.57.6 lets its injected max_new_tokens=256 beat a caller's max_length (a bug);
    lightpipe honours max_length, which equals transformers told to drop max_new_tokens."""
    ours, theirs = both(folder)
    got = ours(PROMPTS[0], do_sample=False, max_length=20, return_tensors=True)
    assert len(got[0]["generated_token_ids"]) <= 20
    assert_same(got, theirs(PROMPTS[0], do_sample=False, max_length=20, max_new_tokens=None, return_tensors=True))


def test_pipeline_defaults_match_transformers(tmp_path):
    folder = decoder_checkpoint(tmp_path, "gpt2")
    ours, theirs = both(folder)
    for key in ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p"):
        assert getattr(ours.generation, key) == getattr(theirs.generation_config, key), key
    assert (ours.generation.max_length or 20) == theirs.generation_config.max_length  # None: the global 20


def test_task_specific_params_length_wins_over_the_pipeline_default(tmp_path):
    """GPT-2's config says task_specific_params["text-generation"] = {do_sample, max_length: 50}:
    documented as taking precedence, so lightpipe generates up to 50 tokens, not 256."""
    folder = decoder_checkpoint(tmp_path, "gpt2", task_specific_params={"text-generation": {"do_sample": True, "max_length": 50}})
    ours = pipeline("text-generation", model=folder)
    assert ours.generation.max_length == 50 and ours.generation.max_new_tokens is None and ours.generation.do_sample
    out = ours(PROMPTS[0], seed=0, return_tensors=True)[0]["generated_token_ids"]
    assert len(out) <= 50


def test_sampling_is_deterministic_under_a_seed(folder):
    ours = pipeline("text-generation", model=folder)
    first = ours(PROMPTS, do_sample=True, seed=7, max_new_tokens=10)
    assert ours(PROMPTS, do_sample=True, seed=7, max_new_tokens=10) == first
    greedy = ours(PROMPTS, do_sample=False, max_new_tokens=10)
    assert ours(PROMPTS, do_sample=True, top_k=1, seed=3, max_new_tokens=10) == greedy


def test_stop_string_ends_the_text_at_the_stop(folder):
    ours = pipeline("text-generation", model=folder)
    full = ours(PROMPTS[0], do_sample=False, max_new_tokens=20, return_full_text=False)[0]["generated_text"]
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), "greedy text too short to pick a stop string"
    cut = ours(PROMPTS[0], do_sample=False, max_new_tokens=20, return_full_text=False, stop=stop)[0]["generated_text"]
    assert stop in cut and full.startswith(cut[: cut.index(stop)]) and len(cut) < len(full)


def test_stream_yields_the_same_text(folder):
    ours = pipeline("text-generation", model=folder)
    pieces = list(ours.stream(PROMPTS[3], do_sample=False, max_new_tokens=15))
    assert len(pieces) > 1
    whole = ours(PROMPTS[3], do_sample=False, max_new_tokens=15, return_full_text=False)[0]["generated_text"]
    assert "".join(pieces) == whole
    assert "".join(ours.stream(CHAT, do_sample=False, max_new_tokens=6)) == \
        ours(CHAT, do_sample=False, max_new_tokens=6, return_full_text=False)[0]["generated_text"]
    long = " ".join(" ".join(sentences(6, start=40)).split()[:28])  # more than the stream's decoding context
    assert len(ours.tokenizer.encode(long).ids) > 2 * STREAM_CONTEXT
    assert "".join(ours.stream(long, do_sample=False, max_new_tokens=12)) == \
        ours(long, do_sample=False, max_new_tokens=12, return_full_text=False)[0]["generated_text"]


def test_stream_runs_on_the_callers_thread_and_closing_it_stops_generation(tmp_path):
    """No thread, no queue: each piece costs the forward passes that made it, and a consumer
    that stops reading stops the compute at once."""
    import threading

    ours = pipeline("text-generation", model=causal_lm_checkpoint(tmp_path, "gpt2", gpt2_tokenizer(tmp_path)))
    passes, threads = [], []

    def count(*_):
        passes.append(1)
        threads.append(threading.get_ident())

    hook = ours.model.register_forward_hook(count)
    try:
        stream = ours.stream(PROMPTS[1], do_sample=False, max_new_tokens=40, eos_token_id=-1)
        before = threading.active_count()
        pieces = [next(stream) for _ in range(3)]
        assert threading.active_count() == before and set(threads) == {threading.get_ident()}
        made = len(passes)
        stream.close()
        assert len(passes) == made and made < 40 and pieces
    finally:
        hook.remove()


def test_a_prompt_larger_than_the_kv_budget_still_runs(tmp_path, monkeypatch):
    """The pipeline's engine runs a prompt larger than its KV budget alone (the budget decides
    what runs together, not whether a prompt can run); the results are the same."""
    import lightpipe.pipelines.generative as generative

    ours = pipeline("text-generation", model=causal_lm_checkpoint(tmp_path, "gpt2", gpt2_tokenizer(tmp_path)))
    options = dict(do_sample=False, max_new_tokens=10, return_full_text=False)
    roomy = ours(PROMPTS, **options)
    monkeypatch.setattr(generative, "KV_BUDGET_TOKENS", 12)  # smaller than any prompt + 10 new tokens
    assert ours(PROMPTS, **options) == roomy
    assert "".join(ours.stream(PROMPTS[1], do_sample=False, max_new_tokens=10)) == roomy[1][0]["generated_text"]


def test_stream_follows_the_prompt_options(folder):
    """stream() encodes the prompt as the call does (prefix, add_special_tokens)."""
    ours = pipeline("text-generation", model=folder)
    for options in ({"prefix": "In Python, "}, {"add_special_tokens": False}):
        pieces = list(ours.stream(PROMPTS[0], do_sample=False, max_new_tokens=8, **options))
        whole = ours(PROMPTS[0], do_sample=False, max_new_tokens=8, return_full_text=False, **options)
        assert "".join(pieces) == whole[0]["generated_text"]


def streamed(pipe, prompt: list[int], new: list[int]) -> tuple[list[str], str]:
    """The pieces stream() makes of `new` arriving one token at a time after `prompt`, and the
    text the call returns for them (return_full_text=False)."""
    decoder = pipe.piece_decoder(prompt, {})
    pieces = [piece for token in new for piece in decoder.push(token)] + decoder.end()
    decode = pipe.text_decoder()
    return pieces, decode(prompt + new)[len(decode(prompt)):]


@pytest.mark.parametrize("text", [
    "Hello , world . I do n't know ' s it 's fine ! Is it ? They 're here , we 've seen ' em .",
    "a  ' s  b  .  c n't d  ' ' e 're f ' 'm g , , h !",
])
def test_streamed_pieces_are_final_despite_space_cleanup(tmp_path, text):
    """clean_up_tokenization_spaces removes a space once the next token arrives (" ." → "."):
    pieces hold such a space back, so what was sent never changes and pieces join to the text."""
    ours = pipeline("text-generation", model=decoder_checkpoint(tmp_path, "gpt2"))
    ids = ours.tokenizer.encode(text, add_special_tokens=False).ids
    before = ours.tokenizer.encode(" ".join(sentences(4)) + " ", add_special_tokens=False).ids
    assert len(before) > STREAM_CONTEXT
    for prompt, new in ((ids[:1], ids[1:]), (ids[:5], ids[5:]), (before + ids[:3], ids[3:])):
        pieces, whole = streamed(ours, prompt, new)
        assert "".join(pieces) == whole and len(pieces) > 3


def test_streamed_pieces_are_final_across_byte_fallback_runs(tmp_path):
    """Sentencepiece byte-fallback tokens decode as one group: "<0x32>" alone is "2", followed by
    "<0x82><0xAC>" the group is invalid UTF-8 and all three are "�". Pieces wait for a run to end."""
    ours = pipeline("text-generation", model=causal_lm_checkpoint(tmp_path, "llama", llama2_tokenizer(tmp_path)))
    byte = {b: ours.tokenizer.token_to_id(f"<0x{b:02X}>") for b in range(256)}
    words = ours.tokenizer.encode("the attribute of an object", add_special_tokens=False).ids
    prompt = ours.tokenizer.encode(PROMPTS[0]).ids
    new = [words[1], byte[0x32], byte[0x82], byte[0xAC], words[2], byte[0xE2], byte[0x82], byte[0xAC], words[3],
           byte[0xC3], byte[0xA9], words[4], byte[0x41], byte[0xE2]]
    pieces, whole = streamed(ours, prompt, new)
    assert "\ufffd" in whole and "€" in whole and "é" in whole
    assert "".join(pieces) == whole and len(pieces) > 3
    run = [byte[b] for b in "€ü€ü€ü€ü€ü€ü€ü€ü€ü".encode()]  # a byte run longer than the stream's context
    assert len(run) > STREAM_CONTEXT
    for prompt_run, new in ((run[:-1], run[-1:] + words[1:3]), (run, words[1:3]), (run[:-3], run[-3:] + words[1:3])):
        pieces, whole = streamed(ours, words[:1] + prompt_run, new)
        assert "".join(pieces) == whole
    g = torch.Generator().manual_seed(0)  # and runs a random model might make, after long prompts too
    pool = words + list(byte.values())
    for _ in range(6):
        ids = [pool[i] for i in torch.randint(len(pool), (30 + STREAM_CONTEXT,), generator=g).tolist()]
        for prompt, new in ((prompt, ids[:30]), (ids[:-30], ids[-30:])):
            pieces, whole = streamed(ours, prompt, new)
            assert "".join(pieces) == whole


def test_tokenizer_config_add_bos_token_wins_as_in_transformers(tmp_path):
    """Llama's tokenizer class rebuilds tokenizer.json's post-processor from tokenizer_config's
    add_bos_token / add_eos_token when it loads; a checkpoint whose two files disagree gets
    transformers' tokens."""
    import json

    llama2_tokenizer(tmp_path)
    causal_lm_checkpoint(tmp_path, "llama", transformers.AutoTokenizer.from_pretrained(tmp_path))
    path = tmp_path / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.update(add_bos_token=False, add_eos_token=True)
    path.write_text(json.dumps(config))
    ours, theirs = both(tmp_path)
    assert ours.tokenizer.encode(PROMPTS[0]).ids == theirs.tokenizer(PROMPTS[0])["input_ids"]
    assert theirs.tokenizer(PROMPTS[0])["input_ids"][-1] == theirs.tokenizer.eos_token_id
    kwargs = {"do_sample": False, "max_new_tokens": 6, "return_tensors": True}
    assert_same(ours(PROMPTS[:2], **kwargs), theirs(PROMPTS[:2], **kwargs))


def test_template_without_the_tokenizers_bos_renders_nothing_for_it(tmp_path):
    """Qwen2 has no BOS: a template writing {{ bos_token }} gets nothing there, as in transformers."""
    from tiny import QWEN2_TEMPLATE

    tokenizer = qwen2_tokenizer(tmp_path, chat_template="{{ bos_token }}" + QWEN2_TEMPLATE)
    ours, theirs = both(causal_lm_checkpoint(tmp_path, "qwen2", tokenizer))
    assert_same(ours(CHAT, do_sample=False, max_new_tokens=6, return_tensors=True),
                theirs(CHAT, do_sample=False, max_new_tokens=6, return_tensors=True))


def test_continuing_a_message_the_template_drops_is_an_error():
    from lightpipe.tokenization.chat import render_chat

    drops = "{% for m in messages %}{{ m['role'] }}: {{ m['content'][:3] }}\n{% endfor %}"
    prefill = CHAT + [{"role": "assistant", "content": "Attention is"}]
    with pytest.raises(ValueError, match="final message does not appear"):
        render_chat(drops, prefill, add_generation_prompt=False, continue_final_message=True)
    with pytest.raises(ValueError, match="add_generation_prompt"):
        render_chat(drops, prefill, add_generation_prompt=True, continue_final_message=True)


def test_errors(tmp_path, folder):
    ours = pipeline("text-generation", model=folder)
    with pytest.raises(ValueError, match="temperature"):
        ours(PROMPTS[0], do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        ours(PROMPTS[0], do_sample=True, top_p=1.5)
    with pytest.raises(ValueError, match="num_return_sequences"):
        ours(PROMPTS[0], num_beams=2, num_return_sequences=3, do_sample=False)
    with pytest.raises(ValueError, match="unknown generation argument"):
        ours(PROMPTS[0], max_new_tokenz=3)
    with pytest.raises(ValueError, match="no room to generate|nothing left to generate"):
        ours(" ".join(["word"] * 200), max_new_tokens=3)
    plain = pipeline("text-generation", model=decoder_checkpoint(tmp_path, "gpt2"))
    with pytest.raises(ValueError, match="chat_template"):
        plain(CHAT)


def test_cli_streams_one_prompt_and_prints_json_on_request(folder, capsys):
    from lightpipe.cli import main

    assert main(["run", "text-generation", PROMPTS[0], "--model", str(folder), "--max-new-tokens", "8",
                 "--option", "do_sample=false"]) == 0
    streamed = capsys.readouterr().out
    expected = pipeline("text-generation", model=folder)(PROMPTS[0], do_sample=False, max_new_tokens=8)
    assert streamed == expected[0]["generated_text"] + "\n"
    assert main(["run", "text-generation", PROMPTS[0], "--model", str(folder), "--max-new-tokens", "8",
                 "--option", "do_sample=false", "--json"]) == 0
    import json

    assert json.loads(capsys.readouterr().out) == expected


def test_generator_of_prompts_streams_results_in_order(folder):
    ours = pipeline("text-generation", model=folder)
    results = ours((p for p in PROMPTS), do_sample=False, max_new_tokens=6)
    assert not isinstance(results, list)
    assert list(results) == ours(PROMPTS, do_sample=False, max_new_tokens=6)


@pytest.mark.server
def test_server_routes_encode_prompts_as_transformers(tmp_path):
    """The OpenAI and HF routes (and their streams) run the pipeline's prompt encoding, so a
    Mistral-style checkpoint (BOS added, sentencepiece) answers what transformers' pipeline
    answers; usage counts the prompt as the model got it (template, BOS)."""
    import httpx
    from openai import OpenAI

    from lightpipe.server import create_app, start_in_thread
    from test_server import wait_healthy

    folder = causal_lm_checkpoint(tmp_path, "mistral", llama2_tokenizer(tmp_path))
    theirs = transformers.pipeline("text-generation", model=str(folder))
    greedy = {"do_sample": False, "max_new_tokens": 8, "return_full_text": False}
    prompt, expected = PROMPTS[1], theirs(PROMPTS[1], **greedy)[0]["generated_text"]
    chat_expected = theirs(CHAT, **greedy)[0]["generated_text"]
    prompt_tokens = len(theirs.tokenizer(prompt)["input_ids"])
    chat_tokens = len(theirs.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True))
    with start_in_thread(create_app([f"mistral=text-generation={folder}"])) as running:
        wait_healthy(running.url)
        client = OpenAI(base_url=running.url + "/v1", api_key="-")
        done = client.completions.create(model="mistral", prompt=prompt, max_tokens=8, temperature=0)
        assert done.choices[0].text == expected and done.usage.prompt_tokens == prompt_tokens
        chunks = list(client.completions.create(model="mistral", prompt=prompt, max_tokens=8, temperature=0,
                                                stream=True, stream_options={"include_usage": True}))
        assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
        assert chunks[-1].usage.prompt_tokens == prompt_tokens
        out = client.chat.completions.create(model="mistral", messages=CHAT, max_tokens=8, temperature=0)
        assert out.choices[0].message.content == chat_expected and out.usage.prompt_tokens == chat_tokens
        chunks = list(client.chat.completions.create(model="mistral", messages=CHAT, max_tokens=8, temperature=0,
                                                     stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == chat_expected
        hf = httpx.post(running.url + "/", json={"inputs": prompt, "parameters": {"max_new_tokens": 8}}, timeout=60)
        assert hf.json() == [{"generated_text": expected}]
        bare = {"max_new_tokens": 8, "add_special_tokens": False}
        hf = httpx.post(running.url + "/", json={"inputs": prompt, "parameters": bare}, timeout=60)
        assert hf.json() == [{"generated_text": theirs(prompt, **greedy, add_special_tokens=False)[0]["generated_text"]}]
        streamed = httpx.post(running.url + "/", json={"inputs": prompt, "parameters": {"max_new_tokens": 8},
                                                       "stream": True}, timeout=60).text
        events = [json.loads(line[5:]) for line in streamed.splitlines() if line.startswith("data:")]
        assert events[-1]["generated_text"] == expected


def test_a_length_whose_cache_cannot_fit_is_a_value_error(tmp_path):
    """max_new_tokens far past the free memory is refused before the engine reserves its cache
    (llama: no learned position table to stop it); a modest length still generates."""
    folder = decoder_checkpoint(tmp_path, "llama")
    ours = pipeline("text-generation", model=folder)
    with pytest.raises(ValueError, match="max_new_tokens=1000000000000 needs about .* GiB"):
        ours(PROMPTS[0], do_sample=False, max_new_tokens=10**12)
    with pytest.raises(ValueError, match="max_new_tokens"):
        list(ours.stream(PROMPTS[0], do_sample=False, max_new_tokens=10**12))
    assert ours(PROMPTS[0], do_sample=False, max_new_tokens=3)[0]["generated_text"].startswith(PROMPTS[0])
