"""The issue-14 decoders through the pipelines, against transformers 4.57.6's text-generation
pipeline and sentence-transformers, live: tiny random Qwen3, Gemma 2, Gemma 3 and Phi-3
checkpoints with tokenizers shaped like the real ones (Gemma's post-processor adds <bos>;
Qwen3's and Phi-3.5's add nothing) and their chat templates (Qwen3's with enable_thinking,
Gemma's <start_of_turn> turns, Phi-3's <|user|> ... <|end|>), generation_config eos lists as the
Hub's; Qwen3-Embedding (last-token pooling over an appended <|endoftext|>, left padding) and
EmbeddingGemma (bidirectional, mean pooling, two Dense) as sentence-transformers runs them; and
each family in a fresh process without transformers."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest
import torch
import transformers

from compare import assert_same
from lightpipe import pipeline
from tiny import (GEMMA2_TEMPLATE, causal_lm_checkpoint, gemma_tokenizer, perturb_norms, phi3_tokenizer,
                  qwen3_tokenizer, save_checkpoint, write_generation_config)

pytestmark = pytest.mark.parity

transformers.logging.set_verbosity_error()

PROMPTS = ["The assert statement", "Python lists are mutable sequences, typically used to store",
           "A class", "Ünïcödé café — naïve"]
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Explain attention in one sentence."}]
NO_SYSTEM = CHAT[1:]  # Gemma 2's template refuses a system message

# model type → (its tokenizer, the eos ids its generation_config.json lists, by token)
FAMILIES = {
    "qwen3": (qwen3_tokenizer, ["<|im_end|>", "<|endoftext|>"]),
    "gemma2": (lambda folder: gemma_tokenizer(folder, chat_template=GEMMA2_TEMPLATE), ["<eos>", "<end_of_turn>"]),
    "gemma3_text": (gemma_tokenizer, ["<eos>", "<end_of_turn>"]),
    "phi3": (phi3_tokenizer, ["<|end|>", "<|assistant|>", "<|endoftext|>"]),
}


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' and sentence-transformers' chatter
        yield


def family_checkpoint(folder: Path, model_type: str) -> Path:
    make_tokenizer, eos = FAMILIES[model_type]
    tokenizer = make_tokenizer(folder)
    causal_lm_checkpoint(folder, model_type, tokenizer)
    write_generation_config(folder, eos_token_id=tokenizer.convert_tokens_to_ids(eos))
    return folder


@pytest.fixture(scope="module", params=list(FAMILIES))
def folder(request, tmp_path_factory):
    return family_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


def model_type(folder) -> str:
    return json.loads((Path(folder) / "config.json").read_text())["model_type"]


def both(folder):
    # Gemma 2's soft-capping needs transformers' eager attention (its default SDPA skips it)
    kwargs = {"model_kwargs": {"attn_implementation": "eager"}} if model_type(folder) == "gemma2" else {}
    return pipeline("text-generation", model=folder), transformers.pipeline("text-generation", model=str(folder), **kwargs)


def chat_for(folder):
    return NO_SYSTEM if model_type(folder) == "gemma2" else CHAT


@pytest.mark.parametrize("kwargs", [
    {"do_sample": False, "max_new_tokens": 12},
    {"do_sample": False, "max_new_tokens": 10, "num_beams": 3, "num_return_sequences": 2},
    {"do_sample": False, "max_new_tokens": 10, "return_full_text": False, "repetition_penalty": 1.3},
    {"do_sample": False, "max_new_tokens": 8, "return_tensors": True},
    {"do_sample": False, "max_new_tokens": 8, "add_special_tokens": False},
])
def test_matches_transformers(folder, kwargs):
    ours, theirs = both(folder)
    assert_same(ours(PROMPTS, **kwargs), theirs(PROMPTS, **kwargs))


def test_chat_matches_transformers(folder):
    ours, theirs = both(folder)
    chat = chat_for(folder)
    kwargs = {"do_sample": False, "max_new_tokens": 10}
    assert_same(ours(chat, **kwargs), theirs(chat, **kwargs))
    assert_same(ours([chat, NO_SYSTEM], **kwargs), theirs([chat, NO_SYSTEM], **kwargs))
    turns = chat + [{"role": "assistant", "content": "Weights over tokens."}, {"role": "user", "content": "Shorter?"}]
    assert_same(ours(turns, **kwargs), theirs(turns, **kwargs))
    prefill = chat + [{"role": "assistant", "content": "Attention is"}]
    assert_same(ours(prefill, **kwargs), theirs(prefill, **kwargs))
    assert_same(ours(chat, return_tensors=True, **kwargs), theirs(chat, return_tensors=True, **kwargs))


def test_prompt_and_chat_tokens_follow_the_real_tokenizers(folder):
    """Gemma's tokenizer adds <bos> to a prompt (add_special_tokens=False takes it away); Qwen3's
    and Phi-3.5's add nothing. A chat is its template's tokens alone: Gemma's template writes
    the one <bos>, the others none."""
    ours, theirs = both(folder)
    gemma = model_type(folder).startswith("gemma")
    greedy = {"do_sample": False, "max_new_tokens": 4, "return_tensors": True}
    ids = ours(PROMPTS[0], **greedy)[0]["generated_token_ids"].tolist()
    expected = theirs.tokenizer(PROMPTS[0])["input_ids"]
    assert ids[:len(expected)] == expected and (expected[0] == theirs.tokenizer.bos_token_id) == gemma
    bare = ours(PROMPTS[0], add_special_tokens=False, **greedy)[0]["generated_token_ids"].tolist()
    assert bare[:len(expected) - gemma] == expected[gemma:]
    chat = chat_for(folder)
    ids = ours(chat, **greedy)[0]["generated_token_ids"].tolist()
    rendered = theirs.tokenizer.apply_chat_template(chat, add_generation_prompt=True)
    assert ids[:len(rendered)] == rendered
    assert ids.count(theirs.tokenizer.bos_token_id) == (1 if gemma else 0)


def test_seeded_sampling_alone_and_in_a_batch(folder):
    """Each prompt's sampled text depends on its seed, not on the prompts generated beside it."""
    ours = pipeline("text-generation", model=folder)
    kwargs = {"do_sample": True, "seed": 7, "max_new_tokens": 10, "temperature": 0.9}
    together = ours(PROMPTS, **kwargs)
    assert together == [ours(p, **kwargs) for p in PROMPTS]
    assert together != ours(PROMPTS, **{**kwargs, "seed": 8})


