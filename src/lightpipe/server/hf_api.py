"""The Hugging Face Inference API: `POST /` and `POST /models/{model_id}` (also
`/models/{model_id}/pipeline/{task}`, which InferenceClient uses for embeddings) with
`{"inputs": ..., "parameters": {...}}`, answered in the shapes `huggingface_hub.InferenceClient`
(0.36) parses — which are transformers' pipeline outputs, except where noted:

- feature-extraction: sentence embeddings (the checkpoint's sentence-transformers chain,
  normalized), one row per input, a single string giving one row: [[...]] — what
  text-embeddings-inference and the hosted API return. Parameters at the top level (`normalize`,
  `truncate`, `prompt_name`) as the client sends them; `"pooling": "none"` gives transformers'
  per-token output instead.
- text-classification: every label, best first, as a list per input ([[...]] for one string).
- token-classification: `aggregation_strategy` defaults to "simple" (entity groups), as on the API.
- text-generation: TGI's parameters; `return_full_text` defaults to false (only the new text);
  `"stream": true` sends TGI's server-sent events.

`POST /` with several models served routes by the request: its input's shape (a QA dict, a
source_sentence, chat messages, a text with a fill-mask model's mask token), its parameters
(candidate_labels; parameters only one task takes; `stream`: text-generation; none at all, as
InferenceClient.feature_extraction sends it: embeddings). A request that could be for models of
several tasks is answered 400 naming the served models — never run on another task's model.

The handler of a request is the one for its pipeline's request shape (`hf_request` on the
pipeline's class); the parameter names and API defaults come from the class too.
"""

from __future__ import annotations

from starlette.requests import Request

from ..tasks import normalize_task, pipeline_class
from . import errors
from .common import boolean, check_batch, embed, json_response, options_of, read_json, run, state, texts
from .generate import (UNSUPPORTED, StopWatcher, generate, generate_sequences, generation_options, open_stream,
                       sampling, sendable, sse, sse_response, stops_of, stream_error, unsupported_error)
from .registry import Served, check_ready, has_token_stream
from .tokens import MAX_TOP_LOGPROBS, tgi_token, tgi_top_tokens, vocabulary

EMBEDDING_SHAPES = ("embedding", "similarity")  # what a model that can embed answers, whatever its task


async def inference(request: Request):
    """POST / and POST /models/{model_id}[/pipeline/{task}]."""
    st = state(request)
    body = await read_json(request)
    if "inputs" not in body:
        raise errors.validation('the request needs "inputs" (and optionally "parameters"): {"inputs": ..., "parameters": {...}}',
                                param="inputs")
    path = request.path_params.get("model_id")
    task = None
    if path is not None:
        name, sep, task = path.partition("/pipeline/")
        served = st.registry.get(name)
        task = task.strip("/") or None
    else:
        served = route(st.registry, body)
    return await answer(st, served, task, body)


async def answer(st, served: Served, task: str | None, body: dict):
    served = check_ready(served)
    if task is None:
        shape = served.pipeline.hf_request
        if served.can_embed:
            shape = "similarity" if isinstance(body["inputs"], dict) else "embedding"
    else:  # the task named in the path: its class's request shape
        try:
            spec = normalize_task(task)[0]
        except ValueError as e:
            raise errors.validation(str(e)) from None
        shape = pipeline_class(spec).hf_request
        if spec.name != served.task and not (shape in EMBEDDING_SHAPES and served.can_embed):
            raise errors.validation(f"model {served.id} serves {served.task}, not {task}")
    return await HANDLERS[shape](st, served, body)


