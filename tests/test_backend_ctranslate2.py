"""backend="ctranslate2" against the torch backend, live.

Every supported family (bert, roberta, xlm-roberta, camembert, distilbert) on every encoder task
on tiny random checkpoints whose every weight is moved off its init (a forgotten bias, a
swapped norm or the wrong position offset shows), outputs within float32 rounding of the
torch backend's; the real all-MiniLM-L6-v2 against sentence-transformers (float32 and int8
cosines, ~100 pydoc sentences); the errors; the CLI's --backend; and the backend in a fresh
process without transformers.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from compare import assert_same
from fresh import Fresh, assert_clean
from lightpipe import pipeline
from lightpipe.backends import ctranslate2 as backend
from test_ner_qa_zeroshot import LABELS, LONG, NER_TEXTS, SHORT, nli_checkpoint
from tiny import encoder_checkpoint, sentences

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
FAMILIES = ["bert", "roberta", "xlm-roberta", "camembert", "distilbert"]
TEXTS = [s for s in sentences(40, start=40) if len(s) < 200][:8] + ["Short one.", "Ünïcödé text — with accents ✓!"]
MASK = {"bert": "[MASK]", "distilbert": "[MASK]"}  # the RoBERTa family's is <mask>
TOL = 1e-4  # float32 rounding through a different engine; scores are probabilities, hidden states O(1)


def perturb(folder: Path) -> Path:
    """Move every weight by noise: random init leaves biases 0 and norms identity."""
    path = folder / "model.safetensors"
    state, g = load_file(path), torch.Generator().manual_seed(0)
    save_file({k: v + 0.1 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()},
              path, metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cache = {}

    def get(family: str, head: str) -> Path:
        if (family, head) not in cache:
            folder = tmp_path_factory.mktemp(f"{family}-{head}")
            cache[family, head] = perturb(encoder_checkpoint(folder, family, head))
        return cache[family, head]

    return get


def both(task: str, folder, **kwargs):
    return (pipeline(task, model=folder, **kwargs),
            pipeline(task, model=folder, backend="ctranslate2", **kwargs))


# -- every family and task against the torch backend -----------------------------------------

@pytest.mark.parity
@pytest.mark.parametrize("family", FAMILIES)
def test_feature_extraction(family, checkpoint):
    ours, ct2 = both("feature-extraction", checkpoint(family, "base"))
    for got, want in zip(ct2(TEXTS, return_tensors=True), ours(TEXTS, return_tensors=True)):
        torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
    assert_same(ct2(TEXTS, pooling="mean", normalize=True), ours(TEXTS, pooling="mean", normalize=True), tol=TOL)
    assert ct2.model.forward.compute_type == "float32"


@pytest.mark.parity
@pytest.mark.parametrize("family", FAMILIES)
def test_text_classification(family, checkpoint):
    ours, ct2 = both("text-classification", checkpoint(family, "sequence-classification"))
    assert_same(ct2(TEXTS, top_k=None), ours(TEXTS, top_k=None), tol=TOL)
    # a pair: BERT's second token type, the RoBERTa family's </s></s> separator
    pair = {"text": TEXTS[0], "text_pair": TEXTS[1]}
    assert_same(ct2(pair, top_k=None), ours(pair, top_k=None), tol=TOL)


@pytest.mark.parity
def test_token_types_reach_the_engine(checkpoint):
    """BERT's type-1 embedding is in the CTranslate2 model: a pair scores differently from the
    same tokens all typed 0 (so the pair comparison above compares something)."""
    _, ct2 = both("feature-extraction", checkpoint("bert", "base"))
    batch = ct2.collate(ct2.tokenizer.encode_batch([TEXTS[0]], [TEXTS[1]]))
    typed = ct2.model(**batch)
    untyped = ct2.model(batch["input_ids"], batch["attention_mask"], torch.zeros_like(batch["token_type_ids"]))
    assert batch["token_type_ids"].any() and not torch.allclose(typed, untyped, atol=1e-3)


@pytest.mark.parity
@pytest.mark.parametrize("family", FAMILIES)
def test_token_classification(family, checkpoint):
    ours, ct2 = both("token-classification", checkpoint(family, "token-classification"))
    assert_same(ct2(NER_TEXTS[:3]), ours(NER_TEXTS[:3]), tol=TOL)
    # LONG: stride windows of the model's 128 tokens, merged
    assert_same(ct2(NER_TEXTS, aggregation_strategy="simple", stride=32),
                ours(NER_TEXTS, aggregation_strategy="simple", stride=32), tol=TOL)


@pytest.mark.parity
@pytest.mark.parametrize("family", FAMILIES)
def test_question_answering(family, checkpoint):
    ours, ct2 = both("question-answering", checkpoint(family, "question-answering"))
    for context in (SHORT, LONG):  # LONG: several doc_stride windows
        question = {"question": "Where do I work?", "context": context}
        assert_same(ct2(**question, top_k=3), ours(**question, top_k=3), tol=TOL)


@pytest.mark.parity
@pytest.mark.parametrize("family", FAMILIES)
def test_fill_mask(family, checkpoint):
    ours, ct2 = both("fill-mask", checkpoint(family, "masked-lm"))
    mask = MASK.get(family, "<mask>")
    texts = [f"Python lists are {mask} sequences.", f"A {mask} creates a new local namespace.", f"{mask} it is."]
    assert_same(ct2(texts, top_k=5), ours(texts, top_k=5), tol=TOL)


@pytest.mark.parity
@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_zero_shot_nli(family, tmp_path):
    ours, ct2 = both("zero-shot-classification", nli_checkpoint(tmp_path, family))
    texts = [SHORT, *TEXTS[:3]]
    assert_same(ct2(texts, candidate_labels=LABELS), ours(texts, candidate_labels=LABELS), tol=TOL)
    assert_same(ct2(texts, candidate_labels=LABELS, multi_label=True),
                ours(texts, candidate_labels=LABELS, multi_label=True), tol=TOL)


@pytest.mark.parity
def test_truncation_and_long_inputs(checkpoint):
    ours, ct2 = both("text-classification", checkpoint("roberta", "sequence-classification"))
    with pytest.raises(ValueError, match="truncation=True"):
        ct2(LONG)
    assert_same(ct2(LONG, truncation=True), ours(LONG, truncation=True), tol=TOL)
    # the encoder itself refuses more tokens than its positions, as the torch one does
    too_long = torch.full((1, 200), 5)
    with pytest.raises(ValueError, match="positions"):
        ct2.model(too_long, torch.ones_like(too_long))


@pytest.mark.parity
def test_int8(checkpoint):
    """quantize="int8" is CTranslate2's int8: outputs near float32's, and not equal to them."""
    folder = checkpoint("bert", "base")
    fp32 = pipeline("feature-extraction", model=folder, backend="ctranslate2")
    int8 = pipeline("feature-extraction", model=folder, backend="ctranslate2", quantize="int8")
    assert int8.model.forward.compute_type == "int8"
    a = fp32.embed(TEXTS, pooling="mean", normalize=True)
    b = int8.embed(TEXTS, pooling="mean", normalize=True)
    cos = (a * b).sum(1)
    assert cos.min() > 0.98 and not torch.allclose(a, b, atol=1e-5), cos


@pytest.mark.parity
def test_bfloat16_where_the_cpu_has_it(checkpoint):
    """dtype= becomes CTranslate2's compute type where this CPU computes it, else a clear error."""
    import ctranslate2

    folder = checkpoint("bert", "sequence-classification")
    if "bfloat16" not in ctranslate2.get_supported_compute_types("cpu"):
        with pytest.raises(ValueError, match=r"can't compute in bfloat16 on this CPU .*it offers \["):
            pipeline("text-classification", model=folder, backend="ctranslate2", dtype="bfloat16")
        return
    ours, ct2 = both("text-classification", folder, dtype="bfloat16")
    assert_same(ct2(TEXTS, top_k=None), ours(TEXTS, top_k=None), tol=2e-2)


