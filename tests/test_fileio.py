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
from lightpipe.pipelines.feature_extraction import FeatureExtractionPipeline
from lightpipe.pipelines.text_classification import TextClassificationPipeline
from lightpipe.pipelines.token_classification import TokenClassificationPipeline
from lightpipe.rows import Columns, MissingColumn
from lightpipe.tasks import normalize_task, pipeline_class
from tiny import encoder_checkpoint, sentences

import pyarrow as pa  # noqa: E402  (the files extra; `make test` installs it)
import pyarrow.parquet as pq  # noqa: E402

pytestmark = pytest.mark.unit

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
        self.pipe, self.crash_after = pipe, crash_after
        self.items, self.windows = 0, []

    def __getattr__(self, name):  # the task's facts (row_input, columns, ...) are the pipeline's
        return getattr(self.pipe, name)

    def batch(self, inputs, **options):
        if self.crash_after is not None and len(self.windows) == self.crash_after:
            raise KeyboardInterrupt
        self.windows.append(len(inputs))
        self.items += len(inputs)
        return self.pipe.batch(inputs, **options)


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

    class Fake(TokenClassificationPipeline):
        def __init__(self):  # no model: the class's facts are all run_file needs
            pass

        def batch(self, inputs, **options):
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

    class Embed(FeatureExtractionPipeline):
        def __init__(self):
            pass

        def batch(self, inputs, **options):
            return [[float(len(t)), 0.5, -1.0] for t in inputs]

    run_file(Embed(), source, tmp_path / "emb.parquet", window=4, progress=False)
    emb = pq.read_table(tmp_path / "emb.parquet").column("embedding")
    assert emb.type == pa.list_(pa.float32()) and emb.to_pylist()[0] == [5.0, 0.5, -1.0]


def task(name):
    """A task's pipeline class: where the rules for its rows and columns live."""
    return pipeline_class(normalize_task(name)[0])


def test_flattening_rules():
    assert task("text-classification").columns({"label": "POS", "score": 0.9}) == {"label": "POS", "score": 0.9}
    assert task("text-classification").columns([{"label": "POS", "score": 0.9}, {"label": "NEG", "score": 0.1}]) == \
        {"labels": ["POS", "NEG"], "scores": [0.9, 0.1]}
    assert task("zero-shot-classification").columns({"sequence": "s", "labels": ["a"], "scores": [1.0]}) == \
        {"labels": ["a"], "scores": [1.0]}
    assert task("question-answering").columns({"score": 0.5, "start": 1, "end": 3, "answer": "ab"}) == \
        {"score": 0.5, "start": 1, "end": 3, "answer": "ab"}
    assert task("question-answering").columns([{"answer": "a"}]) == {"answers": [{"answer": "a"}]}
    assert task("token-classification").columns([]) == {"entities": []}
    assert task("fill-mask").columns([{"token_str": "x"}]) == {"predictions": [{"token_str": "x"}]}
    assert task("feature-extraction").columns([0.1, 0.2]) == {"embedding": [0.1, 0.2]}
    assert task("sentence-similarity").columns([0.3]) == {"scores": [0.3]}
    assert task("text-generation").columns([{"generated_text": "hi"}]) == {"generated_text": "hi"}
    assert task("text-generation").columns([{"generated_text": "a"}, {"generated_text": "b"}]) == \
        {"generated_text": ["a", "b"]}
    assert task("summarization").columns([{"summary_text": "s"}]) == {"summary_text": "s"}
    assert task("translation_en_to_fr").columns([{"translation_text": "t"}]) == {"translation_text": "t"}