def route(registry, body: dict) -> Served:
    """The model `POST /` means (see the module docstring), or 400 when the request doesn't say."""
    ready = registry.ready()
    if len(ready) <= 1:
        return registry.choose(lambda e: True, "")
    inputs, params = body.get("inputs"), body.get("parameters")
    params = params if isinstance(params, dict) else {}
    item = inputs[0] if isinstance(inputs, list) and inputs else inputs
    if isinstance(item, dict) and "source_sentence" in item:
        hits, what = [e for e in ready if e.can_embed], "sentence-similarity"
    elif isinstance(item, dict) and ("question" in item or "context" in item):
        hits, what = [e for e in ready if e.pipeline.hf_request == "question-context"], "question-answering"
    elif isinstance(item, dict) and "role" in item:
        hits, what = [e for e in ready if e.pipeline.takes_chat], "chat"
    elif "parameters" not in body:  # InferenceClient.feature_extraction sends its parameters at the top level
        hits, what = [e for e in ready if e.can_embed], "feature-extraction"
    elif "stream" in body:  # InferenceClient.text_generation always says whether it streams
        hits, what = [e for e in ready if has_token_stream(e.pipeline)], "text-generation"
    elif "candidate_labels" in params:
        hits, what = [e for e in ready if "candidate_labels" in e.pipeline.hf_parameters], "zero-shot-classification"
    else:
        hits, what = [e for e in ready if not e.can_embed], "this request"
        if params:  # parameters only some tasks take
            hits = [e for e in hits if set(params) <= e.pipeline.hf_parameters]
        if isinstance(item, dict) and "text" in item:  # a {"text", "text_pair"} pair
            hits = [e for e in hits if e.pipeline.hf_request == "texts-or-pairs"]
        if isinstance(item, str):  # not the tasks whose input is more than a text
            hits = [e for e in hits if e.pipeline.hf_request != "question-context"
                    and "candidate_labels" not in e.pipeline.hf_parameters]
        if isinstance(item, str):  # fill-mask: the text holds its mask token
            claimed = [e for e in hits if e.pipeline.claims_text(item)]
            hits = claimed or [e for e in hits if not e.pipeline.claims_text(item) and e.task != "fill-mask"]
    tasks = sorted({e.task for e in hits})
    if len(tasks) == 1:
        return hits[0]
    could = f"could be for {' or '.join(tasks)}" if tasks else f"is not one any served model takes ({what})"
    raise errors.bad_request(f"POST / serves several models and this request {could}; post it to "
                             f"/models/{{name}} instead. Served models: {registry.listing()}")


# -- embeddings ---------------------------------------------------------------------------

async def feature_extraction(st, served: Served, body: dict):
    items, single = texts(body["inputs"])
    check_batch(st, len(items))
    params = {**options_of(body.get("parameters")), **{k: v for k, v in body.items() if k not in ("inputs", "parameters") and v is not None}}
    if params.pop("truncation_direction", "right") not in ("right", "Right"):
        raise errors.validation("truncation_direction: only 'right' is supported")
    prompt_name = params.pop("prompt_name", None)
    if prompt_name is not None and not isinstance(prompt_name, str):
        raise errors.validation(f"prompt_name must be a string, got {prompt_name!r}")
    truncation = boolean(params.pop("truncate", params.pop("truncation", None)), "truncate", False)
    normalize = boolean(params.pop("normalize", None), "normalize", True)
    pooling = params.pop("pooling", "auto")
    if params:
        raise errors.validation(f"unknown feature-extraction parameter(s) {sorted(params)}; "
                                "accepted: normalize, truncate, truncation_direction, pooling, prompt_name")
    if pooling in ("none", None):  # transformers' per-token hidden states
        if prompt_name is not None:
            raise errors.validation("prompt_name needs sentence embeddings (pooling 'auto'), not per-token output")
        if served.pipeline.hf_request != "embedding":  # its inputs are other than texts
            raise errors.validation(f"model {served.id} serves {served.task}; per-token output needs it served as "
                                    "feature-extraction")
        done = await run(served, "run", items, {"truncation": truncation})
        return json_response(done.results[0] if single else done.results)
    if pooling != "auto":
        raise errors.validation(f"pooling must be 'auto' (the checkpoint's) or 'none' (per token), got {pooling!r}")
    vectors, _ = await embed(served, items, normalize=normalize, truncation=truncation, prompt_name=prompt_name)
    return json_response(vectors.tolist())


