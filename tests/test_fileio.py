"""`lightpipe run --input FILE`: text lines, JSON lines, CSV/TSV and Parquet in and out, streamed
in windows, flattened result columns, and --resume after an interruption giving the same
output as an uninterrupted run."""

import csv
import json
import math

import pytest

from lightpipe import pipeline
from lightpipe.cli import main
from lightpipe.fileio import read_windows, run_file
from lightpipe.rows import Columns, flatten_result, row_input
from tiny import encoder_checkpoint, sentences

import pyarrow as pa  # noqa: E402  (the files extra; `make test` installs it)
import pyarrow.parquet as pq  # noqa: E402

SST2 = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
# real sentences (short enough for the tiny model's 64 positions), plus CSV's hard cases
TEXTS = [s for s in sentences(400) if len(s) < 150][:237] + [
    'She said "great, just great", and left.', "line one\nline two, with a comma", "Ünïcödé — ✓"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return encoder_checkpoint(tmp_path_factory.mktemp("clf"), "bert", "sequence-classification", **SST2)


@pytest.fixture(scope="module")
def pipe(classifier):
    return pipeline("sentiment-analysis", model=classifier)


@pytest.fixture(scope="module")
def expected(pipe):
    return pipe(TEXTS)


def write_input(path, fmt, texts=TEXTS):
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    if fmt == "text":
        path.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt in ("csv", "tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, ["id", "text"], delimiter="\t" if fmt == "tsv" else ",")
            w.writeheader()
            w.writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=100)
    return path


def read_output(path):
    suffix = path.suffix
    fmt = {".txt": "text", ".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}[suffix]
    if fmt == "text":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [row for w in read_windows(path, fmt, window=100) for row in w.rows]


class Counting:
    """A pipeline wrapper that counts the inputs it computes, records window sizes, and can
    'crash' (KeyboardInterrupt) after a number of windows."""

    def __init__(self, pipe, crash_after=None):
        self.pipe, self.task, self.crash_after = pipe, pipe.task, crash_after
        self.items, self.windows = 0, []

    def __call__(self, inputs, **options):
        if self.crash_after is not None and len(self.windows) == self.crash_after:
            raise KeyboardInterrupt
        self.windows.append(len(inputs))
        self.items += len(inputs)
        return self.pipe(inputs, **options)


# -- formats ----------------------------------------------------------------------------------

EXT = {"text": "txt", "jsonl": "jsonl", "csv": "csv", "tsv": "tsv", "parquet": "parquet"}


@pytest.mark.parametrize("src, dst", [("text", "jsonl"), ("text", "csv"), ("jsonl", "jsonl"), ("csv", "csv"),
                                      ("tsv", "parquet"), ("parquet", "parquet"), ("parquet", "csv"),
                                      ("jsonl", "parquet")])
def test_formats_round_trip(tmp_path, pipe, expected, src, dst):
    source = write_input(tmp_path / f"in.{EXT[src]}", src)
    out = tmp_path / f"out.{EXT[dst]}"
    counting = Counting(pipe)
    assert run_file(counting, source, out, window=64, progress=False) == len(TEXTS)
    assert max(counting.windows) <= 64  # read, run and written a window at a time
    got = read_output(out)
    assert len(got) == len(TEXTS)
    if src == "text" and dst == "jsonl":  # text lines in, JSON lines out: exactly pipe(texts)
        want = pipe([t.replace("\n", " ") for t in TEXTS])
        assert [g["label"] for g in got] == [w["label"] for w in want]
        assert [g["score"] for g in got] == pytest.approx([w["score"] for w in want])
        assert all(set(g) == {"label", "score"} for g in got)
        return
    for i, (row, want) in enumerate(zip(got, expected)):
        text = TEXTS[i].replace("\n", " ") if src == "text" else TEXTS[i]
        assert row["text"] == text
        if src != "text":
            assert str(row["id"]) == str(i)  # input columns kept (CSV holds strings)
        assert row["label"] == want["label"] or src == "text"
        assert math.isclose(float(row["score"]), want["score"], abs_tol=1e-6) or src == "text"
    if dst == "parquet":
        schema = pq.read_schema(out)
        assert schema.field("score").type == pa.float64() and schema.field("label").type == pa.string()
        if src == "parquet":
            assert schema.field("id").type == pa.int64()  # input types kept
        assert not (tmp_path / "out.parquet.parts").exists()


def test_nested_results_as_json_in_csv_and_lists_in_parquet(tmp_path):
    """Entity lists (empty in the whole first window), embeddings and top_k lists."""

    class Fake:
        task = "token-classification"

        def __call__(self, inputs, **options):
            return [[] if len(t) < 20 else [{"entity": "B-X", "score": 0.5, "index": 1, "word": t[:3], "start": 0, "end": 3}]
                    for t in inputs]

    texts = ["short"] * 10 + ["a much longer text here"] * 5
    source = write_input(tmp_path / "in.jsonl", "jsonl", texts)
    run_file(Fake(), source, tmp_path / "out.parquet", window=10, progress=False)
    table = pq.read_table(tmp_path / "out.parquet")
    assert pa.types.is_list(table.schema.field("entities").type)
    assert table.column("entities").to_pylist()[-1] == [{"entity": "B-X", "score": 0.5, "index": 1, "word": "a m",
                                                          "start": 0, "end": 3}]
    run_file(Fake(), source, tmp_path / "out.csv", window=10, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "out.csv", encoding="utf-8")))
    assert json.loads(rows[0]["entities"]) == [] and json.loads(rows[-1]["entities"])[0]["word"] == "a m"

    class Embed:
        task = "feature-extraction"

        def __call__(self, inputs, **options):
            return [[float(len(t)), 0.5, -1.0] for t in inputs]

    run_file(Embed(), source, tmp_path / "emb.parquet", window=4, progress=False)
    emb = pq.read_table(tmp_path / "emb.parquet").column("embedding")
    assert emb.type == pa.list_(pa.float32()) and emb.to_pylist()[0] == [5.0, 0.5, -1.0]


