"""What every pipeline shares: construction, options, the call, and the facts the front-ends
ask a task's class for.

`batch(items, **options)` is the one regular method: one result per input, in order, the
call's options validated once and merged over the pipeline's defaults. The CLI and files, the
server and Ray call it. `__call__` is `batch` plus transformers' shape rules for the input form
(one input, a list, a generator read in windows). Two bases implement `run`, the work behind
both: `encoder.EncoderPipeline` (rows through the length-sorted batcher) and
`generative.GenerationPipeline` (prompts through the generation engine).

The front-ends keep no tables of tasks: what differs per task (is it a generation task, how a
result becomes columns, its Arrow types, its HF Inference API request shape and parameters,
how a file row or the command line becomes an input) is declared on the task's class.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch

from ..rows import Columns, column_text, column_value

DEFAULT_MAX_BATCH_TOKENS = 8192  # padded tokens per forward pass: fits caches, amortises overhead
WINDOW_ITEMS = 512  # items read at a time from a stream: flat memory, still room to sort
NO_LIMIT = int(1e20)  # transformers' LARGE_INTEGER: a model_max_length above it means "no limit"


class Pipeline:
    task: str = ""
    head: str = "base"  # which model head this task needs (see loading.ARCHITECTURE_HEADS)
    input_name = "inputs"  # the call's input keyword (transformers' name for the task)
    unwraps_list_of_one = False  # transformers answers a list of one input with that input's bare result

    # -- front-end facts ------------------------------------------------------------------
    generates = False  # generation task: slow per input (small file windows), served by completion routes
    takes_chat = False  # an input may be a chat (a list of messages): served by chat completion routes
    file_window = 512  # rows read, run and written at a time from a file
    list_column: str | None = None  # the column a list result goes in (files, Ray)
    vector_columns: tuple[str, ...] = ()  # float vector columns: float32 in Parquet, a tensor column in Ray
    hf_request = "texts"  # the HF Inference API request shape (server.hf_api.HANDLERS)
    hf_parameters: frozenset[str] = frozenset()  # the HF Inference API's parameter names (routes `POST /`)
    hf_defaults: dict = {}  # options the HF Inference API defaults differently from pipeline()

    def __init__(self, model, tokenizer, config: dict, *, model_id: str = "", device=None,
                 batch_size: int | None = None, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 folder=None, allow_pickle: bool = False, task_name: str | None = None, **defaults):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.model_id = model_id
        self.folder = folder
        self.allow_pickle = allow_pickle  # for files read after loading (sentence-transformers' Dense weights)
        self.device = next(model.parameters()).device if device is None else torch.device(device)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.max_batch_tokens = check_positive_int(max_batch_tokens, "max_batch_tokens")
        self.task_name = task_name or self.task  # the name it was asked for ("translation_en_to_fr")
        self.id2label = {int(k): v for k, v in (config.get("id2label") or {}).items()}
        self.label2id = {v: k for k, v in self.id2label.items()}
        self.setup()
        self.defaults = self.check_defaults(defaults)  # last: the checks may use the task's state

    def setup(self) -> None:
        """The task's own state (runs before the defaults are checked, so the checks can use it)."""

    def check_defaults(self, defaults: dict) -> dict:
        """The pipeline's default options (the keywords given to pipeline()), checked once."""
        return self.check_options(defaults)

    @classmethod
    def head_for(cls, config: dict) -> str:
        """The model head to load for this task and checkpoint."""
        return cls.head

    @classmethod
    def load_tokenizer(cls, folder, config: dict):
        from ..tokenization import load

        return load(folder, config.get("model_type"))

    # -- the calls ------------------------------------------------------------------------

    def batch(self, items: list, **options) -> list:
        """One result per input, in input order: the regular call the front-ends make."""
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"batch() takes a list of inputs, got {type(items).__name__}")
        options = self.call_options(options)
        return self.run(list(items), options) if items else []

    def __call__(self, *args, **kwargs):
        """transformers' call: `batch` with the output nested as transformers nests it for the
        input form; a generator (or any other iterable) gives an iterator of results."""
        inputs, kwargs = self.parse_call(args, kwargs)
        options = self.call_options(kwargs)
        single = self.is_single(inputs)
        if single or isinstance(inputs, (list, tuple)):
            items = [inputs] if single else list(inputs)
            if not items:
                raise ValueError(f"{self.input_name} is an empty list; pass at least one input")
            return self.shape(self.run(items, options), single, inputs, kwargs)
        if isinstance(inputs, Iterable):
            return self.run_stream(iter(inputs), options)
        raise TypeError(f"{self.input_name} must be a string, a list of strings or an iterable of them, "
                        f"got {type(inputs).__name__}")

    def call_options(self, kwargs: dict) -> dict:
        """A call's keywords checked and merged over the pipeline's defaults: what `run` gets."""
        return self.with_defaults(self.check_options(dict(kwargs)))

    def with_defaults(self, checked: dict) -> dict:
        options = {**self.defaults, **checked}
        options["batch_size"] = check_positive_int(options.get("batch_size", self.batch_size), "batch_size")
        return options

    def run_stream(self, items: Iterator, options: dict) -> Iterator:
        """Results for an unbounded stream, read in windows so memory stays flat."""
        while window := list(itertools.islice(items, WINDOW_ITEMS)):
            yield from self.run(window, options)

    # -- to write per task ----------------------------------------------------------------

    def check_options(self, options: dict) -> dict:
        """Validate call keywords; unknown keywords are an error (don't silently ignore)."""
        return options

    def run(self, items: list, options: dict) -> list:
        """One result per item; `options` come from `call_options` (the bases implement this)."""
        raise NotImplementedError

    def parse_call(self, args: tuple, kwargs: dict) -> tuple:
        """(the call's input, its option keywords): one positional input or `input_name=`."""
        if self.input_name in kwargs:
            if args:
                raise TypeError(f"{self.input_name} was given both positionally and as a keyword")
            args = (kwargs.pop(self.input_name),)
        if len(args) > 1:
            raise TypeError(f"{self.task} takes one positional argument ({self.input_name}), got {len(args)}; "
                            "pass options as keywords")
        return (args[0] if args else None), kwargs

    def is_single(self, inputs) -> bool:
        """Whether `inputs` is one input (a string, a dict; a task may add forms, e.g. a chat)."""
        return isinstance(inputs, (str, dict))

    def shape(self, results: list, single: bool, inputs, kwargs: dict):
        """transformers' nesting of the results for this input form."""
        if single or (self.unwraps_list_of_one and len(results) == 1):
            return results[0]
        return [self.in_list(r) for r in results]

    def in_list(self, result):
        """A result as transformers returns it inside the list a list of inputs gives."""
        return result

    # -- front-end facts (files, Ray, the CLI, the server) --------------------------------

    @classmethod
    def columns(cls, result) -> dict:
        """One result → {column: value}, the same columns for every row of a run: a dict's keys,
        a list in `list_column`, anything else in `result`."""
        if isinstance(result, dict):
            return dict(result)
        if cls.list_column and isinstance(result, list):
            return {cls.list_column: result}
        return {"result": result}

    @classmethod
    def arrow_types(cls, pa, options: dict) -> dict:
        """Arrow types of result columns, for a column whose first values are all null or empty."""
        return {}

    @classmethod
    def row_input(cls, row: dict, columns: Columns):
        """One table row → this task's input: the text column ("text"), with "text_pair" when
        a row has one. Raises ValueError for a row holding no text to run."""
        text = column_text(row, columns.text or "text", "--column")
        pair = columns.pair or ("text_pair" if columns.text is None and row.get("text_pair") is not None else None)
        if pair:
            # the pair may be "" (a CSV cell can't say null): it is passed on as it is
            return {"text": text, "text_pair": column_value(row, pair, "--pair-column")}
        return text

    @classmethod
    def input_columns(cls, columns: Columns) -> list[str]:
        """The columns `row_input` reads when the text column is named."""
        return [columns.text or "text", *([columns.pair] if columns.pair else [])]

    @classmethod
    def cli_inputs(cls, texts: list[str], *, source=None, question=None, context=None) -> list:
        """The inputs named on the command line (TEXT arguments, --source, --question/--context)."""
        if question or context:
            raise ValueError(f"--question and --context don't apply to {cls.task}")
        if source:
            raise ValueError(f"--source doesn't apply to {cls.task}")
        if not texts:
            raise ValueError("no input: give TEXT arguments or --input FILE")
        return list(texts)

    def claims_text(self, text: str) -> bool:
        """Whether a text is plainly meant for this pipeline (routes the server's `POST /`)."""
        return False

    def server_info(self) -> dict:
        """What the server's /info says about this pipeline beyond the common fields."""
        return {}

    # -- shared helpers -------------------------------------------------------------------

    @property
    def max_positions(self) -> int | None:
        """Longest input the model's position table holds (None: no table in the config)."""
        positions = self.config.get("max_position_embeddings")
        model_type = self.config.get("model_type")
        if positions and model_type in ("roberta", "xlm-roberta", "camembert"):
            positions -= (self.config.get("pad_token_id") or 1) + 1  # positions start after padding_idx
        elif positions and model_type == "mpnet":
            positions -= 2  # RoBERTa's numbering with padding_idx 1, which MPNet hard-codes
        if model_type == "deberta-v2" and self.config.get("position_biased_input") is False:
            return None  # DeBERTa-v3: relative positions only, no table to run out of
        return positions

    @property
    def max_input_tokens(self) -> int:
        """Longest input the model accepts: the tokenizer's limit, capped by the position table;
        10**9 when neither sets one (a tokenizer's 1e30 "no limit" is more than the tokenizers
        library can truncate to)."""
        limits = [n for n in (self.tokenizer.model_max_length, self.max_positions) if n and n <= NO_LIMIT]
        return min(limits) if limits else 10**9


def check_text(value, name: str = "inputs") -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {type(value).__name__}: {value!r:.60}")
    return value


def check_positive_int(value, name: str):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_known(options: dict, known: set[str], task: str) -> None:
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"{task} got unexpected keyword argument(s) {unknown}; accepted: {sorted(known)}")