async def sentence_similarity(st, served: Served, body: dict):
    inputs = body["inputs"]
    if not isinstance(inputs, dict) or not isinstance(inputs.get("source_sentence"), str):
        raise errors.validation('sentence-similarity inputs must be {"source_sentence": str, "sentences": [str, ...]}')
    others, _ = texts(inputs.get("sentences"), "inputs.sentences")
    check_batch(st, len(others))
    params = options_of(body.get("parameters"))
    truncation = boolean(params.pop("truncate", params.pop("truncation", None)), "truncate", False)
    vectors, _ = await embed(served, [inputs["source_sentence"], *others], normalize=True, truncation=truncation)
    return json_response((vectors[1:] @ vectors[0]).tolist())


# -- encoder tasks ------------------------------------------------------------------------

async def plain_texts(st, served: Served, body: dict):
    """A string or a list of strings in, the pipeline's result for each (one for a string):
    fill-mask, token-classification, zero-shot-classification."""
    items, single = texts(body["inputs"])
    check_batch(st, len(items))
    options = {**served.pipeline.hf_defaults, **options_of(body.get("parameters"))}
    done = await run(served, "run", items, options)
    return json_response(done.results[0] if single else done.results)


async def texts_or_pairs(st, served: Served, body: dict):
    """text-classification: texts or {"text", "text_pair"} pairs; every label, as a list per input."""
    inputs = body["inputs"]
    single = isinstance(inputs, (str, dict))
    items = [inputs] if single else inputs
    if not isinstance(items, list) or not items or not all(isinstance(i, (str, dict)) for i in items):
        raise errors.validation('inputs must be a string, {"text": str, "text_pair": str}, or a list of them')
    check_batch(st, len(items))
    options = {**served.pipeline.hf_defaults, **options_of(body.get("parameters"))}
    done = await run(served, "run", items, options)
    results = [r if isinstance(r, list) else [r] for r in done.results]
    return json_response(results)


async def question_answering(st, served: Served, body: dict):
    inputs = body["inputs"]
    single = isinstance(inputs, dict)
    items = [inputs] if single else inputs
    ok = lambda i: isinstance(i, dict) and isinstance(i.get("question"), str) and isinstance(i.get("context"), str)  # noqa: E731
    if not isinstance(items, list) or not items or not all(ok(i) for i in items):
        raise errors.validation('question-answering inputs must be {"question": str, "context": str} or a list of them')
    check_batch(st, len(items))
    items = [{"question": i["question"], "context": i["context"]} for i in items]
    done = await run(served, "run", items, options_of(body.get("parameters")))
    return json_response(done.results[0] if single else done.results)


# -- generation ---------------------------------------------------------------------------

async def text2text(st, served: Served, body: dict):
    """summarization, translation, text2text-generation."""
    items, single = texts(body["inputs"])
    check_batch(st, len(items))
    options = options_of(body.get("parameters"))
    extra = options_of(options.pop("generate_parameters", None), "parameters.generate_parameters")
    options = {**options, **extra}
    if options.get("src_lang") is None and options.get("tgt_lang") is None:
        options.pop("src_lang", None), options.pop("tgt_lang", None)
    results, _ = await generate(st, served, items, options)
    if single:
        return json_response(results[0])
    if all(isinstance(r, list) and len(r) == 1 for r in results):  # transformers unwraps single sequences
        results = [r[0] for r in results]
    return json_response(results)


