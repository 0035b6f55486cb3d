"""`lightpipe.integrations.ray.PipelinePredictor` on a real local Ray runtime: a Parquet dataset
scored and embedded by actor pools, equal to the direct pipeline's results."""

import sys

import numpy as np
import pytest

from lightpipe import pipeline
from lightpipe.integrations.ray import PipelinePredictor
from tiny import encoder_checkpoint, sentences

pytestmark = pytest.mark.unit

SST2 = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
TEXTS = [s for s in sentences(500, start=100) if len(s) < 150][:300]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return encoder_checkpoint(tmp_path_factory.mktemp("clf"), "bert", "sequence-classification", **SST2)


@pytest.fixture(scope="module")
def ray_runtime():
    import ray  # the ray extra; `make test` installs it
    import ray.data

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.mark.fresh
def test_import_lightpipe_does_not_import_ray():
    import subprocess

    code = "import lightpipe, lightpipe.integrations.ray, sys; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_predictor_in_process_on_dict_pandas_and_arrow_batches(classifier):
    import pandas as pd
    import pyarrow as pa

    texts = TEXTS[:5]
    want = pipeline("sentiment-analysis", model=classifier)(texts)
    predictor = PipelinePredictor("sentiment-analysis", str(classifier))
    batch = {"id": np.arange(5), "text": np.array(texts)}
    out = predictor(batch)
    assert list(out["label"]) == [w["label"] for w in want]
    assert out["score"] == pytest.approx([w["score"] for w in want])
    assert list(out["id"]) == list(range(5))
    frame = predictor(pd.DataFrame(batch))
    assert list(frame.columns) == ["id", "text", "label", "score"] and list(frame["label"]) == list(out["label"])
    table = predictor(pa.table(batch))
    assert table.column_names == ["id", "text", "label", "score"] and table.column("score").to_pylist() == list(out["score"])
    top = PipelinePredictor("sentiment-analysis", str(classifier), options={"top_k": None})(batch)
    assert [list(labels) for labels in top["labels"]] == [["POSITIVE", "NEGATIVE"] if w["label"] == "POSITIVE"
                                                          else ["NEGATIVE", "POSITIVE"] for w in want]
    with pytest.raises(KeyError, match="no column 'body'"):
        PipelinePredictor("sentiment-analysis", str(classifier), column="body")(batch)


