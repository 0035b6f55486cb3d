"""`lightpipe run | download | tasks | models | serve` — JSON on stdout, progress on stderr,
errors as one clear line and a non-zero exit (LIGHTPIPE_DEBUG=1 shows the traceback instead)."""

from __future__ import annotations

import argparse
import json
import os
import sys

DEBUG_ENV = "LIGHTPIPE_DEBUG"
# exit statuses: a usage or input error (argparse's own), a failure nobody foresaw, and the
# reader of stdout gone (what a shell reports for a tool killed by SIGPIPE: 128 + 13)
EXIT_USAGE, EXIT_UNEXPECTED, EXIT_BROKEN_PIPE, EXIT_INTERRUPTED = 2, 1, 141, 130


def parse_value(text: str):
    """`--option key=value` values: JSON when it parses (numbers, booleans, lists), else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def task_options(args) -> dict:
    """The task keywords the flags name, plus any `--option key=value`."""
    options = {}
    if args.top_k is not None:
        options["top_k"] = args.top_k
    if args.labels is not None:
        options["candidate_labels"] = [label.strip() for label in args.labels.split(",") if label.strip()]
    for flag in ("aggregation_strategy", "max_new_tokens", "max_length", "num_beams", "temperature", "pooling",
                 "hypothesis_template", "src_lang", "tgt_lang"):
        if getattr(args, flag, None) is not None:
            options[flag] = getattr(args, flag)
    if getattr(args, "multi_label", False):
        options["multi_label"] = True
    if args.normalize:
        options["normalize"] = True
    if args.truncation:
        options["truncation"] = True
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option expects key=value, got {item!r}")
        options[key.replace("-", "_")] = parse_value(value)
    return options


def cmd_run(args) -> None:
    from . import pipeline

    options = task_options(args)
    if args.input:  # the file arguments fail now, not after the model has loaded
        from .fileio import check_run
        from .tasks import normalize_task, pipeline_class

        # the task's window (smaller for generation), asked of its class before the model loads
        window = args.window
        if window is None:
            window = pipeline_class(normalize_task(args.task)[0]).file_window
        check_run(args.input, args.output, args.format, window, args.on_error)
    pipe = pipeline(args.task, model=args.model, revision=args.revision, device=args.device, dtype=args.dtype,
                    quantize=args.quantize, backend=args.backend, batch_size=args.batch_size,
                    allow_pickle=args.allow_pickle)
    if args.input:
        if args.texts:
            raise ValueError("give TEXT arguments or --input FILE, not both")
        from .fileio import run_file
        from .rows import Columns

        columns = Columns(args.column, args.pair_column, args.question_column, args.context_column)
        run_file(pipe, args.input, args.output, options=options, fmt=args.format, columns=columns,
                 window=window, resume=args.resume, on_error=args.on_error)
        return
    if hasattr(pipe, "stream") and len(args.texts or []) == 1 and not (args.json or args.output):
        # one prompt on a terminal: show the text as it is generated
        prompt = args.texts[0]
        print(prompt, end="", flush=True)
        for piece in pipe.stream(prompt, **options):
            print(piece, end="", flush=True)
        print()
        return
    inputs = pipe.cli_inputs(list(args.texts or []), source=args.source, question=args.question,
                             context=args.context)
    results = pipe(inputs if len(inputs) > 1 else inputs[0], **options)
    from .json_out import dumps

    text = dumps(results, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        print(text)


def cmd_download(args) -> None:
    from .hub import download

    print(download(args.model, args.revision, allow_pickle=args.allow_pickle))


def cmd_tasks(args) -> None:
    from .tasks import TASKS

    width = max(len(t.name) for t in TASKS.values()) + 2
    for t in TASKS.values():
        aliases = f" (aliases: {', '.join(t.aliases)})" if t.aliases else ""
        revision = f"@{t.default_revision}" if t.default_revision else ""
        print(f"{t.name:<{width}}{t.default_model}{revision}{aliases}")
    print(f"{'translation_XX_to_YY':<{width}}{TASKS['translation'].default_model} "
          "(translation_en_to_fr, _en_to_de, _en_to_ro; other pairs need --model)")


def cmd_models(args) -> None:
    from .hub_search import scan, scan_size, select

    found = scan(args.task, args.language, args.search, scan_size(args.limit, args.all))
    shown = select(found, args.limit, args.all)
    if args.json:
        for m in shown:
            print(json.dumps(m))
    elif shown:
        print(models_table(shown))
    # what was looked at but left out, on stderr so stdout stays the list
    looked_at = found if args.all or len(shown) < args.limit else found[: found.index(shown[-1]) + 1]
    hidden = 0 if args.all else sum(not m["loads"] for m in looked_at)
    if hidden:
        print(f"lightpipe: left out {hidden} of the {len(looked_at)} most downloaded matches: lightpipe can't load "
              "them (`--all` lists them, saying why)", file=sys.stderr)
    elif not shown:
        print("lightpipe: no Hub model matches", file=sys.stderr)


def models_table(models: list[dict]) -> str:
    """`lightpipe models`' table: one model a line, columns aligned, the verdict last."""
    rows = [("id", "downloads", "likes", "task", "type", "loads?")]
    for m in models:
        verdict = (f"yes ({m['reason']})" if m["reason"] else "yes") if m["loads"] else f"no: {m['reason']}"
        rows.append((m["id"], f"{m['downloads'] or 0:,}", f"{m['likes'] or 0:,}", m["pipeline_tag"] or "-",
                     m["model_type"] or "-", verdict))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    right = {1, 2}  # numbers
    return "\n".join("  ".join([*(cell.rjust(w) if i in right else cell.ljust(w) for i, (cell, w) in
                                  enumerate(zip(row, widths))), row[-1]]) for row in rows)