def test_row_inputs_for_pairs_and_questions():
    row = {"q": "Who?", "c": "Me.", "a": "x", "b": "y", "text": "t", "text_pair": "p"}
    qa, classify = task("question-answering"), task("text-classification")
    assert qa.row_input(row, Columns(question="q", context="c")) == {"question": "Who?", "context": "Me."}
    assert classify.row_input(row, Columns("a", "b")) == {"text": "x", "text_pair": "y"}
    assert classify.row_input(row, Columns()) == {"text": "t", "text_pair": "p"}
    assert classify.row_input(row, Columns("a")) == "x"
    with pytest.raises(MissingColumn, match="no column 'body'.*--column"):
        classify.row_input(row, Columns("body"))
    with pytest.raises(ValueError, match="column 'text' is empty"):
        classify.row_input({"text": None}, Columns())
    for blank in ("", " \t "):
        with pytest.raises(ValueError, match="column 'text' is blank"):
            classify.row_input({"text": blank}, Columns())
        with pytest.raises(ValueError, match="column 'question' is blank"):
            qa.row_input({"question": blank, "context": "c"}, Columns())


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
    assert err.strip().splitlines()[-1] == \
        f"lightpipe: error: {source} row 1: no column 'body' (columns: a, b); pick one with --column"


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
    qa = pipeline("question-answering", model=folder)
    expected = qa(**item)
    assert rows[0]["answer"] == expected["answer"] and math.isclose(rows[0]["score"], expected["score"], abs_tol=1e-6)
    # with top_k the one question is answered with a list: one row's answers, not two rows
    assert main(["run", "question-answering", "--model", str(folder), "--input", str(source), "--output", str(out),
                 "--top-k", "2"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 1 and [a["answer"] for a in rows[0]["answers"]] == [a["answer"] for a in qa(**item, top_k=2)]


# -- every row in its place: blank lines, line endings, on_error ------------------------------

class Failing:
    """The real pipeline, except that an input holding "BOOM" raises, as an input the pipeline
    refuses would: its whole window fails as a batch. Records the size of every call."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __getattr__(self, name):  # the task's facts are the pipeline's
        return getattr(self.pipe, name)

    def batch(self, inputs, **options):
        self.calls.append(len(inputs))
        for item in inputs:
            text = item["text"] if isinstance(item, dict) else item
            if "BOOM" in text:
                raise ValueError(f"cannot run {text!r}")
        return self.pipe.batch(inputs, **options)


# line 3 blank, line 6 whitespace only, line 9 fails in the pipeline, line 12 blank at a window's start
LINES = [TEXTS[0], TEXTS[1], "", TEXTS[2], TEXTS[3], "  \t ", TEXTS[4], TEXTS[5], "BOOM goes this one",
         TEXTS[6], TEXTS[7], "", TEXTS[8]]
FAILED = {3: "ValueError: blank line", 6: "ValueError: blank line", 9: "ValueError: cannot run 'BOOM goes this one'",
          12: "ValueError: blank line"}  # line number → the error recorded for it


def test_blank_and_failing_lines_keep_their_place_in_every_output_format(tmp_path, pipe):
    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
    ran = [line for n, line in enumerate(LINES, 1) if n not in FAILED]
    want = dict(zip([n for n in range(1, len(LINES) + 1) if n not in FAILED], pipe(ran)))
    for ext in ("jsonl", "csv", "parquet"):
        out = tmp_path / f"out.{ext}"
        failing = Failing(pipe)
        assert run_file(failing, source, out, window=4, on_error="record", progress=False) == len(LINES)
        if ext == "jsonl":  # text lines in, JSON lines out: each line the pipeline's result, or {"error": ...}
            got = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
        else:
            got = read_output(out)
        assert len(got) == len(LINES), ext
        for n, row in enumerate(got, 1):
            if ext != "jsonl":
                assert row["text"] == LINES[n - 1]  # output row N is input line N
            if n in FAILED:
                assert row["error"] == FAILED[n], (ext, n)
                assert row.get("label") in (None, "") and row.get("score") in (None, ""), (ext, n)  # CSV: empty cells
            else:
                assert row.get("error") in (None, ""), (ext, n)
                assert row["label"] == want[n]["label"], (ext, n)
                assert math.isclose(float(row["score"]), want[n]["score"], abs_tol=1e-6), (ext, n)
        if ext == "parquet":
            schema = pq.read_schema(out)
            assert schema.names == ["text", "label", "score", "error"]
            assert schema.field("error").type == pa.string() and schema.field("error").nullable
        if ext == "csv":
            assert out.read_text(encoding="utf-8").splitlines()[0] == "text,label,score,error"
    # the happy windows ran as one batch each; only the window with line 9 was re-run row by row
    # (windows of 4 lines: 1-4, 5-8, 9-12 (fails, then 9, 10, 11 one at a time), 13; blank lines never run)
    assert failing.calls == [3, 3, 3, 1, 1, 1, 1]


def test_a_failing_row_is_named_by_its_line_or_row_in_the_whole_file(tmp_path, pipe):
    text = tmp_path / "in.txt"
    text.write_text("".join(line + "\n" for line in LINES), encoding="utf-8")
    with pytest.raises(ValueError, match=r"in\.txt line 3: blank line \(every line is a row"):
        run_file(pipe, text, tmp_path / "out.jsonl", window=4, progress=False)
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 0  # the window with line 3 isn't written
    no_blanks = tmp_path / "no_blanks.txt"
    no_blanks.write_text("".join(line + "\n" for line in LINES if line.strip()), encoding="utf-8")
    failing = Failing(pipe)
    with pytest.raises(ValueError, match=r"no_blanks\.txt line 7: cannot run 'BOOM goes this one'$") as info:
        run_file(failing, no_blanks, tmp_path / "out.jsonl", window=4, progress=False)
    assert info.value.__cause__ is None
    assert failing.calls == [4, 4, 1, 1, 1]  # the window with line 7 failed, then ran row by row up to it
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 4  # the windows before it are written

    rows = [{"id": i, "text": t} for i, t in enumerate(TEXTS[:9])]
    rows[6]["text"] = "BOOM"
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    with pytest.raises(ValueError, match=r"in\.jsonl line 7: cannot run 'BOOM'"):
        run_file(Failing(pipe), jsonl, tmp_path / "out.jsonl", window=4, progress=False)
    csv_file = write_input(tmp_path / "in.csv", "csv", [r["text"] for r in rows])
    with pytest.raises(ValueError, match=r"in\.csv row 7: cannot run 'BOOM'"):  # data rows: the header isn't one
        run_file(Failing(pipe), csv_file, tmp_path / "out.csv", window=4, progress=False)
    parquet = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet, row_group_size=3)
    with pytest.raises(ValueError, match=r"in\.parquet row 7: cannot run 'BOOM'"):
        run_file(Failing(pipe), parquet, tmp_path / "out.parquet", window=4, progress=False)

    class Crashing(Failing):  # not an input error: the row's position, and the original error as the cause
        def batch(self, inputs, **options):
            if any("BOOM" in t for t in inputs):
                raise RuntimeError("device lost")
            return self.pipe.batch(inputs, **options)

    with pytest.raises(RuntimeError, match=r"no_blanks\.txt line 7: device lost") as info:
        run_file(Crashing(pipe), no_blanks, tmp_path / "out.jsonl", window=4, progress=False)
    assert isinstance(info.value.__cause__, RuntimeError) and str(info.value.__cause__) == "device lost"


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_null_blank_and_failing_cells_record_raise(tmp_path, pipe, fmt):
    texts = TEXTS[:10]
    rows = [{"id": i, "text": t} for i, t in enumerate(texts)]
    rows[1]["text"], rows[4]["text"], rows[8]["text"] = None, "   ", "BOOM"
    failed = {2: "ValueError: column 'text' is empty (null)", 5: "ValueError: column 'text' is blank",
              9: "ValueError: cannot run 'BOOM'"}
    if fmt == "csv":  # a CSV cell can't hold null: it is empty, so blank
        failed[2] = "ValueError: column 'text' is blank"
    source = tmp_path / f"in.{fmt}"
    if fmt == "jsonl":
        del rows[1]["text"]  # a missing key is a row's problem in JSON lines, whose rows vary
        failed[2] = "MissingColumn: no column 'text' (columns: id); pick one with --column"
        source.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif fmt == "csv":
        with open(source, "w", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, ["id", "text"]).writeheader()
            csv.DictWriter(f, ["id", "text"]).writerows(rows)
    else:
        pq.write_table(pa.Table.from_pylist(rows), source)
    out = tmp_path / f"out.{fmt}"
    with pytest.raises(ValueError, match=rf"in\.{fmt} (line|row) 2: "):
        run_file(Failing(pipe), source, out, window=4, progress=False)
    assert run_file(Failing(pipe), source, out, window=4, on_error="record", progress=False) == len(rows)
    got = read_output(out)
    want = pipe([t for n, t in enumerate(texts, 1) if n not in failed])
    assert [str(r["id"]) for r in got] == [str(i) for i in range(len(rows))]
    assert [r["error"] or None for r in got] == [failed.get(n) for n in range(1, len(rows) + 1)]
    assert [r["label"] or None for r in got] == [None if n in failed else want.pop(0)["label"]
                                                 for n in range(1, len(rows) + 1)]
    if fmt == "parquet":
        assert pq.read_schema(out).field("id").type == pa.int64()  # the input's types kept


def test_a_missing_column_stops_the_run_either_way_where_every_row_lacks_it(tmp_path, pipe):
    source = write_input(tmp_path / "in.csv", "csv", TEXTS[:5])
    with pytest.raises(ValueError, match=r"in\.csv row 1: no column 'body'"):
        run_file(pipe, source, tmp_path / "out.csv", columns=Columns("body"), on_error="record", progress=False)


def test_the_first_windows_all_failed_then_results_columns_arrive(tmp_path, pipe):
    """Result columns first seen after windows of failed rows: Parquet's schema and CSV's header
    widen, the earlier rows getting nulls (empty cells); the error column stays last."""
    lines = ["", " ", "", "", TEXTS[0], "", TEXTS[1], TEXTS[2]]
    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    want = pipe(TEXTS[:3])
    for ext in ("parquet", "csv"):
        out = tmp_path / f"out.{ext}"
        run_file(pipe, source, out, window=2, on_error="record", progress=False)
        got = read_output(out)
        assert list(got[0]) == ["text", "label", "score", "error"], ext
        assert [r["label"] or None for r in got] == [None] * 4 + [want[0]["label"], None, want[1]["label"], want[2]["label"]]
        assert [r["error"] or None for r in got] == ["ValueError: blank line"] * 4 + [None, "ValueError: blank line", None, None]
        if ext == "parquet":
            schema = pq.read_schema(out)
            assert schema.field("label").type == pa.string() and schema.field("score").type == pa.float64()


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_resume_with_record_after_a_raise_adds_the_error_column(tmp_path, pipe, ext):
    """The usual way to meet a bad row: the run stops on it; resuming with on_error="record"
    writes the error column from there on, the rows before getting nulls."""
    lines = TEXTS[:6] + [""] + TEXTS[6:9]
    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    out = tmp_path / f"out.{ext}"
    with pytest.raises(ValueError, match="line 7: blank line"):
        run_file(pipe, source, out, window=3, progress=False)
    counting = Counting(pipe)
    run_file(counting, source, out, window=3, resume=True, on_error="record", progress=False)
    assert counting.items == 3  # lines 7-10: the blank line never runs
    got = read_output(out)
    assert [r["text"] for r in got] == lines
    assert [r["error"] or None for r in got] == [None] * 6 + ["ValueError: blank line"] + [None] * 3
    assert [r["label"] or None for r in got] == [w["label"] for w in pipe(TEXTS[:6])] + [None] + \
        [w["label"] for w in pipe(TEXTS[6:9])]


class Echo(TextClassificationPipeline):
    """A pipeline that returns its input, so an output row shows exactly which input it answers."""

    def __init__(self, crash_after=None):  # no model: the class's facts are all run_file needs
        self.crash_after, self.windows = crash_after, 0

    def batch(self, inputs, **options):
        if self.crash_after is not None and self.windows == self.crash_after:
            raise KeyboardInterrupt
        self.windows += 1
        return [{"label": t, "score": float(len(t))} for t in inputs]


ROWS = ["first", "", "  ", "café ✓", 'she said "hi", then left', "x" * 30] * 4 + ["last"]
ENDINGS = {"lf": "\n", "crlf": "\r\n", "cr": "\r"}


def encoded_input(fmt: str, ending: str, bom: bool) -> bytes:
    if fmt == "text":
        text = "".join(row + ending for row in ROWS)
    elif fmt == "jsonl":
        text = "".join((json.dumps({"text": row}) if row.strip() else row) + ending for row in ROWS)
    else:
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator=ending)
        writer.writerow(["text", "n"])
        writer.writerows([row, i] for i, row in enumerate(ROWS))
        text = buf.getvalue()
    return (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")


@pytest.mark.parametrize("fmt", ["text", "jsonl", "csv"])
@pytest.mark.parametrize("ending", ["lf", "crlf", "cr"])
@pytest.mark.parametrize("bom", [False, True], ids=["", "bom"])
def test_line_endings_and_bom_read_count_and_resume_alike(tmp_path, fmt, ending, bom):
    from lightpipe.fileio import count_rows

    source = tmp_path / f"in.{EXT[fmt]}"
    source.write_bytes(encoded_input(fmt, ENDINGS[ending], bom))
    reference = tmp_path / f"ref.{EXT[fmt]}"
    reference.write_bytes(encoded_input(fmt, "\n", False))
    assert count_rows(source, fmt) == count_rows(reference, fmt) == len(ROWS)
    rows = [row for w in read_windows(source, fmt, window=5) for row in w.rows]
    assert rows == [row for w in read_windows(reference, fmt, window=5) for row in w.rows]
    # (a blank JSON lines line has no columns)
    assert [r.get("text") for r in rows] == [r if r.strip() or fmt != "jsonl" else None for r in ROWS]
    assert list(rows[0])[0] == "text"  # no "\ufeff" on the first column

    out_ext = "csv" if fmt == "csv" else "jsonl"
    full, want = tmp_path / f"full.{out_ext}", tmp_path / f"want.{out_ext}"
    run_file(Echo(), source, full, window=5, on_error="record", progress=False)
    run_file(Echo(), reference, want, window=5, on_error="record", progress=False)
    assert full.read_bytes() == want.read_bytes()
    # a kill in the middle: two windows written, then a torn third
    partial = tmp_path / f"partial.{out_ext}"
    with pytest.raises(KeyboardInterrupt):
        run_file(Echo(crash_after=2), source, partial, window=5, on_error="record", progress=False)
    written = partial.read_bytes()
    assert written == want.read_bytes()[:len(written)] and written.count(b"\n") == 10 + (fmt == "csv")
    partial.write_bytes(written + want.read_bytes()[len(written):len(written) + 9])  # part of row 11
    echo = Echo()
    run_file(echo, source, partial, window=5, resume=True, on_error="record", progress=False)
    assert echo.windows == 3  # rows 11-25, blank rows never run
    assert partial.read_bytes() == want.read_bytes()


def test_stdin_with_a_bom_and_crlf(tmp_path, monkeypatch, capsys):
    import io
    import sys

    data = b"\xef\xbb\xbf" + "".join(json.dumps({"text": r}) + "\r\n" if r.strip() else r + "\r\n" for r in ROWS).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    run_file(Echo(), "-", None, window=4, on_error="record", progress=False)
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [g.get("label", g.get("error")) for g in got] == [r if r.strip() else "ValueError: blank line" for r in ROWS]


def test_bad_arguments_fail_before_any_work(tmp_path, capsys):
    source = write_input(tmp_path / "in.txt", "text", TEXTS[:3])
    echo = Echo()
    with pytest.raises(ValueError, match=r"output '.*out\.xlsx': unknown extension '\.xlsx'; --output takes \.txt"):
        run_file(echo, source, tmp_path / "out.xlsx", progress=False)
    for window in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=rf"window \(--window\) must be a positive number of rows, got {window!r}"):
            run_file(echo, source, tmp_path / "out.jsonl", window=window, progress=False)
    with pytest.raises(ValueError, match=r"on_error \(--on-error\) must be 'raise' or 'record', got 'skip'"):
        run_file(echo, source, tmp_path / "out.jsonl", on_error="skip", progress=False)
    assert echo.windows == 0 and not (tmp_path / "out.xlsx").exists() and not (tmp_path / "out.jsonl").exists()
    # the command line checks them before loading the model (there is none to load here)
    for flags, message in ((["--output", str(tmp_path / "out.xlsx")], "unknown extension '.xlsx'"),
                           (["--window", "0"], "window (--window) must be a positive number of rows, got 0")):
        code = main(["run", "text-classification", "--model", str(tmp_path / "no-such-model"), "--input", str(source),
                     *flags])
        err = capsys.readouterr().err
        assert code == 2 and message in err and "no-such-model" not in err, err


def test_cli_on_error_record(tmp_path, capsys, classifier, pipe):
    source = tmp_path / "in.txt"
    source.write_text("".join(line + "\n" for line in LINES[:8]), encoding="utf-8")
    out = tmp_path / "out.csv"
    code = main(["run", "text-classification", "--model", str(classifier), "--input", str(source),
                 "--output", str(out), "--on-error", "record", "--window", "3"])
    assert code == 0, capsys.readouterr().err
    got = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [g["text"] for g in got] == LINES[:8]
    assert [g["error"] for g in got] == ["ValueError: blank line" if n in FAILED else "" for n in range(1, 9)]
    want = iter(pipe([line for line in LINES[:8] if line.strip()]))
    assert [g["label"] for g in got] == ["" if n in FAILED else next(want)["label"] for n in range(1, 9)]
    capsys.readouterr()
    code = main(["run", "text-classification", "--model", str(classifier), "--input", str(source),
                 "--output", str(tmp_path / "raise.csv")])
    err = capsys.readouterr().err
    assert code == 2 and f"lightpipe: error: {source} line 3: blank line (every line is a row" in err


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
