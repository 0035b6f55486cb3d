"""question-answering (extractive) with transformers 4.57.6's semantics: the context is cut
into overlapping windows (`max_seq_len`, `doc_stride`), every window of every question is
scored in one length-sorted batch, and the best spans across windows are mapped back to
exact character offsets in the context.

Span scoring follows transformers' `select_starts_ends` / `decode_spans` step for step, in
numpy float32, so ties and near-ties break the same way."""

from __future__ import annotations

import types
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from ..rows import column_text
from .base import check_known, check_positive_int
from .encoder import EncodedRow, EncoderPipeline

DEFAULT_MAX_QUESTION_LEN = 64
DEFAULT_MAX_ANSWER_LEN = 15


@dataclass
class Window(EncodedRow):
    """One (question, context window) row: ids for the batcher, the rest for postprocess."""

    context: str
    p_mask: np.ndarray  # 1 where a token can't be part of an answer (question, special tokens)
    context_index: int  # which sequence of the pair is the context


def decode_spans(start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int, allowed: np.ndarray):
    """The `topk` best (start, end) token spans by start_prob * end_prob, with end >= start and
    at most `max_answer_len` tokens; spans touching a token not `allowed` are dropped after
    the top-k cut (transformers' order of operations)."""
    outer = np.matmul(start[:, :, None], end[:, None, :])  # (1, T, T)
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if topk == 1:
        order = [np.argmax(flat)]
    elif len(flat) < topk:
        order = np.argsort(-flat)
    else:
        idx = np.argpartition(-flat, topk)[0:topk]
        order = idx[np.argsort(-flat[idx])]
    starts, ends = np.unravel_index(order, candidates.shape)[1:]
    keep = np.isin(starts, allowed.nonzero()) & np.isin(ends, allowed.nonzero())
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[0, starts, ends]


def select_starts_ends(start, end, p_mask, min_null_score, top_k, handle_impossible_answer, max_answer_len):
    """Softmax the window's start/end logits over the tokens that may answer (context and
    CLS), track the no-answer score (CLS start * CLS end), then decode spans without CLS."""
    # (1, T), 1 = may be part of an answer (rows are unpadded). Kept 2-D like transformers: its
    # `allowed.nonzero()` then also lists row index 0, which makes token 0 always "allowed".
    allowed = np.abs(p_mask[None].astype(np.int64) - 1)
    blocked = allowed == 0
    start = np.where(blocked, np.float32(-10000.0), start[None])
    end = np.where(blocked, np.float32(-10000.0), end[None])
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    if handle_impossible_answer:
        min_null_score = min(min_null_score, (start[0, 0] * end[0, 0]).item())
    start[0, 0] = end[0, 0] = 0.0
    starts, ends, scores = decode_spans(start, end, top_k, max_answer_len, allowed)
    return starts, ends, scores, min_null_score


def check_item(item) -> dict:
    if not isinstance(item, dict):
        raise TypeError(
            'question-answering inputs must be {"question": str, "context": str} dicts (or question=, context= '
            f"keywords), got {type(item).__name__}: {item!r:.60}"
        )
    for key in ("question", "context"):
        if key not in item:
            raise ValueError(f'question-answering input needs a "{key}" key: {{"question": ..., "context": ...}}')
        value = item[key]
        if value is None:
            raise ValueError(f"`{key}` cannot be None")
        if not isinstance(value, str):
            raise TypeError(f"`{key}` must be a string, got {type(value).__name__}")
        if not value.strip():
            raise ValueError(f"`{key}` cannot be empty")
    extra = set(item) - {"question", "context"}
    if extra:
        raise ValueError(f"question-answering input has unknown keys {sorted(extra)}; expected question and context")
    return item