@pytest.mark.fresh
def test_ray_dataset_scored_and_embedded_like_the_direct_pipeline(ray_runtime, classifier, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ray = ray_runtime
    (tmp_path / "reviews").mkdir()
    for k in range(3):  # a folder of files, as a corpus usually is
        ids = list(range(k * 100, (k + 1) * 100))
        pq.write_table(pa.table({"id": ids, "text": TEXTS[k * 100:(k + 1) * 100]}), tmp_path / "reviews" / f"{k}.parquet")
    # small files come back as one block, which one actor would take whole: split it for two
    ds = ray.data.read_parquet(str(tmp_path / "reviews")).repartition(4)
    # Actors' CPUs must leave room for the read tasks (1 CPU each) on this 2-CPU runtime.
    scored = ds.map_batches(PipelinePredictor, fn_constructor_kwargs={"task": "sentiment-analysis", "model": str(classifier)},
                            concurrency=2, batch_size=64, num_cpus=0.25)
    both = scored.map_batches(PipelinePredictor, fn_constructor_kwargs={
        "task": "feature-extraction", "model": str(classifier), "options": {"pooling": "mean"}},
        concurrency=1, batch_size=100, num_cpus=0.25)
    schema = both.schema()
    rows = sorted(both.take_all(), key=lambda r: r["id"])

    assert [r["text"] for r in rows] == TEXTS  # every row once, nothing lost
    labels = pipeline("sentiment-analysis", model=classifier)(TEXTS)
    assert [r["label"] for r in rows] == [w["label"] for w in labels]
    assert [r["score"] for r in rows] == pytest.approx([w["score"] for w in labels], abs=1e-6)
    vectors = pipeline("feature-extraction", model=classifier)(TEXTS, pooling="mean")
    got = np.stack([r["embedding"] for r in rows])
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(got, np.array(vectors, dtype=np.float32), atol=1e-5)
    # embeddings are a fixed-shape tensor column, not Python objects
    embedding_type = str(schema.types[schema.names.index("embedding")])
    assert "Tensor" in embedding_type and "(32,)" in embedding_type, embedding_type


LONG = "word " * 200  # more tokens than the tiny model takes: the pipeline refuses it (no truncation)


def test_predictor_on_error_record_and_raise_in_process(classifier):
    import pandas as pd
    import pyarrow as pa

    texts = TEXTS[:6]
    batch_texts = [texts[0], "", texts[1], LONG, texts[2], None]
    want = pipeline("sentiment-analysis", model=classifier)(texts[:3])
    errors = [None, "ValueError: column 'text' is blank", None, "ValueError: input has 602 tokens", None,
              "ValueError: column 'text' is empty (null)"]

    def check(labels, scores, got_errors):
        labels, scores, got_errors = ([None if pd.isna(v) else v for v in column] for column in (labels, scores, got_errors))
        assert [e if e is None else e[:len(errors[i])] for i, e in enumerate(got_errors)] == errors
        assert list(labels) == [want[0]["label"], None, want[1]["label"], None, want[2]["label"], None]
        assert [s for s in scores if s is not None] == pytest.approx([w["score"] for w in want])

    predictor = PipelinePredictor("sentiment-analysis", str(classifier), on_error="record")
    batch = {"id": np.arange(6), "text": np.array(batch_texts, dtype=object)}
    out = predictor(batch)
    check(out["label"].to_pylist(), out["score"].to_pylist(), out["error"].to_pylist())
    frame = predictor(pd.DataFrame(batch))
    assert list(frame.columns) == ["id", "text", "label", "score", "error"]
    check(frame["label"].tolist(), frame["score"].tolist(), frame["error"].tolist())
    table = predictor(pa.table(batch))
    check(table.column("label").to_pylist(), table.column("score").to_pylist(), table.column("error").to_pylist())
    assert table.schema.field("error").type == pa.string()
    # a batch whose every row fails, after this actor has seen results: typed nulls, not untyped ones
    failed = predictor(pa.table({"id": [7, 8], "text": ["", LONG]}))
    assert failed.schema.field("label").type == pa.string() and failed.schema.field("score").type == pa.float64()
    assert failed.column("label").null_count == 2
    ok = predictor({"id": np.arange(2), "text": np.array(texts[:2])})  # no failures: still an error column (of nulls)
    assert ok["error"].type == pa.string() and ok["error"].null_count == 2
    with pytest.raises(RuntimeError, match="every row of a batch failed before this actor had any result "
                                           r"\(the first: row id=0: ValueError: column 'text' is blank\)"):
        PipelinePredictor("sentiment-analysis", str(classifier), on_error="record")({"id": [0], "text": [" "]})

    embed = PipelinePredictor("feature-extraction", str(classifier), options={"pooling": "mean"}, on_error="record")
    vectors = embed({"text": np.array([texts[0], "", texts[1]], dtype=object)})["embedding"]
    assert vectors.dtype == np.float32 and vectors.shape == (3, 32)  # still a fixed-shape tensor column
    assert np.isnan(vectors[1]).all() and not np.isnan(vectors[[0, 2]]).any()

    raising = PipelinePredictor("sentiment-analysis", str(classifier))
    with pytest.raises(ValueError, match=r"^row id=3: input has 602 tokens"):  # named by its id, not its batch index
        raising({"id": np.array([0, 3]), "text": np.array([texts[0], LONG])})
    with pytest.raises(ValueError, match=r"^row ' ': column 'text' is blank$"):  # no id column: by its text
        raising({"text": np.array([texts[0], " "])})
    with pytest.raises(ValueError, match=r"^row 'word word word word word word word word …': input has"):
        raising({"text": np.array([LONG])})
    with pytest.raises(ValueError, match=r"on_error \(--on-error\) must be 'raise' or 'record', got 'ignore'"):
        PipelinePredictor("sentiment-analysis", str(classifier), on_error="ignore")


@pytest.mark.fresh
def test_ray_dataset_with_failing_rows_recorded(ray_runtime, classifier, tmp_path):
    """on_error="record" on a real Ray runtime: batches with and without failures, written to
    Parquet and read back as one table with one schema."""
    import pyarrow.parquet as pq

    ray = ray_runtime
    texts = [("" if i % 17 == 3 else LONG if i % 23 == 5 else t) for i, t in enumerate(TEXTS[:120])]
    failed = {i for i, t in enumerate(texts) if not t.strip() or t == LONG}
    assert 10 < len(failed) < 60
    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)]).repartition(4)
    scored = ds.map_batches(PipelinePredictor, fn_constructor_kwargs={
        "task": "sentiment-analysis", "model": str(classifier), "on_error": "record"},
        concurrency=2, batch_size=10, num_cpus=0.25)
    scored.write_parquet(str(tmp_path / "scored"))
    table = pq.read_table(tmp_path / "scored")
    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    assert [r["text"] for r in rows] == texts
    assert {i for i, r in enumerate(rows) if r["error"] is not None} == failed
    want = iter(pipeline("sentiment-analysis", model=classifier)([t for i, t in enumerate(texts) if i not in failed]))
    assert [r["label"] for r in rows] == [None if i in failed else next(want)["label"] for i in range(len(texts))]
    assert str(table.schema.field("error").type) == "string" and str(table.schema.field("score").type) == "double"