def cmd_serve(args) -> None:
    try:
        from .server import serve
    except ImportError as e:
        raise ImportError(f"lightpipe serve needs the serve extra: pip install 'lightpipe[serve]' ({e})") from None
    from .hub import resolve
    from .server.registry import parse_model_spec

    if args.allow_load_local and not args.allow_load:
        raise ValueError("--allow-load-local goes with --allow-load")
    if not args.model and not args.allow_load:
        raise ValueError("give at least one --model [NAME=][TASK=]MODEL (or --allow-load to load models from the "
                         "playground)")
    specs = [parse_model_spec(spec) for spec in args.model or []]
    for spec in specs:  # fail now, clearly, on a model that can't be found; weights load in the background
        resolve(spec.model, spec.revision or args.revision)
    serve(specs, host=args.host, port=args.port, log_level=args.log_level, threads=args.threads,
          max_batch_tokens=args.max_batch_tokens, max_concurrent_requests=args.max_concurrent_requests,
          max_client_batch_size=args.max_client_batch_size, max_body_bytes=args.max_body_bytes,
          max_input_tokens=args.max_input_tokens, max_total_tokens=args.max_total_tokens,
          max_sequences=args.max_sequences, header_timeout=args.header_timeout, body_timeout=args.body_timeout,
          shutdown_timeout=args.shutdown_timeout, api_keys=api_keys(args), cors_origins=args.cors_origin or [],
          allow_load=args.allow_load, allow_load_local=args.allow_load_local, max_models=args.max_models,
          device=args.device, dtype=args.dtype, quantize=args.quantize, revision=args.revision)


API_KEY_ENV = "LIGHTPIPE_API_KEY"


