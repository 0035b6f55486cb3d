"""MPNet, ELECTRA and ModernBERT against transformers 4.57.6, live.

Every head of each family on tiny random checkpoints written by transformers' save_pretrained
(logits compared with assert_close), then every course encoder task through
`pipeline(task, model=folder)` against transformers' pipeline on checkpoints whose tokenizers
are shaped like the real ones (MPNet's WordPiece with <s>/</s>, ELECTRA's BERT WordPiece,
ModernBERT's byte-level BPE tokenizer.json), and a sentence-transformers checkpoint of each
(all-mpnet-base-v2's layout: mean pooling, Normalize) against sentence-transformers itself.
Last, each family's tasks in a fresh process without transformers (tests/fresh_families.py).
"""

from __future__ import annotations

import json
import sys
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from compare import assert_found_entities, assert_same
from lightpipe import loading, pipeline
from lightpipe.loading import load_model
from test_ner_qa_zeroshot import (BIO, CONTEXTS, LABELS, LONG, NER_TEXTS, QUESTION, SHORT, ZS_TEXTS,
                                  assert_same_ranking, nli_checkpoint, plain)
from test_sentence_embedding import to_classic
from tiny import SMALL_ENCODERS, encoder_checkpoint, labels, sentences

pytestmark = pytest.mark.parity

FAMILIES = ["mpnet", "electra", "modernbert"]
HEADS = ["base", "sequence-classification", "token-classification", "question-answering", "masked-lm"]
HF_HEADS = {
    "base": transformers.AutoModel,
    "sequence-classification": transformers.AutoModelForSequenceClassification,
    "token-classification": transformers.AutoModelForTokenClassification,
    "question-answering": transformers.AutoModelForQuestionAnswering,
    "masked-lm": transformers.AutoModelForMaskedLM,
}
VOCAB = 120
PAD = {"mpnet": 1, "electra": 0, "modernbert": 117}  # ModernBERT's pad sits among its last ids, as [PAD] 50283
TEXTS = [s for s in sentences(40, start=40) if len(s) < 160][:10] + ["Short one.", "Ünïcödé text — with accents ✓!"]


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation and fallback-heuristic warnings of both libraries
        yield


# -- every head against transformers ----------------------------------------------------------

def tiny_config(family: str, num_labels: int = 3, **overrides):
    kw = SMALL_ENCODERS[family] | dict(vocab_size=VOCAB, pad_token_id=PAD[family], num_labels=num_labels)
    return transformers.AutoConfig.for_model(family, **(kw | overrides))


