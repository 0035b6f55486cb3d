"""NLLB-200, M2M100, Pegasus and mT5 through lightpipe's tokenizers and pipelines against
transformers 4.57.6, computed live on tiny random checkpoints with tokenizers shaped like the real
repositories' (tests/tiny_seq2seq.py: each form a real repository or a fine-tune ships):
token ids and decoded text; translation with src_lang / tgt_lang (the source language's code
around the input, the target's forced as the first generated token), given to the pipeline or
per call; summarization and text2text-generation; errors; and each family in a fresh process
without transformers."""

import json
import shutil
import sys
import warnings

import pytest
import transformers

from compare import assert_same
from lightpipe import pipeline
from lightpipe.tokenization import load
from tiny import sentences
from tiny_seq2seq import FORMS, BUILDERS

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.parity

MODEL_TYPES = {"nllb": "m2m_100", "m2m100": "m2m_100", "pegasus": "pegasus", "mt5": "mt5"}
# eos made likely enough that rows end at different lengths
BUILD = {"nllb": dict(seed=1, eos_boost=3.0), "m2m100": dict(seed=4, eos_boost=3.0),
         "pegasus": dict(seed=3, eos_boost=3.0), "mt5": dict(seed=6, eos_boost=3.0)}


def texts(n=4, start=0):
    """Real sentences of clearly different lengths."""
    pool = sorted((s for s in sentences(200, start) if 20 < len(s) < 240), key=len)
    step = max(1, len(pool) // n)
    return [pool[i * step] for i in range(n)][::-1]


_FOLDERS = {}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """folder(family, form="hub", **options): the checkpoint, built once per module."""

    def get(family, form="hub", **options):
        key = (family, form, tuple(sorted(options.items())))
        if key not in _FOLDERS:
            path = tmp_path_factory.mktemp(f"{family}-{form}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _FOLDERS[key] = BUILDERS[family](path, form=form, **(BUILD[family] | options))
        return _FOLDERS[key]

    return get


_REFERENCE = {}


def theirs(task, path, inputs, init=None, **kwargs):
    """transformers' pipeline (built once per task, checkpoint and init keywords) on `inputs`."""
    key = (task, str(path), tuple(sorted((init or {}).items())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if key not in _REFERENCE:
            _REFERENCE[key] = transformers.pipeline(task, model=str(path), **(init or {}))
        return _REFERENCE[key](inputs, **kwargs)


def ours(task, path, inputs, init=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline(task, model=path, **(init or {}))(inputs, **kwargs)


# -- tokenizers, id for id ------------------------------------------------------------------

SAMPLES = ["Hello world, this is python.", "  Two  spaces\tand a\nnew line  ", "Ünïcödé ﬁ ½ — text", "",
           "eng_Latn inside and fra_Latn", "a __de__ code, <unk> and </s> inside", "<mask> <mask_1> <unk_7> <pad>"]


@pytest.mark.parametrize("family, form", [(f, form) for f in FORMS for form in FORMS[f]])
def test_tokenizer_ids_and_text_match_transformers(folder, family, form):
    path = folder(family, form)
    reference = transformers.AutoTokenizer.from_pretrained(str(path))
    tok = load(path, MODEL_TYPES[family])
    if family == "m2m100":
        assert not (path / "tokenizer.json").exists()  # transformers has no fast M2M100 tokenizer
    else:
        assert (path / "tokenizer.json").exists() == (form in ("hub", "saved")) or family in ("mt5",)
    samples = SAMPLES + sentences(40, start=300)
    for text in samples:
        ids = tok.encode(text).ids
        assert ids == reference(text)["input_ids"], text
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == reference.decode(ids, skip_special_tokens=skip), text
    assert tok.get_vocab() == reference.get_vocab()
    for name in ("eos", "pad", "unk", "bos", "mask"):
        assert getattr(tok, f"{name}_token_id") == getattr(reference, f"{name}_token_id"), name
    long = " ".join(samples[7:30])
    assert (tok.encode_batch([long], truncation=True, max_length=20)[0].ids
            == reference(long, truncation=True, max_length=20)["input_ids"])


@pytest.mark.parametrize("legacy", [False, True])
def test_nllb_tokenizer_builds_its_special_tokens_from_tokenizer_config(folder, tmp_path, legacy):
    """NllbTokenizerFast rebuilds the post-processor from tokenizer_config's src_lang and
    legacy_behaviour when it loads, whatever tokenizer.json was saved with."""
    path = tmp_path / "nllb"
    shutil.copytree(folder("nllb", "saved"), path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    config.update(src_lang="deu_Latn", legacy_behaviour=legacy)
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    reference = transformers.AutoTokenizer.from_pretrained(str(path))
    tok = load(path, "m2m_100")
    ids = tok.encode("Hello world").ids
    assert ids == reference("Hello world")["input_ids"]
    german = tok.token_to_id("deu_Latn")
    assert (ids[-1] if legacy else ids[0]) == german


def test_nllb_converted_from_a_unigram_model_too(tmp_path):
    """Fine-tunes with a unigram sentencepiece model (and only it) convert as transformers does."""
    from tiny_seq2seq import nllb_tokenizer

    nllb_tokenizer(tmp_path, "slow", model_type="unigram")
    reference, tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path)), load(tmp_path, "m2m_100")
    for text in SAMPLES + sentences(20, start=300):
        assert tok.encode(text).ids == reference(text)["input_ids"], text


# -- translation with NLLB and M2M100 ---------------------------------------------------------

LANGS = {"nllb": ("eng_Latn", "fra_Latn", "deu_Latn", "spa_Latn"), "m2m100": ("en", "fr", "de", "es")}
DECODING = {"greedy": dict(num_beams=1, max_new_tokens=10), "beam3": dict(num_beams=3, max_new_tokens=8)}


@pytest.mark.parametrize("decoding", list(DECODING))
@pytest.mark.parametrize("family, form, options", [
    ("nllb", "hub", {}), ("nllb", "slow", {}), ("nllb", "hub", {"legacy_behaviour": True}),
    ("m2m100", "hub", {}), ("m2m100", "saved", {})], ids=["nllb", "nllb-slow", "nllb-legacy", "m2m100", "m2m100-saved"])
def test_translation_with_languages_given_to_the_pipeline(folder, family, form, options, decoding):
    """`pipeline("translation", model=..., src_lang=..., tgt_lang=...)` as transformers documents it
    for NLLB: the same translations, token for token."""
    path = folder(family, form, **options)
    src, tgt = LANGS[family][:2]
    init = dict(src_lang=src, tgt_lang=tgt)
    inputs = texts(4, start=17)
    got = ours("translation", path, inputs, init, **DECODING[decoding])
    assert_same(got, theirs("translation", path, inputs, init, **DECODING[decoding]))
    assert len({r["translation_text"] for r in got}) > 1  # the inputs matter to the outputs


@pytest.mark.parametrize("family", ["nllb", "m2m100"])
def test_translation_languages_per_call(folder, family):
    """Per-call src_lang / tgt_lang override the pipeline's; the target language's id is the first
    generated token after the decoder start, and the languages change the output."""
    path = folder(family)
    src, tgt, src2, tgt2 = LANGS[family]
    init = dict(src_lang=src, tgt_lang=tgt)
    inputs = texts(3, start=40)
    kw = dict(num_beams=2, max_new_tokens=8)
    pipe = pipeline("translation", model=path, **init)
    first = pipe(inputs, **kw)
    other = pipe(inputs, src_lang=src2, tgt_lang=tgt2, **kw)
    assert_same(other, theirs("translation", path, inputs, init, src_lang=src2, tgt_lang=tgt2, **kw))
    assert_same(pipe(inputs, **kw), first)  # a call's languages don't stick to the pipeline
    assert other != first
    ids = pipe(inputs[0], tgt_lang=tgt2, return_tensors=True, **kw)[0]["translation_token_ids"]
    tok = load(path, "m2m_100")
    code = tgt2 if family == "nllb" else f"__{tgt2}__"
    assert ids[:2].tolist() == [2, tok.token_to_id(code)]  # decoder start, then the forced target language
    plain = ours("translation", path, inputs, src_lang=src, tgt_lang=tgt, **kw)  # no pipeline-level languages
    assert_same(plain, first)


def test_m2m100_named_translation_task_takes_its_languages(folder):
    """transformers reads translation_en_to_fr's languages as src_lang / tgt_lang: M2M100 knows
    "en" and "fr", so it translates."""
    path = folder("m2m100")
    inputs = texts(3, start=60)
    kw = dict(num_beams=2, max_new_tokens=8)
    assert_same(ours("translation_en_to_fr", path, inputs, **kw), theirs("translation_en_to_fr", path, inputs, **kw))


@pytest.mark.parametrize("family", ["nllb", "m2m100"])
def test_translation_with_the_checkpoints_generation_settings(folder, family):
    """No keywords: the checkpoint's generation_config.json (max_length; M2M100's 5 beams and
    early stopping, which lightpipe takes over the pipeline's num_beams=4 as documented)."""
    path = folder(family)
    init = dict(src_lang=LANGS[family][0], tgt_lang=LANGS[family][1])
    inputs = texts(3, start=80)
    beams = json.loads((path / "generation_config.json").read_text()).get("num_beams", 4)
    assert_same(ours("translation", path, inputs, init), theirs("translation", path, inputs, init, num_beams=beams))


@pytest.mark.parametrize("family", ["nllb", "m2m100"])
def test_text2text_generation_uses_the_tokenizers_own_source_language(folder, family):
    """Without the translation task's languages the tokenizer's own special tokens apply
    (NLLB: its src_lang, eng_Latn by default; M2M100: __en__), as transformers' tokenizers add them."""
    path = folder(family)
    inputs = texts(3, start=90)
    kw = dict(num_beams=2, max_new_tokens=8)
    assert_same(ours("text2text-generation", path, inputs, **kw), theirs("text2text-generation", path, inputs, **kw))


def test_m2m100_repo_downloads_its_sentencepiece_files_and_translates(folder, hub_server):
    """facebook/m2m100_418M's layout from the (fake) Hub: vocab.json and sentencepiece.bpe.model,
    no tokenizer.json."""
    hub_server.add("facebook/m2m100-tiny", folder("m2m100"))
    pipe = pipeline("translation", model="facebook/m2m100-tiny", src_lang="en", tgt_lang="fr")
    downloaded = {p.name for p in pipe.folder.iterdir()}
    assert {"vocab.json", "sentencepiece.bpe.model", "special_tokens_map.json"} <= downloaded
    inputs = texts(2, start=70)
    kw = dict(num_beams=2, max_new_tokens=6)
    assert_same(pipe(inputs, **kw), theirs("translation", pipe.folder, inputs, dict(src_lang="en", tgt_lang="fr"), **kw))


def test_language_errors_are_clear(folder):
    nllb, m2m = pipeline("translation", model=folder("nllb")), pipeline("translation", model=folder("m2m100"))
    with pytest.raises(ValueError, match=r"requires a `src_lang` and a `tgt_lang`.*eng_Latn, fra_Latn"):
        nllb("Hello", tgt_lang="fra_Latn")
    with pytest.raises(ValueError, match=r"tgt_lang='fr' is not a language code of this tokenizer; it knows ace_Arab"):
        nllb("Hello", src_lang="eng_Latn", tgt_lang="fr")
    with pytest.raises(ValueError, match=r"requires a `src_lang` and a `tgt_lang`.*en, fr"):
        m2m("Hello")
    with pytest.raises(ValueError, match=r"src_lang='eng_Latn' is not a language code of this tokenizer; it knows af"):
        m2m("Hello", src_lang="eng_Latn", tgt_lang="fr")
    with pytest.raises(TypeError, match="tgt_lang must be a language code string"):
        m2m("Hello", src_lang="en", tgt_lang=3)


def test_server_info_offers_the_language_codes(folder):
    """The playground's language fields: required, with the tokenizer's codes."""
    nllb = pipeline("translation", model=folder("nllb")).server_info()
    assert nllb["needs_languages"] and nllb["languages"][:2] == ["ace_Arab", "ace_Latn"] and len(nllb["languages"]) == 202
    m2m = pipeline("translation", model=folder("m2m100")).server_info()
    assert m2m["needs_languages"] and m2m["languages"][:3] == ["af", "am", "ar"] and len(m2m["languages"]) == 100


# -- summarization and text2text-generation: Pegasus and mT5 -----------------------------------


@pytest.mark.parametrize("form", FORMS["pegasus"])
def test_pegasus_summarization(folder, form):
    path = folder("pegasus", form)
    inputs = texts(4, start=120)
    for kw in (dict(num_beams=1, max_new_tokens=10), dict(num_beams=3, max_new_tokens=8, length_penalty=0.6)):
        got = ours("summarization", path, inputs, **kw)
        assert_same(got, theirs("summarization", path, inputs, **kw))
        assert len({r["summary_text"] for r in got}) > 1


def test_pegasus_summarization_with_the_checkpoints_generation_settings(folder):
    """pegasus-xsum's 8 beams, length_penalty 0.6 and max_length, from generation_config.json."""
    path = folder("pegasus")
    inputs = texts(2, start=140)
    assert_same(ours("summarization", path, inputs), theirs("summarization", path, inputs, num_beams=8))


def test_pegasus_input_longer_than_its_positions_is_a_clear_error(folder):
    too_long = " ".join(sentences(60))  # > 128 positions
    with pytest.raises(ValueError, match=r"encoder accepts at most 128; pass truncation=True"):
        pipeline("summarization", model=folder("pegasus"))(too_long, max_new_tokens=4)


@pytest.mark.parametrize("form", FORMS["mt5"])
@pytest.mark.parametrize("task", ["text2text-generation", "summarization"])
def test_mt5(folder, form, task):
    path = folder("mt5", form)
    inputs = texts(4, start=160)
    for kw in (dict(num_beams=1, max_new_tokens=10), dict(num_beams=3, max_new_tokens=8)):
        got = ours(task, path, inputs, **kw)
        assert_same(got, theirs(task, path, inputs, **kw))
        assert len({next(iter(r.values())) for r in got}) > 1


# -- each family in a fresh process, as a user runs it --------------------------------------------


@pytest.mark.fresh
def test_families_in_a_fresh_process(folder, tmp_path):
    """Each family's task through pipeline(task, model=folder) in a child interpreter where
    transformers can't be imported (tests/fresh.py), with the outputs of the same calls here."""
    import fresh_seq2seq
    from fresh import Fresh, assert_clean

    roles = {role: str(folder(family)) for role, family in fresh_seq2seq.FAMILIES.items()}
    spec, results = tmp_path / "folders.json", tmp_path / "results.json"
    spec.write_text(json.dumps(roles))
    proc, report = Fresh(tmp_path / "fresh").run([sys.executable, fresh_seq2seq.__file__, spec, results], "seq2seq")
    assert proc.returncode == 0 and results.is_file(), f"the child failed:\n{proc.stdout}\n{proc.stderr}"
    assert_clean(report, "seq2seq child", proc.stderr)
    got, expected = json.loads(results.read_text()), json.loads(json.dumps(fresh_seq2seq.checks(roles)))
    assert set(got) == set(fresh_seq2seq.FAMILIES)
    for role, output in got.items():
        assert not (isinstance(output, dict) and "error" in output), f"{role} fails in a fresh process:\n{output}"
        assert_same(output, expected[role])
