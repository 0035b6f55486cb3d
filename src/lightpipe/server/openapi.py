"""The OpenAPI 3.1 description served at /openapi.json (and rendered at /docs)."""

from __future__ import annotations

HF_ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "error_type": {"type": "string"}},
            "required": ["error", "error_type"]}
OPENAI_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"}, "param": {"type": ["string", "null"]},
                   "code": {"type": ["string", "null"]}}}}}
ERROR = {"oneOf": [HF_ERROR, OPENAI_ERROR],
         "description": "OpenAI routes (/v1/..., /models/{id}/v1/...) answer OpenAI's shape; the others HF's"}
ERRORS = {
    "400": "a request POST / can't route (several models could take it), or a parameter lightpipe doesn't implement",
    "401": "no valid API key (servers started with --api-key): send Authorization: Bearer KEY",
    "408": "the body did not arrive within --body-timeout",
    "413": "too many inputs (--max-client-batch-size) or body too large (--max-body-bytes)",
    "422": "validation error: bad inputs or parameters, or beyond a limit (--max-input-tokens, --max-total-tokens, "
           "--max-sequences)",
    "429": "too many requests in flight (--max-concurrent-requests)",
    "503": "the model is loading",
}


def op(summary: str, description: str, example: dict | None = None, response: dict | None = None,
       tag: str = "", method: str = "post", errors: bool = True) -> dict:
    entry = {"summary": summary, "description": description, "tags": [tag] if tag else [],
             "responses": {"200": {"description": "OK", "content": {"application/json": {"example": response}}}}}
    if example is not None:
        entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": {"type": "object"},
                                                                                    "example": example}}}
    if errors:
        for code, text in ERRORS.items():
            entry["responses"][code] = {"description": text, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"}}}}
    return {method: entry}


def openapi_spec(version: str) -> dict:
    hf = "Hugging Face Inference API"
    paths = {
        "/": {**op("Inference (HF Inference API)", "Runs {inputs, parameters} on a served model. With several models "
                   "served, the request's shape picks one (see the README's Serving section); GET / is the playground.",
                   {"inputs": "I love this", "parameters": {"top_k": 2}},
                   [[{"label": "POSITIVE", "score": 0.99}, {"label": "NEGATIVE", "score": 0.01}]], hf),
              **op("Playground", "The browser playground (HTML).", tag="playground", method="get", errors=False)},
        "/models/{model_id}": op(
            "Inference on a named model (HF Inference API)",
            "model_id: the served model's id, folder name or task. Append /pipeline/feature-extraction or "
            "/pipeline/sentence-similarity to pick the embedding task. Outputs are shaped as "
            "huggingface_hub.InferenceClient parses them (transformers' pipeline outputs).",
            {"inputs": {"question": "Where do I live?", "context": "My name is Sarah and I live in London"}},
            {"answer": "London", "score": 0.98, "start": 31, "end": 37}, hf),
        "/v1/embeddings": op("Embeddings (OpenAI)", "input: a string or a list of strings; encoding_format float or base64.",
                             {"model": "sentence-transformers/all-MiniLM-L6-v2", "input": ["hello"]},
                             {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.01]}],
                              "model": "sentence-transformers/all-MiniLM-L6-v2", "usage": {"prompt_tokens": 3, "total_tokens": 3}},
                             "OpenAI"),
        "/v1/completions": op("Completions (OpenAI)", "stream=true sends server-sent events ending `data: [DONE]`.",
                              {"model": "openai-community/gpt2", "prompt": "Hello, I'm a language model,", "max_tokens": 16},
                              None, "OpenAI"),
        "/v1/chat/completions": op("Chat completions (OpenAI)", "The model's chat template renders the messages; "
                                   "stream=true sends server-sent events ending `data: [DONE]`.",
                                   {"model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                                    "messages": [{"role": "user", "content": "Hi!"}], "stream": True}, None, "OpenAI"),
        "/v1/models": op("Models (OpenAI)", "The served models.", tag="OpenAI", method="get", errors=False,
                         response={"object": "list", "data": [{"id": "sentence-transformers/all-MiniLM-L6-v2", "object": "model"}]}),
        "/embed": op("Embed (text-embeddings-inference)", "Sentence embeddings, one row per input.",
                     {"inputs": ["hello", "world"], "normalize": True}, [[0.01], [0.02]], "TEI"),
        "/embed_all": op("Embed all tokens (text-embeddings-inference)", "Every token's last hidden state, special "
                         "tokens included: one (tokens × dimensions) list per input.",
                         {"inputs": ["hello"]}, [[[0.1], [0.2], [0.3]]], "TEI"),
        "/tokenize": op("Tokenize (text-embeddings-inference)", "Per input, its tokens: id, text, special, and "
                        "start/stop byte offsets in the input (null for special tokens).",
                        {"inputs": "hello", "add_special_tokens": True},
                        [[{"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None},
                          {"id": 7592, "text": "hello", "special": False, "start": 0, "stop": 5},
                          {"id": 102, "text": "[SEP]", "special": True, "start": None, "stop": None}]], "TEI"),
        "/decode": op("Decode (text-embeddings-inference)", "Token ids (one sequence or a list of them) to text.",
                      {"ids": [101, 7592, 102], "skip_special_tokens": True}, ["hello"], "TEI"),
        "/models/{model_id}/v1/chat/completions": op(
            "Chat completions on a named model (OpenAI)", "The URL InferenceClient(\".../models/NAME\") posts chats "
            "to; also /models/{model_id}/v1/completions, /embeddings and (GET) /models.",
            {"messages": [{"role": "user", "content": "Hi!"}]}, None, "OpenAI"),
        "/predict": op("Predict (text-embeddings-inference)", "Classify a text, a [text, pair], or a list of them.",
                       {"inputs": "I love this"}, [{"label": "POSITIVE", "score": 0.99}], "TEI"),
        "/rerank": op("Rerank (text-embeddings-inference)", "Rank texts against a query with a cross-encoder "
                      "(one-label text-classification model) or by embedding cosine similarity.",
                      {"query": "What is Deep Learning?", "texts": ["Deep Learning is...", "cheese"]},
                      [{"index": 0, "score": 0.9}, {"index": 1, "score": 0.1}], "TEI"),
        "/health": op("Health", "200 when every start-up model is loaded, 503 while loading or if one failed.",
                      tag="server", method="get", errors=False, response={"status": "ok"}),
        "/info": op("Info", "Served models, their tasks and status, and the server's limits.",
                    tag="server", method="get", errors=False),
        "/metrics": op("Metrics", "Prometheus text format: requests, errors, queue depth, batch sizes, latencies.",
                       tag="server", method="get", errors=False),
        "/api/models": op("Search Hub models", "Query: task (or alias), language, search, limit, all. Most "
                          "downloaded first; only models lightpipe loads, or with all=true every match, loadable "
                          "first, each marked `loads` with a `reason`.",
                          tag="playground", method="get", errors=False,
                          response=[{"id": "distilbert/distilbert-base-uncased-finetuned-sst-2-english",
                                     "downloads": 1, "likes": 1, "pipeline_tag": "text-classification",
                                     "model_type": "distilbert", "loads": True, "reason": None}]),
        "/api/load": op("Load a Hub model", "Needs --allow-load (folders on the server: --allow-load-local). Returns "
                        "202 while it loads; poll /info. The same model asked for again is the same entry.",
                        {"model": "distilbert/distilbert-base-uncased-finetuned-sst-2-english", "task": "text-classification",
                         "name": "sst2", "revision": "main"},
                        {"id": "distilbert/distilbert-base-uncased-finetuned-sst-2-english", "status": "loading"}, "playground"),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "lightpipe", "version": version,
                 "description": "Hugging Face pipelines served with the HF Inference API, OpenAI and "
                                "text-embeddings-inference request shapes."},
        "paths": paths,
        "components": {"schemas": {"Error": ERROR}},
    }
