"""text-embeddings-inference routes: /embed, /embed_all, /predict, /rerank, /tokenize and
/decode, with TEI's request and response shapes. TEI serves one model; here each route takes
the first suitable model served (or the one named by an extra `"model"` field)."""

from __future__ import annotations

from starlette.requests import Request

from . import errors
from .common import (boolean, check_batch, embed, embedding_model, json_response, positive_int, read_json, run,
                     state, texts)
from .registry import check_ready


async def embed_route(request: Request):
    st = state(request)
    body = await read_json(request)
    served = embedding_model(st, body.get("model"))
    items, _ = texts(body.get("inputs"))
    check_batch(st, len(items))
    prompt_name = body.get("prompt_name")
    if prompt_name is not None and not isinstance(prompt_name, str):
        raise errors.validation(f"prompt_name must be a string, got {prompt_name!r}")
    if str(body.get("truncation_direction") or "right").lower() != "right":
        raise errors.validation("truncation_direction: only Right is supported")
    # TEI's truncate: false refuses an input over max_seq_length, true cuts it there
    vectors, _ = await embed(served, items, normalize=boolean(body.get("normalize"), "normalize", True),
                             truncation=boolean(body.get("truncate"), "truncate", False),
                             dimensions=positive_int(body.get("dimensions"), "dimensions"), prompt_name=prompt_name)
    return json_response(vectors.tolist())


def classifier(st, name):
    served = st.registry.pick(name if isinstance(name, str) else None, lambda e: e.task == "text-classification",
                              "text-classification")
    if served.task != "text-classification":
        raise errors.validation(f"model {served.id} serves {served.task}; /predict needs a text-classification model")
    return served


def predict_items(inputs) -> tuple[list, bool]:
    """TEI's untagged inputs: "text" | ["text", "pair"] (a pair) | [["text"], ["text", "pair"], ...]
    | ["a", "b", "c"] (any other flat list: a batch of single texts)."""
    def sequence(value):
        if isinstance(value, str):
            return value
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
            return value[0]
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            return {"text": value[0], "text_pair": value[1]}
        raise errors.validation(f'each input must be "text" or ["text", "pair"], got {value!r:.80}')

    if isinstance(inputs, str):
        return [inputs], True
    if isinstance(inputs, list) and len(inputs) == 2 and all(isinstance(v, str) for v in inputs):
        return [sequence(inputs)], True
    if isinstance(inputs, list) and inputs:
        return [sequence(v) for v in inputs], False
    raise errors.validation('inputs must be "text", ["text", "pair"] or a list of them')


async def predict(request: Request):
    st = state(request)
    body = await read_json(request)
    served = classifier(st, body.get("model"))
    items, single = predict_items(body.get("inputs"))
    check_batch(st, len(items))
    options = {"top_k": None, "truncation": boolean(body.get("truncate"), "truncate", False)}
    if boolean(body.get("raw_scores"), "raw_scores", False):
        options["function_to_apply"] = "none"
    done = await run(served, "run", items, options)
    return json_response(done.results[0] if single else done.results)


async def rerank(request: Request):
    """Cross-encoders (a text-classification model with one label) score (query, text) pairs;
    an embedding model ranks by cosine similarity."""
    st = state(request)
    body = await read_json(request)
    query = body.get("query")
    if not isinstance(query, str):
        raise errors.validation("query must be a string")
    docs, _ = texts(body.get("texts"), "texts")
    check_batch(st, len(docs))
    truncation = boolean(body.get("truncate"), "truncate", False)
    raw = boolean(body.get("raw_scores"), "raw_scores", False)
    name = body.get("model")
    cross = lambda e: e.task == "text-classification" and len(e.pipeline.id2label) <= 1  # noqa: E731
    if name:
        served = st.registry.get(str(name))
    elif any(cross(e) for e in st.registry.ready()):
        served = st.registry.choose(cross, "reranker")
    else:
        served = embedding_model(st, None)
    if served.can_embed:
        vectors, _ = await embed(served, [query, *docs], normalize=True, truncation=truncation)
        scores = (vectors[1:] @ vectors[0]).tolist()
    elif served.task == "text-classification":
        if len(served.pipeline.id2label) > 1:
            raise errors.validation(f"model {served.id} has {len(served.pipeline.id2label)} labels; "
                                    "reranking needs a cross-encoder with one output")
        options = {"top_k": None, "truncation": truncation, "function_to_apply": "none" if raw else "sigmoid"}
        done = await run(served, "run", [{"text": query, "text_pair": d} for d in docs], options)
        scores = [r[0]["score"] for r in done.results]
    else:
        raise errors.validation(f"model {served.id} serves {served.task}; /rerank needs a cross-encoder or an embedding model")
    ranked = sorted(range(len(docs)), key=lambda i: scores[i], reverse=True)
    return_text = boolean(body.get("return_text"), "return_text", False)
    return json_response([{"index": i, "score": scores[i], **({"text": docs[i]} if return_text else {})} for i in ranked])