def api_keys(args) -> list[str]:
    """--api-key, the lines of --api-key-file (blank lines and # comments skipped), and
    $LIGHTPIPE_API_KEY: any of them opens the API."""
    keys = list(args.api_key or [])
    if args.api_key_file:
        with open(args.api_key_file, encoding="utf-8") as f:
            keys += [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ValueError(f"--api-key-file {args.api_key_file} holds no key")
    if os.environ.get(API_KEY_ENV, "").strip():
        keys.append(os.environ[API_KEY_ENV].strip())
    for key in keys:
        if len(key) < 8 or any(c.isspace() for c in key):
            raise ValueError("an API key must be at least 8 characters, without spaces")
    return keys


def positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


class Parser(argparse.ArgumentParser):
    """argparse with a usage error on one line: the full usage is one `--help` away."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="lightpipe", description="The Hugging Face course's pipelines, lean and fast.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a task on texts or a file")
    run.add_argument("task")
    run.add_argument("texts", nargs="*", help="input texts")
    run.add_argument("--model", help="Hub id or local folder (default: the task's default model)")
    run.add_argument("--revision")
    run.add_argument("--device", help="cpu, cuda, cuda:1")
    run.add_argument("--dtype", help="auto, float32, bfloat16, float16")
    run.add_argument("--quantize", choices=["int8"], help="int8: int8 linear layers (weight-only with the torch backend)")
    run.add_argument("--backend", choices=["torch", "ctranslate2"], default="torch",
                     help="the engine of BERT-style encoders: torch (default) or ctranslate2 (pip install "
                          "'lightpipe[ctranslate2]')")
    run.add_argument("--batch-size", type=int)
    run.add_argument("--allow-pickle", action="store_true", help="allow pickled pytorch_model.bin weights")
    run.add_argument("--input", help="rows to run: .txt (a text per line), .jsonl, .csv, .tsv or .parquet; - for stdin")
    run.add_argument("--output", help="write results here; with --input: rows with result columns, in the "
                                      "extension's format (default: JSON results on stdout)")
    run.add_argument("--format", choices=["text", "jsonl", "csv", "tsv", "parquet"],
                     help="--input's format when its extension doesn't say")
    run.add_argument("--column", help="--input column holding the text (default: text)")
    run.add_argument("--pair-column", help="--input column holding the second text of a pair (text_pair)")
    run.add_argument("--question-column", help="question-answering: --input column of questions (default: question)")
    run.add_argument("--context-column", help="question-answering: --input column of contexts (default: context)")
    run.add_argument("--resume", action="store_true", help="skip the rows already in --output (after an interruption)")
    run.add_argument("--on-error", choices=["raise", "record"], default="raise",
                     help="--input rows that fail: raise (stop, naming the line or row) or record (write the error "
                          "in an 'error' column and go on)")
    run.add_argument("--window", type=int,
                     help="rows read, run and written at a time (default: 512; 32 for generation tasks)")
    run.add_argument("--top-k", type=int)
    run.add_argument("--labels", help="zero-shot candidate labels, comma-separated")
    run.add_argument("--source", help="sentence-similarity: the sentence the others are compared with")
    run.add_argument("--question")
    run.add_argument("--context")
    run.add_argument("--aggregation-strategy", help="token-classification: none, simple, first, average or max")
    run.add_argument("--multi-label", action="store_true", help="zero-shot: score each label independently")
    run.add_argument("--hypothesis-template", help='zero-shot: e.g. "This example is {}."')
    run.add_argument("--max-new-tokens", type=int)
    run.add_argument("--max-length", type=int)
    run.add_argument("--num-beams", type=int)
    run.add_argument("--src-lang", help="translation: source language code for multilingual models (mBART: en_XX)")
    run.add_argument("--tgt-lang", help="translation: target language code for multilingual models (mBART: fr_XX)")
    run.add_argument("--temperature", type=float)
    run.add_argument("--pooling", help="feature-extraction: mean, cls, max or auto")
    run.add_argument("--normalize", action="store_true")
    run.add_argument("--truncation", action="store_true", help="cut inputs longer than the model accepts")
    run.add_argument("--json", action="store_true",
                     help="text-generation: print the JSON result instead of streaming the text")
    run.add_argument("--option", action="append", metavar="KEY=VALUE", help="any other task keyword")
    run.set_defaults(func=cmd_run)

    download = sub.add_parser("download", help="download a model into the Hugging Face cache")
    download.add_argument("model")
    download.add_argument("--revision")
    download.add_argument("--allow-pickle", action="store_true")
    download.set_defaults(func=cmd_download)

    tasks = sub.add_parser("tasks", help="list tasks and their default models")
    tasks.set_defaults(func=cmd_tasks)

    models = sub.add_parser("models", help="search Hub models that lightpipe loads, by task and language")
    models.add_argument("--task", help="a task or alias (sentiment-analysis, ner, translation_en_to_fr, ...)")
    models.add_argument("--language", help="a language tag, e.g. fr")
    models.add_argument("--search", help="text the model id contains")
    models.add_argument("--limit", type=int, default=20, help="models to list (default: 20)")
    models.add_argument("--all", action="store_true",
                        help="include models lightpipe can't load, saying why (loadable ones first)")
    models.add_argument("--json", action="store_true", help="one JSON object per line instead of the table")
    models.set_defaults(func=cmd_models)

    serve = sub.add_parser("serve", help="HTTP server (HF Inference API, OpenAI, TEI routes) and browser playground")
    serve.add_argument("--model", action="append", metavar="[NAME=][TASK=]MODEL[@REVISION]",
                       help="a model to serve (repeatable): a Hub id or a local folder, optionally with the name "
                            "clients use (default: the Hub id, or the folder's name), its task and a Hub revision")
    serve.add_argument("--revision", help="Hub revision of every --model given without @REVISION")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--device", help="cpu, cuda, cuda:1")
    serve.add_argument("--dtype", help="float32, bfloat16, float16 or auto (the checkpoint's)")
    serve.add_argument("--quantize", choices=["int8"], help="int8: weight-only int8 linear layers")
    serve.add_argument("--threads", type=positive(int),
                       help="torch intra-op threads per batch (default: all cores but one, for the event loop)")
    limits = serve.add_argument_group("limits (beyond them: 4xx)")
    limits.add_argument("--max-batch-tokens", type=positive(int), default=16384,
                        help="input tokens coalesced into one batch across concurrent requests (default: 16384)")
    limits.add_argument("--max-concurrent-requests", type=positive(int), default=512,
                        help="inference requests in flight, counted once their body is in; beyond: 429 (default: 512)")
    limits.add_argument("--max-client-batch-size", type=positive(int), default=2048,
                        help="inputs in one request; beyond: 413 (default: 2048, OpenAI's embeddings batch)")
    limits.add_argument("--max-body-bytes", type=positive(int), default=8 * 1024 * 1024,
                        help="request body size; beyond: 413 (default: 8 MiB)")
    limits.add_argument("--max-input-tokens", type=positive(int),
                        help="generation: prompt tokens; beyond: 422 (default: the model's context less one)")
    limits.add_argument("--max-total-tokens", type=positive(int),
                        help="generation: prompt + new tokens (new tokens for encoder-decoders); beyond: 422 "
                             "(default and ceiling: the model's context)")
    limits.add_argument("--max-sequences", type=positive(int), default=8,
                        help="n / num_return_sequences / num_beams / best_of per prompt; beyond: 422 (default: 8)")
    limits.add_argument("--header-timeout", type=positive(float), default=10.0,
                        help="seconds for a request's headers; then the connection is closed (default: 10)")
    limits.add_argument("--body-timeout", type=positive(float), default=30.0,
                        help="seconds for a request's body; then 408 (default: 30)")
    limits.add_argument("--shutdown-timeout", type=positive(float), default=30.0,
                        help="seconds open requests get after SIGTERM before they are cancelled (default: 30)")
    access = serve.add_argument_group("access")
    access.add_argument("--api-key", action="append", metavar="KEY",
                        help=f"require `Authorization: Bearer KEY` (repeatable; also ${API_KEY_ENV}); /health stays open")
    access.add_argument("--api-key-file", metavar="FILE", help="API keys, one per line")
    access.add_argument("--cors-origin", action="append", metavar="ORIGIN",
                        help="a browser origin allowed to call the API, e.g. https://app.example.com (repeatable; "
                             "default: none)")
    access.add_argument("--allow-load", action="store_true", help="let the playground load Hub models by id")
    access.add_argument("--allow-load-local", action="store_true",
                        help="with --allow-load: also folders on the server (anyone who can reach the API picks one)")
    access.add_argument("--max-models", type=positive(int), default=16,
                        help="models held at once, failed loads included until cleared (default: 16)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = parser._subparsers._group_actions[0].choices  # name → subcommand parser
    if argv and argv[0] in commands:
        # intermixed, so `run sentence-similarity --source A B C` gives B and C to the texts
        args = commands[argv[0]].parse_intermixed_args(argv[1:])
    else:
        args = parser.parse_args(argv)  # usage / --help
    try:
        args.func(args)
        sys.stdout.flush()  # here, where a closed pipe is caught, not in Python's flush at exit
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # before OSError: `lightpipe run ... | head -1` is no error
        return _stdout_gone()
    except Exception as e:
        if (os.environ.get(DEBUG_ENV) or "").strip().lower() in {"1", "true", "yes", "on"}:
            raise
        # the errors lightpipe raises on purpose (bad input, missing model or file) say what to do;
        # anything else is a bug or an environment problem: name its type and how to see more
        expected = isinstance(e, (ValueError, TypeError, OSError, ImportError))
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        if not expected:
            message = f"unexpected {type(e).__name__}" + (f": {message}" if message else "") + \
                f" (set {DEBUG_ENV}=1 to see the traceback)"
        print(f"lightpipe: error: {message or type(e).__name__}", file=sys.stderr)
        return EXIT_USAGE if expected else EXIT_UNEXPECTED
    return 0


def _stdout_gone() -> int:
    """The reader of stdout has gone: stop quietly, as Unix tools do. stdout now points at
    /dev/null so that Python's flush at exit doesn't fail a second time (Python docs, "Note
    on SIGPIPE")."""
    if sys.stdout is sys.__stdout__:  # not when a caller (a test) has replaced stdout
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
    return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