def test_flattening_rules():
    assert flatten_result("text-classification", {"label": "POS", "score": 0.9}) == {"label": "POS", "score": 0.9}
    assert flatten_result("text-classification", [{"label": "POS", "score": 0.9}, {"label": "NEG", "score": 0.1}]) == \
        {"labels": ["POS", "NEG"], "scores": [0.9, 0.1]}
    assert flatten_result("zero-shot-classification", {"sequence": "s", "labels": ["a"], "scores": [1.0]}) == \
        {"labels": ["a"], "scores": [1.0]}
    assert flatten_result("question-answering", {"score": 0.5, "start": 1, "end": 3, "answer": "ab"}) == \
        {"score": 0.5, "start": 1, "end": 3, "answer": "ab"}
    assert flatten_result("question-answering", [{"answer": "a"}]) == {"answers": [{"answer": "a"}]}
    assert flatten_result("token-classification", []) == {"entities": []}
    assert flatten_result("fill-mask", [{"token_str": "x"}]) == {"predictions": [{"token_str": "x"}]}
    assert flatten_result("feature-extraction", [0.1, 0.2]) == {"embedding": [0.1, 0.2]}
    assert flatten_result("sentence-similarity", [0.3]) == {"scores": [0.3]}
    assert flatten_result("text-generation", [{"generated_text": "hi"}]) == {"generated_text": "hi"}
    assert flatten_result("text-generation", [{"generated_text": "a"}, {"generated_text": "b"}]) == \
        {"generated_text": ["a", "b"]}
    assert flatten_result("summarization", [{"summary_text": "s"}]) == {"summary_text": "s"}
    assert flatten_result("translation_en_to_fr", [{"translation_text": "t"}]) == {"translation_text": "t"}


def test_row_inputs_for_pairs_and_questions():
    row = {"q": "Who?", "c": "Me.", "a": "x", "b": "y", "text": "t", "text_pair": "p"}
    assert row_input(row, 1, "question-answering", Columns(question="q", context="c")) == {"question": "Who?", "context": "Me."}
    assert row_input(row, 1, "text-classification", Columns("a", "b")) == {"text": "x", "text_pair": "y"}
    assert row_input(row, 1, "text-classification", Columns()) == {"text": "t", "text_pair": "p"}
    assert row_input(row, 1, "text-classification", Columns("a")) == "x"
    with pytest.raises(ValueError, match="row 7: no column 'body'.*--column"):
        row_input(row, 7, "text-classification", Columns("body"))
    with pytest.raises(ValueError, match="row 2: column 'text' is empty"):
        row_input({"text": None}, 2, "text-classification", Columns())


# -- resume -----------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_after_a_torn_write_matches_an_uninterrupted_run(tmp_path, pipe, fmt):
    source = write_input(tmp_path / f"in.{fmt}", fmt)
    full = tmp_path / f"full.{fmt}"
    run_file(pipe, source, full, window=50, progress=False)
    reference = full.read_bytes()
    header = fmt == "csv"
    row_ends = [i + 1 for i, b in enumerate(reference) if b == ord("\n")]  # (CSV: one row has two lines)
    # the states a kill leaves: complete rows, then part of a row — mid-line, and (CSV) inside
    # the quoted two-line field, just after its first newline
    torn = [(120, row_ends[120 + header - 1] + 7)]
    if fmt == "csv":
        inside = reference.index(b"line one") + len(b"line one\n")
        torn.append((len(TEXTS) - 2, inside))
    for kept, size in torn:
        partial = tmp_path / f"partial.{fmt}"
        partial.write_bytes(reference[:size])
        counting = Counting(pipe)
        run_file(counting, source, partial, window=50, resume=True, progress=False)
        assert counting.items == len(TEXTS) - kept  # nothing computed twice
        assert_same_rows(read_output(partial), read_output(full))  # nothing lost
    finished = partial.read_bytes()
    counting = Counting(pipe)
    run_file(counting, source, partial, resume=True, progress=False)  # already complete
    assert counting.items == 0 and partial.read_bytes() == finished