@pytest.mark.parity
def test_threads_follow_torch(checkpoint, monkeypatch):
    import ctranslate2

    seen = {}
    real = ctranslate2.Encoder

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ctranslate2, "Encoder", spy)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        pipeline("feature-extraction", model=checkpoint("bert", "base"), backend="ctranslate2")
    finally:
        torch.set_num_threads(threads)
    assert seen["intra_threads"] == 3 and seen["inter_threads"] == 1


# -- the real all-MiniLM-L6-v2 against sentence-transformers -----------------------------------

@pytest.fixture(scope="module")
def minilm_reference():
    """sentence-transformers' float32 embeddings of ~100 pydoc sentences, computed live."""
    from sentence_transformers import SentenceTransformer

    from lightpipe.hub import resolve

    texts = sentences(100, start=200)
    model = SentenceTransformer(str(resolve(MINILM)), device="cpu")
    return texts, model.encode(texts, convert_to_tensor=True, normalize_embeddings=True).cpu()


@pytest.mark.parity
@pytest.mark.parametrize("quantize, floor", [(None, 0.9999), ("int8", 0.99)])
def test_minilm_matches_sentence_transformers(minilm_reference, quantize, floor):
    """The sentence-transformers chain (modules.json: pooling, Normalize) on the CTranslate2 encoder."""
    texts, theirs = minilm_reference
    ours = pipeline("feature-extraction", model=MINILM, backend="ctranslate2", quantize=quantize)
    got = torch.tensor(ours(texts, pooling="auto", normalize=True))
    cos = (got * theirs).sum(1)
    print(f"MiniLM ctranslate2 {quantize or 'float32'}: cosine to sentence-transformers mean {cos.mean():.5f}, "
          f"min {cos.min():.5f}")
    assert cos.min() >= floor, (cos.mean(), cos.min())