def test_stream_yields_the_call_text(folder):
    ours = pipeline("text-generation", model=folder)
    chat = chat_for(folder)
    for prompt in (PROMPTS[3], chat):
        whole = ours(prompt, do_sample=False, max_new_tokens=12, return_full_text=False)[0]["generated_text"]
        assert "".join(ours.stream(prompt, do_sample=False, max_new_tokens=12)) == whole


def test_gemma2_template_refuses_a_system_message(tmp_path):
    ours, theirs = both(family_checkpoint(tmp_path, "gemma2"))
    with pytest.raises(ValueError, match="System role not supported"):
        ours(CHAT, max_new_tokens=3)
    with pytest.raises(Exception, match="System role not supported"):
        theirs(CHAT, max_new_tokens=3)


# -- Qwen3's thinking switch ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    return family_checkpoint(tmp_path_factory.mktemp("qwen3-thinking"), "qwen3")


def test_qwen3_enable_thinking(qwen3):
    """tokenizer_encode_kwargs={"enable_thinking": False} reaches the template (transformers'
    pipeline keyword), which pre-fills an empty <think></think>; reasoning in earlier turns is
    dropped and kept after the last query, as the template says."""
    ours, theirs = both(qwen3)
    kwargs = {"do_sample": False, "max_new_tokens": 10}
    off = {"tokenizer_encode_kwargs": {"enable_thinking": False}}
    assert_same(ours(CHAT, **kwargs, **off), theirs(CHAT, **kwargs, **off))
    assert_same(ours(CHAT, **kwargs), theirs(CHAT, **kwargs))
    ids = ours(CHAT, return_tensors=True, **kwargs, **off)[0]["generated_token_ids"].tolist()
    thinking_off = theirs.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, enable_thinking=False)
    assert ids[:len(thinking_off)] == thinking_off
    assert "<think>\n\n</think>" in theirs.tokenizer.decode(thinking_off)
    assert thinking_off != theirs.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True)
    history = CHAT + [{"role": "assistant", "content": "<think>\nrecall the paper\n</think>\n\nWeights."},
                      {"role": "user", "content": "Shorter?"}]
    assert_same(ours(history, **kwargs, **off), theirs(history, **kwargs, **off))
    prefill = CHAT + [{"role": "assistant", "content": "<think>\nhm\n</think>\n\nAttention"}]
    assert_same(ours(prefill, **kwargs), theirs(prefill, **kwargs))
    assert "".join(ours.stream(CHAT, **kwargs, **off)) == \
        ours(CHAT, return_full_text=False, **kwargs, **off)[0]["generated_text"]