def assert_same_rows(got, want):
    """Same rows in the same order with the same values; scores within float noise (a resumed
    run batches rows differently, and padding changes the last bits of a score)."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert list(g) == list(w)
        for key in w:
            if key == "score":
                assert math.isclose(float(g[key]), float(w[key]), abs_tol=1e-6)
            else:
                assert g[key] == w[key]


def test_parquet_interrupted_then_resumed(tmp_path, pipe, expected):
    source = write_input(tmp_path / "reviews.parquet", "parquet")
    out = tmp_path / "scored.parquet"
    crashing = Counting(pipe, crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_file(crashing, source, out, window=64, progress=False)
    parts = tmp_path / "scored.parquet.parts"
    assert not out.exists() and len(list(parts.glob("part-*.parquet"))) == 2
    (parts / "part-000002.parquet.tmp").write_bytes(b"PAR1 torn")  # a write the kill cut short
    done = sum(crashing.windows)
    resumed = Counting(pipe)
    run_file(resumed, source, out, window=64, resume=True, progress=False)
    assert resumed.items == len(TEXTS) - done  # nothing computed twice, nothing lost
    assert not parts.exists()
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(len(TEXTS)))
    assert table.column("label").to_pylist() == [e["label"] for e in expected]
    assert table.column("score").to_pylist() == pytest.approx([e["score"] for e in expected], abs=1e-6)
    again = Counting(pipe)
    run_file(again, source, out, resume=True, progress=False)
    assert again.items == 0 and pq.read_table(out).equals(table)


# -- the command line -------------------------------------------------------------------------

def test_cli_parquet_end_to_end(tmp_path, capsys, classifier, expected):
    source = write_input(tmp_path / "reviews.parquet", "parquet")
    out = tmp_path / "scored.parquet"
    code = main(["run", "sentiment-analysis", "--model", str(classifier), "--input", str(source),
                 "--column", "text", "--output", str(out), "--window", "100"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "rows/s" in err and f"{len(TEXTS)}/{len(TEXTS)}" in err  # the progress bar
    table = pq.read_table(out)
    assert table.column_names == ["id", "text", "label", "score"]
    assert table.column("label").to_pylist() == [e["label"] for e in expected]
    assert table.column("score").to_pylist() == pytest.approx([e["score"] for e in expected], abs=1e-6)


def test_cli_pair_column_and_errors(tmp_path, capsys, classifier, pipe):
    source = tmp_path / "pairs.csv"
    source.write_text("a,b\nfirst text,second text\nanother one,and its pair\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(["run", "text-classification", "--model", str(classifier), "--input", str(source),
                 "--column", "a", "--pair-column", "b", "--output", str(out), "--top-k", "2"])
    assert code == 0, capsys.readouterr().err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    want = pipe([{"text": "first text", "text_pair": "second text"}, {"text": "another one", "text_pair": "and its pair"}],
                top_k=2)
    assert [g["labels"] for g in got] == [[w["label"] for w in ws] for ws in want]
    assert [s for g in got for s in g["scores"]] == pytest.approx([w["score"] for ws in want for w in ws])
    capsys.readouterr()

    code = main(["run", "text-classification", "--model", str(classifier), "--input", str(source),
                 "--column", "body", "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "lightpipe: error: row 1: no column 'body' (columns: a, b); pick one with --column"


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch, pipe):
    import sys

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "in.txt").write_text("hello\n")
    with pytest.raises(ImportError, match=r"pip install 'lightpipe\[files\]'"):
        run_file(pipe, tmp_path / "in.txt", tmp_path / "out.parquet", progress=False)


def test_single_row_question_answering_file(tmp_path, capsys):
    """A one-row window must give one result row (the QA pipeline answers a list of one with a dict)."""
    folder = encoder_checkpoint(tmp_path / "qa", "bert", "question-answering")
    source = tmp_path / "one.jsonl"
    item = {"question": "Where do I work?", "context": "My name is Sylvain and I work at Hugging Face in Brooklyn."}
    source.write_text(json.dumps(item) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["run", "question-answering", "--model", str(folder), "--input", str(source), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1
    expected = pipeline("question-answering", model=folder)(**item)
    assert rows[0]["answer"] == expected["answer"] and math.isclose(rows[0]["score"], expected["score"], abs_tol=1e-6)


def test_single_row_fill_mask_file(tmp_path):
    """fill-mask answers a list of one text with that text's candidates (as transformers): a
    one-row window is still one row with its `predictions`, not one row per candidate."""
    folder = encoder_checkpoint(tmp_path / "mlm", "bert", "masked-lm")
    text = "The [MASK] statement is a convenient way to insert debugging assertions."
    source = tmp_path / "one.jsonl"
    source.write_text(json.dumps({"text": text}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["run", "fill-mask", "--model", str(folder), "--input", str(source), "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    expected = pipeline("fill-mask", model=folder)(text)
    assert len(rows) == 1 and [p["token_str"] for p in rows[0]["predictions"]] == [p["token_str"] for p in expected]
