"""`lightpipe.integrations.ray.PipelinePredictor` on a real local Ray runtime: a Parquet dataset
scored and embedded by actor pools, equal to the direct pipeline's results."""

import sys

import numpy as np
import pytest

from lightpipe import pipeline
from lightpipe.integrations.ray import PipelinePredictor
from tiny import encoder_checkpoint, sentences

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