def test_tokenizer_encode_kwargs_errors(qwen3):
    ours = pipeline("text-generation", model=qwen3)
    with pytest.raises(ValueError, match=r"\['enable_thinking'\] are chat template variables.*inputs\[0\]"):
        ours(PROMPTS[0], tokenizer_encode_kwargs={"enable_thinking": False})
    with pytest.raises(ValueError, match=r"can't set \['add_generation_prompt', 'tools'\]"):
        ours(CHAT, tokenizer_encode_kwargs={"tools": [], "add_generation_prompt": False})
    with pytest.raises(TypeError, match="tokenizer_encode_kwargs must be a dict"):
        ours(CHAT, tokenizer_encode_kwargs=["enable_thinking"])
    # add_special_tokens there wins over the keyword for prompt strings, as in transformers
    greedy = {"do_sample": False, "max_new_tokens": 3}
    assert ours(PROMPTS[0], tokenizer_encode_kwargs={"add_special_tokens": False}, add_special_tokens=True,
                **greedy) == ours(PROMPTS[0], add_special_tokens=False, **greedy)


# -- embeddings: Qwen3-Embedding and EmbeddingGemma as sentence-transformers runs them ----------

EMBED_TEXTS = ["The assert statement is a convenient way to insert debugging assertions into a program.",
               "Python lists are mutable sequences.", "A class", "Ünïcödé café — naïve",
               "Built-in functions and exceptions, described at length in the library reference, with examples."]
QWEN3_PROMPTS = {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
                 "document": ""}
EMBEDDINGGEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


def embedding_base(folder: Path, model_type: str) -> Path:
    """A tiny random base model (AutoModel) with its embedding tokenizer."""
    if model_type == "qwen3":
        tokenizer = qwen3_tokenizer(folder, chat_template=None, embedding=True)
        kw = dict(head_dim=8)
    else:  # EmbeddingGemma: bidirectional Gemma 3, <bos> ... <eos>
        tokenizer = gemma_tokenizer(folder, chat_template=None, add_eos_token=True)
        kw = dict(head_dim=8, query_pre_attn_scalar=12, sliding_window=6, sliding_window_pattern=2,
                  use_bidirectional_attention=True)
    config = transformers.AutoConfig.for_model(
        model_type, vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
        **kw)
    torch.manual_seed(0)
    return save_checkpoint(folder, perturb_norms(transformers.AutoModel.from_config(config)).eval(), tokenizer)


def st_checkpoint(folder: Path, model_type: str) -> Path:
    """Saved by sentence-transformers as the real ones are: Qwen3-Embedding's Transformer →
    Pooling(lasttoken) → Normalize; EmbeddingGemma's Transformer → Pooling(mean) → Dense(→ 64)
    → Dense(→ 32) → Normalize; each with its prompts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    base = embedding_base(folder / "base", model_type)
    transformer = models.Transformer(str(base), max_seq_length=64)
    torch.manual_seed(0)
    if model_type == "qwen3":
        modules = [transformer, models.Pooling(32, pooling_mode="lasttoken"), models.Normalize()]
        prompts = QWEN3_PROMPTS
    else:
        modules = [transformer, models.Pooling(32, pooling_mode="mean"),
                   models.Dense(32, 64, bias=False, activation_function=torch.nn.Identity()),
                   models.Dense(64, 32, bias=False, activation_function=torch.nn.Identity()), models.Normalize()]
        prompts = EMBEDDINGGEMMA_PROMPTS
    SentenceTransformer(modules=modules, prompts=prompts, device="cpu").save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="module", params=["qwen3", "gemma3_text"], ids=["qwen3-embedding", "embeddinggemma"])
def embedder(request, tmp_path_factory):
    return st_checkpoint(tmp_path_factory.mktemp(f"st-{request.param}"), request.param)


def sentence_transformers_encode(folder, texts, **kwargs):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True, **kwargs).cpu()


def test_embedding_model_matches_sentence_transformers(embedder):
    """Batches padded as the tokenizer says (left for both) in sentence-transformers; lightpipe
    runs each text's real tokens: the same vectors, with and without a prompt, and the same
    similarities. EmbeddingGemma (bidirectional) refuses to generate."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(embedder), device="cpu")
    assert reference.tokenizer.padding_side == "left"
    embed = pipeline("feature-extraction", model=embedder)
    for kwargs in ({}, {"prompt_name": "query"}, {"prompt_name": "document"}, {"prompt": "passage: "}):
        got = torch.tensor(embed(EMBED_TEXTS, pooling="auto", **kwargs))
        expected = reference.encode(EMBED_TEXTS, convert_to_tensor=True, **kwargs).cpu()
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    alone = torch.tensor(embed(EMBED_TEXTS[2], pooling="auto"))
    torch.testing.assert_close(alone, torch.tensor(embed(EMBED_TEXTS, pooling="auto"))[2], atol=1e-6, rtol=1e-6)
    similarity = pipeline("sentence-similarity", model=embedder)
    scores = similarity({"source_sentence": EMBED_TEXTS[0], "sentences": EMBED_TEXTS[1:]})
    vectors = reference.encode(EMBED_TEXTS, convert_to_tensor=True, normalize_embeddings=True).cpu()
    assert_same(scores, (vectors[1:] @ vectors[0]).tolist(), tol=1e-5)
    base = embedder.parent / "base"
    if json.loads((base / "config.json").read_text()).get("use_bidirectional_attention"):  # EmbeddingGemma
        with pytest.raises(TypeError, match="bidirectional attention.*can't generate"):
            pipeline("text-generation", model=base)("The assert statement", max_new_tokens=3)