class QuestionAnsweringPipeline(EncoderPipeline):
    """Extractive QA. Inputs as in transformers: `question=` and `context=` keywords (strings,
    or a list of questions with one context or a list of each), a dict or a list of dicts
    {"question", "context"}, two positional strings, or the legacy `X=` / `data=`. One
    question gives one answer dict (a list of them with top_k > 1); several give a list.

    Keywords: top_k (1), doc_stride (min(max_seq_len // 2, 128)), max_answer_len (15),
    max_seq_len (min(model max, 384)), max_question_len (64: longer questions are cut to it,
    as transformers documents), handle_impossible_answer (False), align_to_words (True)."""

    task = "question-answering"
    head = "question-answering"
    token_outputs = True
    unwraps_list_of_one = True  # one question gives its answer, not a list of one
    list_column = "answers"
    hf_request = "question-context"
    hf_parameters = frozenset({"top_k", "doc_stride", "max_answer_len", "max_seq_len", "max_question_len",
                               "handle_impossible_answer", "align_to_words"})
    OPTIONS = {"top_k", "topk", "doc_stride", "max_answer_len", "max_seq_len", "max_question_len",
               "handle_impossible_answer", "align_to_words", "padding", "batch_size"}

    def check_options(self, options):
        check_known(options, self.OPTIONS, self.task)
        options = dict(options)
        options.pop("padding", None)  # padding doesn't change the answers; rows are padded per batch
        if "topk" in options:
            topk = options.pop("topk")
            if options.get("top_k") is None and topk is not None:
                warnings.warn("topk parameter is deprecated, use top_k instead", UserWarning, stacklevel=4)
                options["top_k"] = topk
        for name in ("top_k", "max_answer_len", "max_seq_len", "max_question_len"):
            if options.get(name) is not None:
                check_positive_int(options[name], name)
        if options.get("doc_stride") is not None:
            stride = options["doc_stride"]
            if isinstance(stride, bool) or not isinstance(stride, int) or stride < 0:
                raise ValueError(f"doc_stride must be a non-negative integer, got {stride!r}")
        max_seq_len = options.get("max_seq_len")
        if max_seq_len is not None and max_seq_len > self.max_input_tokens:
            raise ValueError(f"max_seq_len ({max_seq_len}) is more than the {self.max_input_tokens} tokens "
                             f"{self.model_id or 'the model'} accepts")
        return {k: v for k, v in options.items() if v is not None}

    # -- inputs --------------------------------------------------------------------------

    def parse_call(self, args, kwargs):
        inputs = {k: kwargs.pop(k) for k in ("question", "context", "X", "data") if k in kwargs}
        items = self.parse_inputs(args, inputs)
        if isinstance(items, list):
            if not items:
                raise ValueError("no question given: pass question= and context=")
            items = [check_item(item) for item in items]
        return items, kwargs

    @staticmethod
    def parse_inputs(args: tuple, kwargs: dict):
        """transformers' QuestionAnsweringArgumentHandler: → a list of dicts, or a generator."""
        if args:
            if kwargs:
                raise ValueError(f"give the inputs positionally or as {sorted(kwargs)} keywords, not both")
            if len(args) == 1:
                inputs = args[0]
            elif len(args) == 2 and all(isinstance(a, str) for a in args):
                inputs = [{"question": args[0], "context": args[1]}]
            else:
                inputs = list(args)
        elif "X" in kwargs or "data" in kwargs:
            name = "X" if "X" in kwargs else "data"
            warnings.warn(f"Passing the `{name}` argument is deprecated; use the question= and context= keywords",
                          FutureWarning, stacklevel=3)
            inputs = kwargs[name]
        elif "question" in kwargs and "context" in kwargs:
            question, context = kwargs["question"], kwargs["context"]
            if isinstance(question, list) and isinstance(context, str):
                inputs = [{"question": q, "context": context} for q in question]
            elif isinstance(question, list) and isinstance(context, list):
                if len(question) != len(context):
                    raise ValueError(f"question and context lists differ in length ({len(question)} vs {len(context)})")
                inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
            elif isinstance(question, str) and isinstance(context, str):
                inputs = [{"question": question, "context": context}]
            else:
                raise TypeError("question and context must be strings, or a list of questions with a context "
                                f"string or list, got {type(question).__name__} and {type(context).__name__}")
        elif "question" in kwargs or "context" in kwargs:
            missing = "context" if "question" in kwargs else "question"
            raise ValueError(f"`{missing}` is missing: question-answering needs both question= and context=")
        else:
            raise ValueError('question-answering needs question= and context= (or {"question": ..., "context": ...})')
        if isinstance(inputs, types.GeneratorType):
            return inputs
        if isinstance(inputs, dict):
            return [inputs]
        if isinstance(inputs, str) or not isinstance(inputs, Iterable):
            raise TypeError('question-answering inputs must be {"question": str, "context": str} dicts or '
                            f"question=/context= keywords, got {type(inputs).__name__}")
        return list(inputs)

    # -- rows ----------------------------------------------------------------------------

    def preprocess(self, item, doc_stride=None, max_seq_len=None, max_question_len=DEFAULT_MAX_QUESTION_LEN, **options):
        item = check_item(item)
        question, context = item["question"], item["context"]
        if max_seq_len is None:
            max_seq_len = min(self.tokenizer.model_max_length, 384, self.max_input_tokens)
        if doc_stride is None:
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise ValueError(f"doc_stride ({doc_stride}) is larger than max_seq_len ({max_seq_len})")
        question = self.cut_question(question, max_question_len)

        question_first = self.tokenizer.padding_side == "right"
        first, second = (question, context) if question_first else (context, question)
        enc = self.tokenizer.encode_batch([first], [second])[0]
        if len(enc.ids) > max_seq_len:
            seq = 1 if question_first else 0
            fixed = sum(1 for s in enc.sequence_ids if s != seq)  # question and special tokens
            room = max_seq_len - fixed
            if room <= doc_stride:
                raise ValueError(
                    f"the question takes {fixed} of the max_seq_len={max_seq_len} tokens (with special tokens), "
                    f"leaving {max(room, 0)} for each context window, which must be more than doc_stride={doc_stride}; "
                    "shorten the question, lower doc_stride or max_question_len, or raise max_seq_len"
                )
            side = "only_second" if question_first else "only_first"  # cut the context, never the question
            enc = self.tokenizer.encode_batch([first], [second], truncation=side, max_length=max_seq_len,
                                              stride=doc_stride)[0]
        windows = []
        for e in [enc, *enc.overflowing]:
            # question and special tokens can't answer (with the question second, transformers masks nothing)
            p_mask = np.array([s != 1 if question_first else False for s in e.sequence_ids])
            cls = self.tokenizer.cls_token_id
            if cls is not None:
                p_mask[np.array(e.ids) == cls] = False  # CLS stays: it scores the "no answer" case
            windows.append(Window(e, context, p_mask, 1 if question_first else 0))
        return windows

    def cut_question(self, question: str, max_question_len: int) -> str:
        """transformers documents max_question_len as truncating the question (its fast-tokenizer
        path ignores it): cut the text after the max_question_len-th token."""
        enc = self.tokenizer.encode(question, add_special_tokens=False)
        if len(enc.ids) <= max_question_len:
            return question
        return question[:enc.offsets[max_question_len - 1][1]]


    # -- answers -------------------------------------------------------------------------

    def postprocess(self, rows, outputs, top_k=1, handle_impossible_answer=False,
                    max_answer_len=DEFAULT_MAX_ANSWER_LEN, align_to_words=True, **options):
        min_null_score = 1000000.0
        answers: list[dict] = []
        pre_topk = top_k * 2 + 10 if align_to_words else top_k  # word alignment may merge candidates
        for window, (start, end) in zip(rows, outputs):
            starts, ends, scores, min_null_score = select_starts_ends(
                start.numpy(), end.numpy(), window.p_mask, min_null_score, pre_topk, handle_impossible_answer,
                max_answer_len)
            for s, e, score in zip(starts, ends, scores):
                first, last = self.char_span(window, int(s), int(e), align_to_words)
                text = window.context[first:last]
                same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
                if same is not None:  # the same answer from another window (or token span) adds up
                    same["score"] += score.item()
                else:
                    answers.append({"score": score.item(), "start": first, "end": last, "answer": text})
        if handle_impossible_answer:
            answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
        return answers[0] if len(answers) == 1 else answers

    @staticmethod
    def char_span(window: Window, s: int, e: int, align_to_words: bool) -> tuple[int, int]:
        enc = window.encoding
        if align_to_words:
            try:  # widen to whole words when the tokenizer knows them
                start_word, end_word = enc.token_to_word(s), enc.token_to_word(e)
                return (enc.word_to_chars(start_word, window.context_index)[0],
                        enc.word_to_chars(end_word, window.context_index)[1])
            except Exception:
                pass
        return enc.offsets[s][0], enc.offsets[e][1]

    # -- front-end facts ------------------------------------------------------------------

    @classmethod
    def arrow_types(cls, pa, options):
        f64, i64, s = pa.float64(), pa.int64(), pa.string()
        return {"score": f64, "start": i64, "end": i64, "answer": s,
                "answers": pa.list_(pa.struct([("score", f64), ("start", i64), ("end", i64), ("answer", s)]))}

    @classmethod
    def row_input(cls, row, columns):
        return {"question": column_text(row, columns.question or "question", "--question-column"),
                "context": column_text(row, columns.context or "context", "--context-column")}

    @classmethod
    def input_columns(cls, columns):
        return [columns.question or "question", columns.context or "context"]

    @classmethod
    def cli_inputs(cls, texts, *, source=None, question=None, context=None):
        if not (question and context):
            raise ValueError("question-answering needs both --question and --context")
        if texts:
            raise ValueError("question-answering takes --question and --context, not TEXT arguments")
        return super().cli_inputs([{"question": question, "context": context}], source=source)