def perturb(model):
    """Random init leaves biases at 0 and norms at identity; move every parameter so a forgotten
    bias, a wrong norm or an untied decoder shows up in the outputs."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def save(folder: Path, family: str, head: str, **overrides):
    """A checkpoint of `head` written by transformers → (folder, the transformers model)."""
    torch.manual_seed(0)
    config = tiny_config(family, num_labels=2 if head == "question-answering" else 3, **overrides)
    model = perturb(HF_HEADS[head].from_config(config))
    model.save_pretrained(folder, safe_serialization=True)
    return folder, model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    cache = {}

    def get(family: str, head: str):
        if (family, head) not in cache:
            cache[family, head] = save(tmp_path_factory.mktemp(f"{family}-{head}"), family, head)
        return cache[family, head]

    return get


def batch(family: str, lengths=(9, 14, 4), seed: int = 1):
    """A right-padded batch of different lengths, longer than ModernBERT's 8-token window (+
    token types for ELECTRA, the one of the three that has them)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), PAD[family])
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(5, VOCAB - 5, (n,), generator=g)
        mask[i, :n] = 1
    inputs = {"input_ids": ids, "attention_mask": mask}
    if family == "electra":
        types = torch.zeros_like(ids)
        for i, n in enumerate(lengths):
            types[i, n // 2:n] = 1
        inputs["token_type_ids"] = types
    return inputs


def reference(model, head: str, inputs):
    with torch.no_grad():
        out = model(**inputs)
    if head == "base":
        return out.last_hidden_state
    if head == "question-answering":
        return out.start_logits, out.end_logits
    return out.logits


def run(model, inputs):
    with torch.inference_mode():
        return model(**inputs)


def assert_matches_transformers(folder, ref, head, family, inputs=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete checkpoint must load without fresh weights
        model, config = load_model(folder, head)
    assert config["model_type"] == family
    # the Hub's names, so checkpoints load one to one (transformers' MPNet base also has a pooler)
    extra = set(ref.state_dict()) - set(model.state_dict())
    assert set(model.state_dict()) <= set(ref.state_dict()) and all("pooler" in k for k in extra), extra
    inputs = inputs or batch(family)
    torch.testing.assert_close(run(model, inputs), reference(ref, head, inputs), atol=1e-5, rtol=1e-5)
    return model


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("family", FAMILIES)
def test_head_matches_transformers(checkpoint, family, head):
    folder, ref = checkpoint(family, head)
    assert_matches_transformers(folder, ref, head, family)


@pytest.mark.parametrize("family", FAMILIES)
def test_unpadded_batch_and_no_mask(checkpoint, family):
    folder, ref = checkpoint(family, "sequence-classification")
    model, _ = load_model(folder)  # head read from `architectures`
    inputs = batch(family, lengths=(12, 12))
    expected = reference(ref, "sequence-classification", inputs)
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)
    del inputs["attention_mask"]  # no mask at all means "nothing is padded"
    torch.testing.assert_close(run(model, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_masked_lm_checkpoint_loads_as_base_and_ties_its_decoder(checkpoint, family):
    folder, ref = checkpoint(family, "masked-lm")
    model, _ = load_model(folder)
    decoder = {"mpnet": "lm_head.decoder", "electra": "generator_lm_head", "modernbert": "decoder"}[family]
    embeddings = {"mpnet": "mpnet.embeddings.word_embeddings", "electra": "electra.embeddings.word_embeddings",
                  "modernbert": "model.embeddings.tok_embeddings"}[family]
    assert model.get_submodule(decoder).weight.data_ptr() == model.get_submodule(embeddings).weight.data_ptr()
    base, _ = load_model(folder, "base")
    inputs = batch(family)
    hf_base = transformers.AutoModel.from_pretrained(folder).eval()
    torch.testing.assert_close(run(base, inputs), reference(hf_base, "base", inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_base_checkpoint_as_classifier_warns_and_runs(checkpoint, family):
    folder, _ = checkpoint(family, "base")
    with pytest.warns(UserWarning, match="newly initialized"):
        warnings.simplefilter("always")
        model, _ = load_model(folder, "sequence-classification")
    logits = run(model, batch(family))
    assert logits.shape == (3, 3) and torch.isfinite(logits).all()


def test_mpnet_position_bias_reaches_every_bucket(tmp_path):
    """Inputs long enough for the logarithmic buckets (distances past 8, up to the 128 cap)."""
    folder, ref = save(tmp_path, "mpnet", "base", max_position_embeddings=202)
    assert_matches_transformers(folder, ref, "base", "mpnet", batch("mpnet", lengths=(200, 150, 37)))


def test_mpnet_too_long_input_is_a_clear_error(checkpoint):
    model, _ = load_model(checkpoint("mpnet", "base")[0])
    with pytest.raises(ValueError, match="longer than the model's 128 positions"):  # 130 - padding_idx - 1
        run(model, {"input_ids": torch.full((1, 129), 7)})


def test_electra_discriminator_checkpoint(tmp_path):
    """google/electra-*-discriminator is saved as ElectraForPreTraining: it loads as the base
    model (its replaced-token head skipped, as transformers' AutoModel does) or under a task
    head with a fresh classifier."""
    torch.manual_seed(0)
    discriminator = perturb(transformers.ElectraForPreTraining(tiny_config("electra")))
    discriminator.save_pretrained(tmp_path, safe_serialization=True)
    assert any(k.startswith("discriminator_predictions.") for k in load_file(tmp_path / "model.safetensors"))
    ref = transformers.AutoModel.from_pretrained(tmp_path).eval()
    assert_matches_transformers(tmp_path, ref, "base", "electra")
    with pytest.warns(UserWarning, match="newly initialized.*classifier"):
        warnings.simplefilter("always")
        load_model(tmp_path, "sequence-classification")


def test_electra_without_embeddings_project(tmp_path):
    """electra-base and -large: embedding_size == hidden_size, so no projection."""
    folder, ref = save(tmp_path, "electra", "sequence-classification", embedding_size=32)
    assert not any("embeddings_project" in k for k in ref.state_dict())
    assert_matches_transformers(folder, ref, "sequence-classification", "electra")


def test_electra_built_by_hand_matches_loaded(checkpoint):
    """load_model fuses query/key/value into one matmul (bert.Layer); a model built directly runs unfused."""
    folder, _ = checkpoint("electra", "masked-lm")
    loaded, config = load_model(folder)
    fam = loading.family(config)
    by_hand = fam.heads["masked-lm"](fam.config.from_dict(config)).eval()
    by_hand.load_state_dict(loaded.state_dict())
    torch.testing.assert_close(run(by_hand, batch("electra")), run(loaded, batch("electra")), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("head", ["sequence-classification", "masked-lm"])
def test_modernbert_mean_pooling_biases_and_its_options(tmp_path, head):
    """classifier_pooling="mean" (over the real tokens only), every bias switched on (attention,
    MLP, norms, head, no decoder bias), other activations, a global layer every 2, its own
    window and rotary bases."""
    folder, ref = save(tmp_path, "modernbert", head, classifier_pooling="mean", attention_bias=True,
                       mlp_bias=True, norm_bias=True, classifier_bias=True, decoder_bias=False,
                       hidden_activation="gelu_pytorch_tanh", classifier_activation="silu",
                       global_attn_every_n_layers=2, num_hidden_layers=4, local_attention=6,
                       global_rope_theta=5000.0, local_rope_theta=300.0)
    assert_matches_transformers(folder, ref, head, "modernbert")


def test_modernbert_null_local_rope_theta_means_the_global_one(tmp_path):
    folder, _ = save(tmp_path, "modernbert", "base")
    config = json.loads((folder / "config.json").read_text())
    config.update(local_rope_theta=None, global_rope_theta=1000.0)
    (folder / "config.json").write_text(json.dumps(config))
    ref = transformers.AutoModel.from_pretrained(folder).eval()
    assert ref.layers[1].attn.rotary_emb.inv_freq[1] == ref.layers[0].attn.rotary_emb.inv_freq[1]
    assert_matches_transformers(folder, ref, "base", "modernbert")


def test_bad_configs_are_clear_errors(checkpoint, tmp_path):
    folder, _ = checkpoint("modernbert", "sequence-classification")
    shutil.copy(folder / "model.safetensors", tmp_path / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    for change, message in [({"classifier_pooling": "max"}, "classifier_pooling must be one of"),
                            ({"rope_scaling": {"rope_type": "yarn", "factor": 2.0}}, "rope_scaling")]:
        (tmp_path / "config.json").write_text(json.dumps(config | change))
        with pytest.raises(ValueError, match=message):
            load_model(tmp_path)
    folder, _ = checkpoint("electra", "base")
    config = json.loads((folder / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"position_embedding_type": "relative_key"}))
    save_file(load_file(folder / "model.safetensors"), tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        load_model(tmp_path)


# -- every course encoder task through pipeline(), against transformers' ------------------------

SST2 = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}
BUILDERS = {
    "cls": lambda folder, family: encoder_checkpoint(folder, family, "sequence-classification", **SST2),
    "ner": lambda folder, family: encoder_checkpoint(folder, family, "token-classification", **labels(BIO)),
    "qa": lambda folder, family: encoder_checkpoint(folder, family, "question-answering"),
    "mlm": lambda folder, family: encoder_checkpoint(folder, family, "masked-lm"),
    "base": lambda folder, family: encoder_checkpoint(folder, family, "base"),
    "nli": lambda folder, family: nli_checkpoint(folder, family),
    "st": lambda folder, family: sentence_transformers_checkpoint(folder, family),
}


def sentence_transformers_checkpoint(folder: Path, family: str) -> Path:
    """Saved by sentence-transformers itself as all-mpnet-base-v2 is: Transformer (max_seq_length
    24 here, 384 there) → mean Pooling → Normalize, in its classic format."""
    from sentence_transformers import SentenceTransformer, models

    base = encoder_checkpoint(folder.with_name(folder.name + "-base"), family, "base")
    transformer = models.Transformer(str(base), max_seq_length=24)
    pooling = models.Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu").save(str(folder))
    return to_classic(folder, max_seq_length=24)


@pytest.fixture(scope="module", params=FAMILIES)
def folders(request, tmp_path_factory):
    """One family's checkpoints by role, each built on first use."""
    built, family = {}, request.param

    def get(role: str) -> Path:
        if role not in built:
            built[role] = BUILDERS[role](tmp_path_factory.mktemp(f"{family}-{role}"), family)
        return built[role]

    get.family = family
    return get


def both(task, folder, **kwargs):
    return pipeline(task, model=folder, **kwargs), transformers.pipeline(task, model=str(folder), **kwargs)


def test_text_classification(folders):
    ours, theirs = both("text-classification", folders("cls"))
    for kwargs in ({}, {"top_k": None}, {"function_to_apply": "sigmoid", "top_k": 1}):
        assert_same(ours(TEXTS, **kwargs), theirs(TEXTS, **kwargs))
        assert_same(ours(TEXTS[0], **kwargs), theirs(TEXTS[0], **kwargs))
    pairs = [{"text": a, "text_pair": b} for a, b in zip(TEXTS[-2:] + [SHORT], [SHORT, *TEXTS[-2:]])]
    assert_same(ours(pairs), theirs(pairs))
    long_text = " ".join(TEXTS * 2)
    with pytest.raises(ValueError, match="truncation=True"):
        ours(long_text)
    assert_same(ours(long_text, truncation=True), theirs(long_text, truncation=True))


@pytest.mark.parametrize("strategy", ["none", "simple", "first", "average", "max"])
def test_token_classification(folders, strategy):
    ours, theirs = both("ner", folders("ner"))
    got = ours(NER_TEXTS, aggregation_strategy=strategy, truncation=True)  # LONG: transformers truncates silently
    assert_same(got, plain(theirs(NER_TEXTS, aggregation_strategy=strategy)))
    assert_found_entities(got)
    if strategy != "none":  # the long text in overlapping windows
        assert_same(ours([LONG, SHORT], aggregation_strategy=strategy, stride=12),
                    plain(theirs([LONG, SHORT], aggregation_strategy=strategy, stride=12)))


@pytest.mark.parametrize("kwargs", [{}, {"top_k": 3}, {"doc_stride": 8}, {"max_answer_len": 2, "top_k": 4},
                                    {"handle_impossible_answer": True}, {"align_to_words": False, "top_k": 5}])
def test_question_answering(folders, kwargs):
    ours, theirs = both("question-answering", folders("qa"))
    for context in CONTEXTS:  # LONG needs several windows
        assert_same(ours(question=QUESTION, context=context, **kwargs),
                    theirs(question=QUESTION, context=context, **kwargs))


def test_fill_mask(folders):
    ours, theirs = both("fill-mask", folders("mlm"))
    mask = ours.tokenizer.mask_token
    inputs = [f"The {mask} statement is a convenient way to insert debugging assertions.", f"Python {mask} simple.",
              f"The {mask} statement is a {mask} way to insert debugging assertions."]
    for kwargs in ({}, {"top_k": 2}):
        assert_same(ours(inputs, **kwargs), theirs(inputs, **kwargs))
        assert_same(ours(inputs[0], **kwargs), theirs(inputs[0], **kwargs))
    targets = ["the", "is", "zzqqx"]  # the last is in no vocabulary: its first piece stands in
    assert_same(ours(inputs[1], targets=targets), theirs(inputs[1], targets=targets))


def test_feature_extraction(folders):
    ours, theirs = both("feature-extraction", folders("base"))
    expected = theirs(TEXTS, batch_size=1)  # transformers' documented output (larger batches leak padding)
    assert_same(ours(TEXTS), expected, tol=1e-5)
    pooled = ours(TEXTS, pooling="mean")
    assert_same(pooled, [torch.tensor(e[0]).mean(0).tolist() for e in expected], tol=1e-5)


def test_sentence_transformers_checkpoint(folders):
    from sentence_transformers import SentenceTransformer

    folder = folders("st")
    assert json.loads((folder / "sentence_bert_config.json").read_text())["max_seq_length"] == 24
    texts = TEXTS + [LONG]  # LONG is cut at max_seq_length, as sentence-transformers cuts it
    expected = SentenceTransformer(str(folder), device="cpu").encode(texts, convert_to_tensor=True).cpu()
    got = torch.tensor(pipeline("feature-extraction", model=folder)(texts, pooling="auto"))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    similarity = pipeline("sentence-similarity", model=folder)({"source_sentence": texts[0], "sentences": texts[1:4]})
    assert_same(similarity, (expected[1:4] @ expected[0]).tolist(), tol=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"multi_label": True}, {"hypothesis_template": "The topic of this text: {}"}])
def test_zero_shot_classification(folders, kwargs):
    ours, theirs = both("zero-shot-classification", folders("nli"))
    got = ours(ZS_TEXTS, candidate_labels=LABELS, **kwargs)
    assert_same_ranking(got, theirs(ZS_TEXTS, candidate_labels=LABELS, **kwargs))
    assert max(max(r["scores"]) - min(r["scores"]) for r in got) > 0.05, "the tiny classifier should tell labels apart"


def test_mpnet_tokenizer_saved_without_tokenizer_json(tmp_path):
    """Some MPNet fine-tunes ship only the slow tokenizer's vocab.txt: lightpipe builds the same
    WordPiece, with MPNet's two separators between a pair's texts."""
    from lightpipe.tokenization import load

    slow = encoder_checkpoint(tmp_path, "mpnet", "sequence-classification", **SST2)
    (slow / "tokenizer.json").unlink()
    theirs, ours = transformers.AutoTokenizer.from_pretrained(str(slow)), load(slow, "mpnet")
    for text, pair in [(TEXTS[0], None), (TEXTS[1], TEXTS[2]), (SHORT, "<mask> here")]:
        assert ours.encode(text, pair).ids == theirs(text, pair)["input_ids"]
    pairs = [{"text": SHORT, "text_pair": t} for t in TEXTS[-2:]]
    ours_pipe, theirs_pipe = both("text-classification", slow)
    assert_same(ours_pipe(pairs), theirs_pipe(pairs))


# -- the same tasks in a fresh process, as a user runs them -------------------------------------

@pytest.mark.fresh
def test_tasks_in_a_fresh_process(folders, tmp_path):
    """Each course encoder task through pipeline(task, model=folder) in a child interpreter where
    transformers and sentence_transformers can't be imported (tests/fresh.py), with the outputs
    of the same calls in this process."""
    import fresh_families
    from fresh import Fresh, assert_clean

    roles = {role: str(folders(role)) for role in ("cls", "ner", "qa", "mlm", "st", "nli")}
    spec, results = tmp_path / "folders.json", tmp_path / "results.json"
    spec.write_text(json.dumps(roles))
    proc, report = Fresh(tmp_path / "fresh").run([sys.executable, fresh_families.__file__, spec, results],
                                                  folders.family)
    assert proc.returncode == 0 and results.is_file(), f"the child failed:\n{proc.stdout}\n{proc.stderr}"
    assert_clean(report, f"{folders.family} child", proc.stderr)
    got, expected = json.loads(results.read_text()), json.loads(json.dumps(fresh_families.checks(roles)))
    assert set(got) == {"text-classification", "token-classification", "question-answering", "fill-mask",
                        "feature-extraction", "zero-shot-classification"}
    for task, output in got.items():
        assert not (isinstance(output, dict) and "error" in output), f"{task} fails in a fresh process:\n{output}"
        assert_same(output, expected[task])