def test_qwen3_embedding_pools_the_appended_end_token(tmp_path):
    """The tokenizer appends <|endoftext|> and last-token pooling reads it: the vector is that
    token's normalized hidden state, in lightpipe as in sentence-transformers."""
    folder = st_checkpoint(tmp_path, "qwen3")
    embed = pipeline("feature-extraction", model=folder)
    ids = embed.tokenizer.encode(EMBED_TEXTS[1]).ids
    assert ids[-1] == embed.tokenizer.token_to_id("<|endoftext|>")
    tokens = torch.tensor(embed(EMBED_TEXTS[1]))[0]  # (T, D) per-token hidden states
    pooled = torch.tensor(embed(EMBED_TEXTS[1], pooling="auto"))
    torch.testing.assert_close(pooled, torch.nn.functional.normalize(tokens[-1], dim=-1))


def test_causal_checkpoint_without_modules_pools_the_last_token(tmp_path):
    """A causal LM checkpoint with no sentence-transformers files: sentence-transformers (and
    lightpipe's pooling="auto") pool the last token. (Its tokenizer has no chat template:
    sentence-transformers 5.7 would render one around each text, which lightpipe doesn't.)"""
    folder = causal_lm_checkpoint(tmp_path, "qwen3", qwen3_tokenizer(tmp_path, chat_template=None, embedding=True))
    got = torch.tensor(pipeline("feature-extraction", model=folder)(EMBED_TEXTS, pooling="auto"))
    torch.testing.assert_close(got, sentence_transformers_encode(folder, EMBED_TEXTS), atol=1e-5, rtol=1e-4)


# -- each family in a fresh process -----------------------------------------------------------------


@pytest.fixture(scope="module")
def fresh_run(tmp_path_factory):
    """One child without transformers runs every family (tests/fresh_decoders.py); the same
    calls in this process are the reference."""
    import fresh_decoders
    from fresh import Fresh

    root = tmp_path_factory.mktemp("fresh-decoders")
    folders = {name: str(family_checkpoint(root / name, name)) for name in FAMILIES}
    folders["qwen3-embedding"] = str(st_checkpoint(root / "qwen3-embedding", "qwen3"))
    folders["embeddinggemma"] = str(st_checkpoint(root / "embeddinggemma", "gemma3_text"))
    spec, results = root / "folders.json", root / "results.json"
    spec.write_text(json.dumps(folders))
    proc, report = Fresh(root / "fresh").run([sys.executable, fresh_decoders.__file__, spec, results], "decoders")
    assert proc.returncode == 0 and results.is_file(), f"the child failed:\n{proc.stdout}\n{proc.stderr}"
    return proc, report, json.loads(results.read_text()), json.loads(json.dumps(fresh_decoders.checks(folders)))


@pytest.mark.fresh
@pytest.mark.parametrize("name", [*FAMILIES, "qwen3-embedding", "embeddinggemma"])
def test_family_in_a_fresh_process(fresh_run, name):
    from fresh import assert_clean

    proc, report, got, expected = fresh_run
    assert_clean(report, "decoder families child", proc.stderr)
    assert not (isinstance(got[name], dict) and "error" in got[name]), f"{name} fails in a fresh process:\n{got[name]}"
    assert not (isinstance(expected[name], dict) and "error" in expected[name]), expected[name]
    assert_same(got[name], expected[name])