@pytest.mark.parity
def test_minilm_similarity_and_embedding_zero_shot():
    ours, ct2 = both("sentence-similarity", MINILM)
    item = {"source_sentence": "I've been waiting for a course my whole life.",
            "sentences": ["I love learning.", "The stock market fell."]}
    assert_same(ct2(item), ours(item), tol=1e-5)
    ours, ct2 = both("zero-shot-classification", MINILM)
    assert_same(ct2(TEXTS[:3], candidate_labels=LABELS), ours(TEXTS[:3], candidate_labels=LABELS), tol=1e-4)


# -- errors -----------------------------------------------------------------------------------

@pytest.mark.unit
def test_unsupported_model_type(tmp_path):
    folder = encoder_checkpoint(tmp_path, "mpnet", "base")
    with pytest.raises(ValueError, match=r"backend='ctranslate2' runs bert, .*distilbert encoders, not model_type 'mpnet'"):
        pipeline("feature-extraction", model=folder, backend="ctranslate2")


@pytest.mark.unit
def test_unknown_backend_and_device(checkpoint):
    folder = checkpoint("bert", "base")
    with pytest.raises(ValueError, match=r"backend must be one of \('torch', 'ctranslate2'\), got 'onnx'"):
        pipeline("feature-extraction", model=folder, backend="onnx")
    # checked before the weights load (a machine without a GPU fails on device= itself first)
    with pytest.raises(ValueError, match="backend='ctranslate2' runs on the CPU.*device='cuda'"):
        backend.check({"model_type": "bert"}, torch.device("cuda"))
    with pytest.raises(ValueError, match="no 'quick_gelu' activation"):
        backend.check({"model_type": "bert", "hidden_act": "quick_gelu"}, torch.device("cpu"))


@pytest.mark.unit
def test_missing_package_names_the_extra(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if not installed: `import ctranslate2` fails
    with pytest.raises(ImportError, match=r"backend='ctranslate2' needs the ctranslate2 package: "
                                          r"pip install 'lightpipe\[ctranslate2\]'"):
        pipeline("feature-extraction", model=checkpoint("bert", "base"), backend="ctranslate2")


@pytest.mark.unit
def test_left_padding_is_refused(checkpoint):
    _, ct2 = both("feature-extraction", checkpoint("bert", "base"))
    ids = torch.tensor([[0, 0, 7, 8], [5, 6, 7, 8]])
    with pytest.raises(ValueError, match="right-padded"):
        ct2.model(ids, torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]]))


@pytest.mark.parity
def test_cli_backend_option(capsys):
    from lightpipe.cli import main

    text = "The assert statement is a convenient way to insert debugging assertions."
    assert main(["run", "feature-extraction", text, "--pooling", "auto", "--normalize", "--backend", "ctranslate2",
                 "--quantize", "int8"]) == 0
    got = torch.tensor(json.loads(capsys.readouterr().out))
    want = torch.tensor(pipeline("feature-extraction", model=MINILM)(text, pooling="auto", normalize=True))
    cos = float(got @ want)
    assert 0.99 <= cos < 1 - 1e-7, cos  # int8: close, and not the float32 result
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error
        main(["run", "feature-extraction", text, "--backend", "onnx"])
    assert exit_.value.code == 2
    assert "invalid choice: 'onnx'" in capsys.readouterr().err


# -- a fresh process ---------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import json, sys
    from lightpipe import pipeline

    texts = json.loads(sys.argv[1])
    torch_pipe = pipeline("feature-extraction")  # the default backend never imports ctranslate2
    torch_pipe(texts, pooling="auto")
    lazy = "ctranslate2" not in sys.modules
    ct2 = pipeline("feature-extraction", backend="ctranslate2")
    print(json.dumps({"lazy": lazy, "embeddings": ct2(texts, pooling="auto", normalize=True)}))
""")


@pytest.mark.fresh
def test_fresh_process(tmp_path):
    """As a user runs it: no transformers, an empty offline cache (the embedded MiniLM)."""
    fresh = Fresh(tmp_path)
    proc, report = fresh.run([sys.executable, "-c", CHILD, json.dumps(TEXTS)], "ctranslate2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_clean(report, "backend='ctranslate2'", proc.stderr)
    out = json.loads(proc.stdout)
    assert out["lazy"], "building and running a torch pipeline imported ctranslate2"
    want = pipeline("feature-extraction", model=MINILM)(TEXTS, pooling="auto", normalize=True)
    assert_same(out["embeddings"], want, tol=1e-5)