def tgi_options(served: Served, params: dict) -> tuple[dict, list[str], int | None, bool, int]:
    """TGI parameters → (pipeline keywords, stop strings, seed, details, top_n_tokens)."""
    params = dict(params)
    unsupported = [k for k in UNSUPPORTED if params.pop(k, None) not in (None, False, 0)]
    if unsupported:
        raise unsupported_error(unsupported)
    stop = stops_of(params.pop("stop", None) or params.pop("stop_sequences", None))
    seed = params.pop("seed", None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise errors.validation(f"seed must be an integer, got {seed!r:.40}", param="seed")
    details = boolean(params.pop("details", None), "details", False)
    top_n = params.pop("top_n_tokens", None) or 0
    if isinstance(top_n, bool) or not isinstance(top_n, int) or not 0 <= top_n <= MAX_TOP_LOGPROBS:
        raise errors.validation(f"top_n_tokens must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {top_n!r:.40}",
                                param="top_n_tokens")
    do_sample, temperature = params.pop("do_sample", None), params.pop("temperature", None)
    if do_sample is None:  # TGI: greedy, unless a sampling knob is set
        do_sample = temperature not in (None, 1, 1.0) or bool(params.get("top_k")) or params.get("top_p") not in (None, 1, 1.0)
    options = sampling({}, do_sample, temperature)
    for key in list(params):
        options[key] = params.pop(key)  # the pipeline validates the rest
    options.setdefault("return_full_text", False)
    if (details or top_n) and options.get("num_beams") not in (None, 1):
        raise errors.validation("details and top_n_tokens need num_beams=1: beam search scores whole sequences, "
                                "not the tokens of one distribution", param="num_beams")
    return generation_options(served, options), stop, seed, details, top_n


async def text_generation(st, served: Served, body: dict):
    options, stop, seed, details, top_n = tgi_options(served, options_of(body.get("parameters")))
    if boolean(body.get("stream"), "stream", False):
        prompt = body["inputs"]
        if not isinstance(prompt, str):
            raise errors.validation("a streamed text-generation request takes one string as inputs", param="inputs")
        return tgi_stream(st, served, prompt, options, stop, seed, top_n)
    items, single = texts(body["inputs"])
    check_batch(st, len(items))
    results, _ = await generate_sequences(st, served, items, options, seed, logprobs=details or bool(top_n),
                                          top_logprobs=top_n)
    vocab = vocabulary(served.pipeline)
    out = []
    for (sequence, *_) in results:  # TGI: one sequence a prompt
        text, reason, n = sequence.finish(stop)
        entry = {"generated_text": text}
        if details:
            tokens = sequence.token_data(n)
            entry["details"] = {"finish_reason": reason, "generated_tokens": n, "seed": seed, "prefill": [],
                                "tokens": [tgi_token(vocab, i, lp) for i, lp, _ in tokens]}
            if top_n:
                entry["details"]["top_tokens"] = [tgi_top_tokens(vocab, top) for *_, top in tokens]
        out.append(entry)
    return json_response(out)


def tgi_stream(st, served: Served, prompt: str, options: dict, stop: list[str], seed, top_n: int = 0):
    """TGI's stream: one `data: {"index", "token": {id, text, logprob, special}, "generated_text":
    null}` event per generated token (`text`: what it adds to the text, "" while text is held
    back); the last carries the whole text and details."""
    stream, prompt_tokens = open_stream(st, served, prompt, options, seed, logprobs=True, top_logprobs=top_n)
    vocab = vocabulary(served.pipeline)

    async def events():
        text, index = "", 0
        try:
            async for out, token, end in sendable(stream, StopWatcher(stop)):
                text += out
                index += 1
                event = {"index": index, "token": tgi_token(vocab, token.id, token.logprob, out),
                         "generated_text": None, "details": None}
                if top_n:
                    event["top_tokens"] = tgi_top_tokens(vocab, token.top)
                if end is not None:
                    event["generated_text"] = text
                    event["details"] = {"finish_reason": end, "generated_tokens": index,
                                        "input_length": prompt_tokens, "seed": seed}
                yield sse(event)
        except Exception as e:
            err = stream_error(e, served)
            yield sse({"error": errors.scrub(err.message), "error_type": err.error_type})

    return sse_response(events())


# request shape (a pipeline class's `hf_request`) → handler
HANDLERS = {
    "embedding": feature_extraction,
    "similarity": sentence_similarity,
    "texts": plain_texts,
    "texts-or-pairs": texts_or_pairs,
    "question-context": question_answering,
    "text2text": text2text,
    "tgi": text_generation,
}