async def embed_all(request: Request):
    """Every token's last hidden state, special tokens included: [[[float]]], one (T, D) list per input."""
    st = state(request)
    body = await read_json(request)
    served = embedding_model(st, body.get("model"))
    if served.pipeline.hf_request != "embedding":
        raise errors.validation(f"model {served.id} serves {served.task}; /embed_all needs it served as "
                                "feature-extraction", param="model")
    items, _ = texts(body.get("inputs"))
    check_batch(st, len(items))
    if body.get("prompt_name") is not None:
        raise errors.validation("prompt_name is not supported by /embed_all", param="prompt_name")
    if str(body.get("truncation_direction") or "right").lower() != "right":
        raise errors.validation("truncation_direction: only Right is supported", param="truncation_direction")
    done = await run(served, "run", items, {"truncation": boolean(body.get("truncate"), "truncate", False)})
    return json_response([result[0] for result in done.results])  # transformers' (1, T, D) per input → (T, D)


def tokenizer_model(st, name):
    """/tokenize and /decode: the named model, else the first embedding model, else the first served."""
    if isinstance(name, str) and name:
        return st.registry.get(name)
    ready = st.registry.ready()
    if not ready:
        return st.registry.choose(lambda e: True, "")
    return check_ready(next((e for e in ready if e.can_embed), ready[0]))


async def tokenize(request: Request):
    """TEI's /tokenize: per input, its tokens as {id, text, special, start, stop}. `start`/`stop`
    are byte offsets in the input (UTF-8) and `text` the input's bytes there; special tokens have
    their token text and null offsets."""
    st = state(request)
    body = await read_json(request)
    served = tokenizer_model(st, body.get("model"))
    items, _ = texts(body.get("inputs"))
    check_batch(st, len(items))
    specials = boolean(body.get("add_special_tokens"), "add_special_tokens", True)
    if body.get("prompt_name") is not None:
        raise errors.validation("prompt_name is not supported by /tokenize", param="prompt_name")
    tokenizer = served.pipeline.tokenizer
    out = []
    for text, enc in zip(items, tokenizer.encode_batch(items, add_special_tokens=specials)):
        offsets = getattr(enc, "offsets", None)
        if offsets is None:
            raise errors.validation(f"model {served.id}'s tokenizer gives no offsets (it has no tokenizer.json)",
                                    param="model")
        data = text.encode()
        byte_at = _byte_offsets(text)
        tokens = []
        for token_id, token, (start, stop), special in zip(enc.ids, enc.tokens, offsets, enc.special_tokens_mask):
            if special:
                tokens.append({"id": token_id, "text": token, "special": True, "start": None, "stop": None})
            else:
                b0, b1 = byte_at[start], byte_at[stop]
                tokens.append({"id": token_id, "text": data[b0:b1].decode(errors="replace"), "special": False,
                               "start": b0, "stop": b1})
        out.append(tokens)
    return json_response(out)


def _byte_offsets(text: str) -> list[int]:
    """Character offset → UTF-8 byte offset, for every offset 0..len(text)."""
    out, n = [0], 0
    for ch in text:
        n += len(ch.encode())
        out.append(n)
    return out


async def decode(request: Request):
    """TEI's /decode: {"ids": [int] | [[int]], "skip_special_tokens": true} → one string per sequence."""
    st = state(request)
    body = await read_json(request)
    served = tokenizer_model(st, body.get("model"))
    ids = body.get("ids")
    is_ids = lambda v: isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)  # noqa: E731
    if is_ids(ids) and ids:
        batch = [ids]
    elif isinstance(ids, list) and ids and all(is_ids(v) for v in ids):
        batch = ids
    else:
        raise errors.validation("ids must be a non-empty list of token ids or a list of them", param="ids")
    check_batch(st, len(batch), "ids")
    tokenizer = served.pipeline.tokenizer
    for seq in batch:
        bad = next((t for t in seq if t < 0 or tokenizer.id_to_token(t) is None), None)
        if bad is not None:
            raise errors.validation(f"token id {bad} is not in the model's vocabulary", param="ids")
    skip = boolean(body.get("skip_special_tokens"), "skip_special_tokens", True)
    return json_response([tokenizer.decode(seq, skip_special_tokens=skip) for seq in batch])
