"""summarization, translation and text2text-generation against transformers 4.57.6 pipelines,
computed live on tiny random BART, T5 (relu and gated-gelu) and Marian checkpoints (the Marian
one with sentencepiece models trained here): same text for greedy and beam search on batches of
inputs of different lengths, T5's task prefixes, return_tensors, truncation, the generation
defaults chain; Marian's sentencepiece tokenizer id for id; errors; the CLI."""

import json
import shutil
import warnings

import pytest
import torch
import transformers

from compare import assert_same
from lightpipe import pipeline
from lightpipe.cli import main
from lightpipe.tokenization import load
from tiny import (bart_checkpoint, marian_checkpoint, mbart50_checkpoint, sentences, t5_checkpoint,
                  write_generation_config)

transformers.logging.set_verbosity_error()
pytestmark = [pytest.mark.parity, pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")]


def texts(n=5, start=0):
    """Real sentences of clearly different lengths (about 5 to 60 tokens)."""
    pool = [s for s in sentences(200, start) if 20 < len(s) < 260]
    pool.sort(key=len)
    step = max(1, len(pool) // n)
    return [pool[i * step] for i in range(n)][::-1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2t")
    return {
        # eos made likely enough that rows end at different lengths (BART, gated T5); T5-relu and
        # Marian run to the length limit
        "bart": bart_checkpoint(root / "bart", seed=2, eos_boost=5),
        "t5": t5_checkpoint(root / "t5"),
        "t5-gated": t5_checkpoint(root / "t5-gated", gated=True, seed=1, eos_boost=3),
        "marian": marian_checkpoint(root / "marian"),
    }


_REFERENCE = {}


def reference(task, folder, **kwargs):
    """transformers' pipeline, built once per (task, checkpoint)."""
    key = (task, str(folder), tuple(sorted(kwargs.items())))
    if key not in _REFERENCE:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _REFERENCE[key] = transformers.pipeline(task, model=str(folder), **kwargs)
    return _REFERENCE[key]


def theirs(task, folder, inputs, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return reference(task, folder)(inputs, **kwargs)


def ours(task, folder, inputs, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline(task, model=folder)(inputs, **kwargs)


# -- parity --------------------------------------------------------------------------------

TASKS = {"bart": "summarization", "t5": "text2text-generation", "t5-gated": "text2text-generation",
         "marian": "translation"}
DECODING = {"greedy": dict(num_beams=1, max_new_tokens=12), "beam4": dict(num_beams=4, max_new_tokens=8)}


@pytest.mark.parametrize("decoding", list(DECODING))
@pytest.mark.parametrize("name", list(TASKS))
def test_same_text_as_transformers_on_a_batch_of_different_lengths(ckpt, name, decoding):
    inputs = texts(5, start=10 * len(name))
    got = ours(TASKS[name], ckpt[name], inputs, **DECODING[decoding])
    expected = theirs(TASKS[name], ckpt[name], inputs, **DECODING[decoding])
    assert_same(got, expected)
    assert len({r[f"{next(iter(r))}"] for r in got}) > 1  # the inputs matter to the outputs


def test_num_return_sequences_gives_a_list_per_input(ckpt):
    inputs = texts(3)
    kw = dict(num_beams=4, num_return_sequences=3, max_new_tokens=10, length_penalty=0.7, early_stopping=True)
    got = ours("summarization", ckpt["bart"], inputs, **kw)
    assert [len(r) for r in got] == [3, 3, 3]
    assert_same(got, theirs("summarization", ckpt["bart"], inputs, **kw))
    single = ours("summarization", ckpt["bart"], inputs[0], **kw)
    assert_same(single, got[0])


def test_single_string_gives_a_list_of_one_record(ckpt):
    text = texts(1)[0]
    got = ours("translation", ckpt["marian"], text, max_new_tokens=8)
    assert isinstance(got, list) and len(got) == 1 and set(got[0]) == {"translation_text"}
    assert_same(got, theirs("translation", ckpt["marian"], text, max_new_tokens=8))


def test_default_generation_settings_as_transformers(ckpt):
    """No keywords: the pipeline's num_beams=4 and max_new_tokens=256, on inputs whose beams end
    early (others run the 256 steps, which take transformers half a minute each)."""
    pipe = pipeline("text2text-generation", model=ckpt["bart"])
    assert (pipe.generation.num_beams, pipe.generation.max_new_tokens, pipe.generation.max_length) == (4, 256, None)
    inputs = [texts(12)[i] for i in (2, 7, 11)]
    got = pipe(inputs)
    assert_same(got, theirs("text2text-generation", ckpt["bart"], inputs))


def test_return_tensors_gives_the_decoder_token_ids(ckpt):
    inputs = texts(3)
    got = ours("summarization", ckpt["bart"], inputs, return_tensors=True, max_new_tokens=9)
    expected = theirs("summarization", ckpt["bart"], inputs, return_tensors=True, max_new_tokens=9)
    assert all(isinstance(r["summary_token_ids"], torch.Tensor) for r in got)  # as transformers returns them
    assert_same(got, expected)
    assert got[0]["summary_token_ids"][0] == 2  # from decoder_start_token_id, as transformers returns it


def test_clean_up_tokenization_spaces(ckpt):
    inputs = texts(3, start=30)
    for clean in (True, False):
        kw = dict(clean_up_tokenization_spaces=clean, max_new_tokens=16, num_beams=1)
        assert_same(ours("summarization", ckpt["bart"], inputs, **kw), theirs("summarization", ckpt["bart"], inputs, **kw))


def test_stop_sequence_replaces_eos(ckpt):
    inputs = texts(3)
    got = ours("summarization", ckpt["bart"], inputs, stop_sequence="t", num_beams=1, max_new_tokens=12)
    assert_same(got, theirs("summarization", ckpt["bart"], inputs, stop_sequence="t", num_beams=1,
                            max_new_tokens=12))


def test_generator_input_streams_one_result_list_per_item(ckpt):
    inputs = texts(3)
    got = pipeline("summarization", model=ckpt["bart"])(iter(inputs), max_new_tokens=6)
    assert not isinstance(got, list)
    assert_same(list(got), [[r] for r in ours("summarization", ckpt["bart"], inputs, max_new_tokens=6)])


# -- T5 prefixes and task_specific_params ----------------------------------------------------


@pytest.mark.parametrize("name", ["t5", "t5-gated"])
def test_t5_summarization_uses_the_prefix_and_task_parameters(ckpt, name):
    inputs = texts(2, start=20)
    pipe = pipeline("summarization", model=ckpt[name])
    assert pipe.prefix == "summarize: "
    assert (pipe.generation.num_beams, pipe.generation.no_repeat_ngram_size, pipe.generation.max_length) == (4, 3, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = pipe(inputs)
    # transformers lets its injected max_new_tokens=256 beat task_specific_params' max_length=16;
    # called with max_new_tokens=None it honours max_length=16 as lightpipe does
    assert_same(got, theirs("summarization", ckpt[name], inputs, max_new_tokens=None))
    # the prefix is really what the model reads
    plain = ours("text2text-generation", ckpt[name], ["summarize: " + t for t in inputs], num_beams=4, max_length=16,
                 min_length=3, no_repeat_ngram_size=3, length_penalty=2.0, early_stopping=True)
    assert [r["summary_text"] for r in got] == [r["generated_text"] for r in plain]


def test_translation_xx_to_yy_picks_its_task_parameters(ckpt):
    inputs = texts(3)
    pipe = pipeline("translation_en_to_fr", model=ckpt["t5"])
    assert pipe.prefix == "translate English to French: " and pipe.generation.max_length == 12
    with pytest.warns(UserWarning, match=r"bigger than 0.9 \* max_length: 12"):  # transformers' check_inputs
        got = pipe(inputs)
    expected = theirs("translation_en_to_fr", ckpt["t5"], inputs, max_new_tokens=None)
    assert_same(got, expected)
    german = ours("translation_en_to_de", ckpt["t5"], inputs)
    assert [r["translation_text"] for r in german] != [r["translation_text"] for r in got]


def test_plain_translation_on_t5_defaults_to_its_first_pair_with_a_warning(ckpt):
    with pytest.warns(UserWarning, match='defaulting to "translation_en_to_de"'):
        pipe = pipeline("translation", model=ckpt["t5"])
    assert pipe.prefix == "translate English to German: "
    inputs = texts(2)
    assert_same(pipe(inputs, max_new_tokens=8), theirs("translation", ckpt["t5"], inputs, max_new_tokens=8))
    with pytest.warns(UserWarning, match="not translation_en_to_es: inputs are given to the model as they are"):
        assert pipeline("translation_en_to_es", model=ckpt["t5"]).prefix is None


def test_a_caller_max_length_is_honoured(ckpt):
    """transformers 4.57.6 lets its injected max_new_tokens=256 beat a caller's max_length on a
    checkpoint that sets no length (a bug lightpipe doesn't copy): compare with transformers
    told max_new_tokens=None, which then honours max_length too."""
    inputs = texts(3, start=40)
    got = ours("text2text-generation", ckpt["t5-gated"], inputs, max_length=7)
    assert all(len(r) <= 7 for r in ours("text2text-generation", ckpt["t5-gated"], inputs, max_length=7,
                                         return_tensors=True) for r in [r["generated_token_ids"]])
    assert_same(got, theirs("text2text-generation", ckpt["t5-gated"], inputs, max_length=7, max_new_tokens=None))


def test_checkpoint_generation_config_beats_the_pipeline_defaults(ckpt, tmp_path):
    """transformers documents that a checkpoint's generation_config.json wins over the pipeline's
    num_beams=4 (4.57.6 keeps 4 anyway): lightpipe follows the documentation, checked against
    transformers called with the checkpoint's values."""
    folder = tmp_path / "bart"
    shutil.copytree(ckpt["bart"], folder)
    write_generation_config(folder, num_beams=2, max_length=11)
    pipe = pipeline("summarization", model=folder)
    assert (pipe.generation.num_beams, pipe.generation.max_length, pipe.generation.max_new_tokens) == (2, 11, None)
    inputs = texts(3)
    assert_same(ours("summarization", folder, inputs), theirs("summarization", folder, inputs, num_beams=2))


# -- truncation and lengths ----------------------------------------------------------------


def test_truncation_cuts_long_inputs_as_transformers(ckpt):
    long = " ".join(sentences(40))  # > 256 tokens: the tokenizers' model_max_length
    inputs = [long, texts(1)[0]]
    # (not Marian: its tokenizer's 512 exceeds the tiny model's 256 positions, where transformers
    # fails with an IndexError and lightpipe cuts at 256; the tokenizer test covers its truncation)
    for name, task in [("bart", "summarization"), ("t5", "text2text-generation")]:
        got = ours(task, ckpt[name], inputs, truncation=True, max_new_tokens=6, num_beams=2)
        assert_same(got, theirs(task, ckpt[name], inputs, truncation=True, max_new_tokens=6, num_beams=2))


def test_input_longer_than_the_encoder_is_a_clear_error(ckpt):
    too_long = " ".join(sentences(120))  # > 512 BART positions, > 256 Marian positions
    for name, task, limit in [("bart", "summarization", 512), ("marian", "translation", 256)]:
        with pytest.raises(ValueError, match=rf"encoder accepts at most {limit}; pass truncation=True"):
            pipeline(task, model=ckpt[name])([texts(1)[0], too_long], max_new_tokens=4)


def test_t5_runs_past_the_tokenizer_limit_with_a_warning(ckpt):
    """T5's relative positions have no hard limit: transformers warns and runs, so does lightpipe."""
    long = " ".join(sentences(30))
    with pytest.warns(UserWarning, match="longer than the specified maximum sequence length"):
        got = pipeline("text2text-generation", model=ckpt["t5"])(long, max_new_tokens=5, num_beams=1)
    assert_same(got, theirs("text2text-generation", ckpt["t5"], long, max_new_tokens=5, num_beams=1))


def test_summarization_warns_when_max_length_exceeds_the_input(ckpt):
    pipe = pipeline("summarization", model=ckpt["bart"])
    with pytest.warns(UserWarning, match="Your max_length is set to 30, but your input_length is only"):
        pipe("A short text.", max_length=30, num_beams=1)
    with pytest.warns(UserWarning, match="min_length=12 must be inferior than your max_length=10"):
        pipe(texts(1)[0], max_length=10, min_length=12, num_beams=1)


# -- Marian --------------------------------------------------------------------------------


def test_marian_tokenizer_ids_and_text_match_transformers(ckpt):
    reference_tok = transformers.AutoTokenizer.from_pretrained(ckpt["marian"])
    tok = load(ckpt["marian"], "marian")
    samples = sentences(80) + ["", "Hello </s> world <unk> again", ">>fr<< Bonjour", "  spaced   out  ",
                               "Ünïcödé ﬁ ½ text", "<pad>"]
    for text in samples:
        assert tok.encode(text).ids == reference_tok(text).input_ids, text
    long = " ".join(samples[:30])
    assert (tok.encode_batch([long], truncation=True, max_length=20)[0].ids
            == reference_tok(long, truncation=True, max_length=20).input_ids)
    g = torch.Generator().manual_seed(0)
    for _ in range(100):
        ids = torch.randint(0, reference_tok.vocab_size, (int(torch.randint(0, 20, (1,), generator=g)),),
                            generator=g).tolist()
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == reference_tok.decode(ids, skip_special_tokens=skip)
    # the rest of the Tokenizer interface
    assert tok.get_vocab() == reference_tok.get_vocab()
    ids = reference_tok(samples[1]).input_ids
    tokens = reference_tok.convert_ids_to_tokens(ids)
    assert [tok.id_to_token(i) for i in ids] == tokens
    assert tok.tokens_to_string(tokens) == reference_tok.convert_tokens_to_string(tokens)
    with pytest.raises(AttributeError, match="MarianTokenizer's encodings have no 'offsets'"):
        tok.encode("Hello").offsets
    with pytest.raises(NotImplementedError, match=r"MarianTokenizer has no lowercased\(\)"):
        tok.lowercased()


def test_marian_separate_vocabularies(tmp_path):
    folder = marian_checkpoint(tmp_path, separate_vocabs=True, seed=2)
    inputs = texts(3)
    # transformers' beam search can't handle a decoder vocabulary narrower than the encoder's: greedy
    assert_same(ours("translation", folder, inputs, num_beams=1, max_new_tokens=10),
                theirs("translation", folder, inputs, num_beams=1, max_new_tokens=10))


def test_marian_asked_for_another_language_pair_is_an_error(ckpt):
    with pytest.raises(ValueError, match=r"translates en to fr, but translation_de_to_fr asks for de to fr"):
        pipeline("translation_de_to_fr", model=ckpt["marian"])
    pipe = pipeline("translation_en_to_fr", model=ckpt["marian"])
    inputs = texts(2)
    assert_same(pipe(inputs, max_new_tokens=6), ours("translation", ckpt["marian"], inputs, max_new_tokens=6))
    with pytest.raises(ValueError, match="tgt_lang='de'"):
        pipe(inputs, tgt_lang="de")


def test_t5_with_only_spiece_model(tmp_path):
    folder = t5_checkpoint(tmp_path, fast=False, seed=3)
    assert not (folder / "tokenizer.json").exists()
    reference_tok = transformers.AutoTokenizer.from_pretrained(folder)
    tok = load(folder, "t5")
    for text in sentences(60) + ["Hello <extra_id_0> world.  Two  spaces", ""]:
        assert tok.encode(text).ids == reference_tok(text).input_ids, text
    inputs = texts(3)
    assert_same(ours("text2text-generation", folder, inputs, max_new_tokens=10),
                theirs("text2text-generation", folder, inputs, max_new_tokens=10))


# -- mBART-50: src_lang / tgt_lang -----------------------------------------------------------


@pytest.fixture(scope="module")
def mbart(tmp_path_factory):
    return mbart50_checkpoint(tmp_path_factory.mktemp("mbart50"), seed=1)


def test_mbart50_translates_between_the_languages_asked(mbart, capsys):
    inputs = texts(3)
    kw = dict(src_lang="en_XX", tgt_lang="fr_XX", max_new_tokens=8, num_beams=2)
    got = ours("translation", mbart, inputs, **kw)
    assert_same(got, theirs("translation", mbart, inputs, **kw))
    ids = ours("translation", mbart, inputs[0], return_tensors=True, **kw)[0]["translation_token_ids"]
    tok = load(mbart)
    assert ids[:2].tolist() == [2, tok.token_to_id("fr_XX")]  # decoder start, then the forced target language
    german = ours("translation", mbart, inputs, **{**kw, "tgt_lang": "de_DE", "src_lang": "ro_RO"})
    assert_same(german, theirs("translation", mbart, inputs, **{**kw, "tgt_lang": "de_DE", "src_lang": "ro_RO"}))
    assert german != got
    code, out, err = run_cli(capsys, "run", "translation", inputs[0], "--model", mbart, "--src-lang", "en_XX",
                             "--tgt-lang", "fr_XX", "--max-new-tokens", 8, "--num-beams", 2)
    assert code == 0, err
    assert_same(json.loads(out), got[0:1])


def test_mbart50_language_errors(mbart):
    pipe = pipeline("translation", model=mbart)
    with pytest.raises(ValueError, match="requires a `src_lang` and a `tgt_lang`"):
        pipe("Hello", tgt_lang="fr_XX")
    with pytest.raises(ValueError, match=r"src_lang='en' is not a language code of this tokenizer; it knows ar_AR"):
        pipeline("translation_en_to_fr", model=mbart)("Hello")


# -- errors --------------------------------------------------------------------------------


def test_bad_inputs_and_options_are_clear_errors(ckpt):
    pipe = pipeline("summarization", model=ckpt["bart"])
    with pytest.raises(TypeError, match="summarization inputs must be strings"):
        pipe(["fine", 3])
    with pytest.raises(ValueError, match=r"unknown generation argument\(s\) \['max_tokens'\]"):
        pipe("text", max_tokens=3)
    with pytest.raises(ValueError, match="truncation must be"):
        pipe("text", truncation="sideways")
    with pytest.raises(ValueError, match="num_return_sequences"):
        pipe("text", num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="empty list"):
        pipe([])


# -- CLI -----------------------------------------------------------------------------------


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_runs_the_three_tasks(ckpt, capsys):
    inputs = texts(2)
    for task, name in [("summarization", "bart"), ("translation_en_to_fr", "t5"), ("text2text-generation", "t5-gated")]:
        code, out, err = run_cli(capsys, "run", task, *inputs, "--model", ckpt[name], "--max-new-tokens", 6,
                                 "--num-beams", 2)
        assert code == 0, err
        assert_same(json.loads(out), ours(task, ckpt[name], inputs, max_new_tokens=6, num_beams=2))


def test_cli_input_file_with_progress(ckpt, capsys, tmp_path):
    inputs = texts(5)
    source = tmp_path / "docs.txt"
    source.write_text("\n".join(inputs) + "\n")
    out_file = tmp_path / "summaries.jsonl"
    code, _, err = run_cli(capsys, "run", "summarization", "--model", ckpt["bart"], "--input", source, "--output",
                           out_file, "--max-length", 8, "--option", "min_length=3", "--batch-size", 2)
    assert code == 0, err
    assert "summarization" in err and "5/5" in err  # the progress bar
    got = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert_same(got, ours("summarization", ckpt["bart"], inputs, max_length=8, min_length=3))


def test_cli_errors_are_one_line(ckpt, capsys):
    code, _, err = run_cli(capsys, "run", "translation_de_to_fr", "Hallo", "--model", ckpt["marian"])
    assert code == 2 and err.startswith("lightpipe: error:") and "translates en to fr" in err
