"""The benchmarks' pure parts on hand-made data (no server, no timing): serve_generation's
SSE parsing, what a stream's chunks and usage count as, the request mix, the row statistics,
and the table's ratios and targets; ct2_overhead's turn-taking timer."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serve_generation", ROOT / "benchmarks" / "serve_generation.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def completion_lines(texts, usage=None, finish="length"):
    """A /v1/completions stream as lightpipe sends it: a chunk per text, a finish chunk, the
    usage chunk, [DONE]; blank separators between events."""
    import json

    lines = []
    for text in texts:
        lines += [f"data: {json.dumps({'choices': [{'index': 0, 'text': text, 'finish_reason': None}]})}", ""]
    lines += [f"data: {json.dumps({'choices': [{'index': 0, 'text': '', 'finish_reason': finish}]})}", ""]
    if usage is not None:
        lines += [f"data: {json.dumps({'choices': [], 'usage': {'completion_tokens': usage}})}", ""]
    return lines + ["data: [DONE]", ""]


def timed(lines, start=10.0, step=0.5):
    return [(start + step * i, line) for i, line in enumerate(lines)]


def test_sse_data(bench):
    assert bench.sse_data('data: {"a": 1}') == {"a": 1}
    assert bench.sse_data("data:[DONE]") == bench.DONE
    assert bench.sse_data("") is None
    assert bench.sse_data(": keep-alive") is None
    assert bench.sse_data("event: message") is None


def test_chunk_text_completion_and_chat(bench):
    assert bench.chunk_text({"choices": [{"text": " w2001"}]}) == " w2001"
    assert bench.chunk_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert bench.chunk_text({"choices": [{"delta": {"role": "assistant"}}]}) == ""
    assert bench.chunk_text({"choices": [], "usage": {"completion_tokens": 3}}) == ""


def test_read_stream_times_and_counts(bench):
    lines = timed(completion_lines([" a", " b", " c"], usage=3))  # text chunks at lines 0, 2, 4
    s = bench.read_stream(max_tokens=4, start=9.0, end=20.0, timed_lines=lines)
    assert s.error is None and s.done
    assert s.chunk_times == [10.0, 11.0, 12.0]
    assert s.ttft == pytest.approx(1.0)
    assert s.gaps == pytest.approx([1.0, 1.0])
    assert s.finish_reason == "length"
    assert s.tokens() == (3, "usage")


def test_usage_count_outside_the_possible_range_falls_back_to_chunks(bench):
    over = bench.read_stream(4, 0.0, 1.0, timed(completion_lines([" a", " b"], usage=9)))  # > max_tokens
    assert over.tokens() == (2, "usage out of range")
    under = bench.read_stream(4, 0.0, 1.0, timed(completion_lines([" a", " b", " c"], usage=2)))  # < chunks
    assert under.tokens() == (3, "usage out of range")
    more = bench.read_stream(8, 0.0, 1.0, timed(completion_lines([" a", " bc"], usage=3)))  # a chunk of 2 tokens
    assert more.tokens() == (3, "usage")
    none = bench.read_stream(8, 0.0, 1.0, timed(completion_lines([" a", " b"])))
    assert none.tokens() == (2, "no usage")
    extra = bench.read_stream(2, 0.0, 1.0, timed(completion_lines([" ", "a", " b"])))  # a lone space first
    assert extra.tokens() == (2, "no usage")


def test_read_stream_errors(bench):
    cut = bench.read_stream(4, 0.0, 1.0, timed(completion_lines([" a"])[:2]))
    assert "[DONE]" in cut.error
    no_done = bench.read_stream(4, 0.0, 1.0, timed(completion_lines([" a"])[:4]))  # ends at its finish_reason
    assert no_done.error is None and no_done.finish_reason == "length"
    failed = bench.read_stream(4, 0.0, 1.0, timed(['data: {"error": {"message": "boom"}}', "", "data: [DONE]"]))
    assert "boom" in failed.error


def test_request_mix_cycles_every_pair(bench):
    jobs = bench.request_mix(["p0", "p1"], 9)
    assert {(j.max_tokens, j.temperature) for j in jobs} == {(m, t) for m in (16, 32, 64) for t in (0.0, 0.7, 1.0)}
    assert all((j.seed is None) == (j.temperature == 0) for j in jobs)
    assert [j.prompt for j in jobs[:3]] == ["p0", "p1", "p0"]
    split = bench.per_client(bench.request_mix(["p"], 48), 16)
    assert [len(mine) for mine in split] == [3] * 16
    assert all(sorted(j.max_tokens for j in mine) == [16, 32, 64] for mine in split)


def test_summarize_and_table(bench):
    def stream(start, times, usage, max_tokens=64, error=None):
        s = bench.Stream(max_tokens, start, times[-1] if times else start, list(times), usage, "length", True, error)
        return s

    one = [stream(0.0, [1.0, 1.5, 2.0], 3), stream(2.0, [3.0, 3.5], 2)]
    base = bench.summarize("one at a time", 1, one, wall=4.0) | {"kind": "baseline"}
    assert base["tokens"] == 5 and base["tok_s"] == pytest.approx(1.25)
    assert base["ttft_p50"] == pytest.approx(1000.0) and base["itl_p99"] == pytest.approx(500.0)
    assert (base["usage_rejected"], base["usage_missing"]) == (0, 0)
    many = [stream(0.0, [0.2 + 0.1 * k for k in range(10)], 10) for _ in range(16)] + \
        [stream(0.0, [], None, error="HTTP 503: busy")]
    row = bench.summarize("16 concurrent clients", 16, many, wall=2.0) | {"kind": "clients"}
    assert row["requests"] == 17 and row["errors"] == 1 and row["first_error"] == "HTTP 503: busy"
    assert row["tokens"] == 160 and bench.ratio(row, base) == pytest.approx(64.0)
    assert bench.target(row, base) == "≥ 4x: met"
    slow = bench.summarize("16 concurrent clients", 16, many[:1], wall=5.0) | {"kind": "clients"}
    assert bench.target(slow, base) == "≥ 4x: missed"
    under = [stream(0.0, [3.0, 3.1], 2), stream(0.0, [0.5, 0.6], 2)]
    batch = bench.summarize("16 clients + a 32-prompt request", 16, under, wall=4.0, extra_tokens=100,
                            ttft_of=under[1:]) | {"kind": "batch"}
    assert batch["tokens"] == 104 and batch["ttft_p99"] == pytest.approx(500.0)  # only the stream that ran during it
    assert bench.target(batch, base) == "TTFT p99 < 2 s: met"
    table = bench.markdown_table([base, row, batch], {"one at a time": base, "16 concurrent clients": None})
    lines = table.splitlines()
    assert len(lines) == 5 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| 64.00x |" in lines[3] and lines[3].endswith("| – |")
    assert lines[2].endswith("| 1.2 (1.00x), TTFT p99 1000 ms |")
    odd = bench.summarize("4 concurrent clients", 4, [stream(0.0, [1.0, 2.0], 99, max_tokens=16),
                                                      stream(0.0, [1.0], None)], wall=1.0)
    assert (odd["tokens"], odd["usage_rejected"], odd["usage_missing"]) == (3, 1, 1)
    note = bench.token_count_note([base, odd])
    assert "8 streamed tokens in 8 text chunks over 4 requests; 2 requests counted from their usage chunk" in note
    assert "; 1 requests from their text chunks, as their completion_tokens was outside" in note
    assert "; 1 requests from their text chunks, having no usage chunk" in note
    empty = bench.summarize("4 concurrent clients", 4, [stream(0.0, [], None, error="x")], wall=1.0)
    assert empty["ttft_p99"] is None and "| – |" in bench.markdown_table([base, empty], {})


def test_head_to_head_calls_take_turns_and_keep_each_ones_best(monkeypatch):
    """ct2_overhead.alternate: A B A B ..., each call's best time, and its last result."""
    spec = importlib.util.spec_from_file_location("ct2_overhead", ROOT / "benchmarks" / "ct2_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clock, order = [0.0], []
    monkeypatch.setattr(module.time, "perf_counter", lambda: clock[0])
    took = {"a": iter([3.0, 1.0, 2.0]), "b": iter([2.0, 2.5, 4.0])}

    def call(name):
        def run():
            order.append(name)
            clock[0] += next(took[name])
            return f"{name}{len(order)}"
        return run

    best = module.alternate({"a": call("a"), "b": call("b")}, 3)
    assert order == ["a", "b"] * 3
    assert best == {"a": (1.0, "a5"), "b": (2.0, "b6")}
