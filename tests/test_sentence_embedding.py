"""pooling="auto" against sentence-transformers itself, live: checkpoints built and saved by
SentenceTransformer(modules=[Transformer, Pooling, Dense…, Normalize]).save() on tiny random
encoders, in its v5 format and rewritten to its classic one, with every module combination,
prompts, truncate_dim and inputs longer than max_seq_length; the real all-MiniLM-L6-v2; the
unsupported modules; a Hub download; and the server's OpenAI and TEI embedding routes."""

import json
import warnings
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load_file

from lightpipe import pipeline
from tiny import encoder_checkpoint, sentences

pytestmark = pytest.mark.parity

MAX_SEQ = 24
LONG = " ".join(sentences(12, start=10))  # well past the tiny models' 128 positions
TEXTS = [s for s in sentences(30, start=40) if len(s) < 200][:8] + [
    "Short one.", "MiXeD CaSe Python Is GREAT", "Ünïcödé text — with accents and ✓ symbols!", LONG]
PROMPTS = {"query": "query: ", "doc": "passage: "}
SHORT = ["Short one.", "a kitten on a rug", "Stock prices fell.", "the end"]  # fit MAX_SEQ


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sentence-transformers' deprecation and info chatter
        yield


BASES: dict = {}


@pytest.fixture(scope="module", autouse=True)
def bases(tmp_path_factory):
    BASES["root"] = tmp_path_factory.mktemp("bases")
    yield
    BASES.clear()


def base(model_type: str) -> Path:
    """A tiny random encoder, built once per module (a cased tokenizer for bert, so that
    do_lower_case changes the tokens)."""
    folder = BASES["root"] / model_type
    if not (folder / "config.json").is_file():
        encoder_checkpoint(folder, model_type, "base", **({"lowercase": False} if model_type == "bert" else {}))
    return folder


def st_save(folder, *, model_type="bert", max_seq_length=MAX_SEQ, do_lower_case=False, pooling=("mean",),
            include_prompt=True, dense=(), normalize=False, prompts=None, default_prompt_name=None,
            truncate_dim=None, seed=0, extra=()) -> Path:
    """A checkpoint saved by sentence-transformers: Transformer → Pooling → Dense(out, bias,
    activation)… → [Normalize], with `extra` modules after the Transformer."""
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(seed)
    transformer = models.Transformer(str(base(model_type)), max_seq_length=max_seq_length, do_lower_case=do_lower_case)
    width = transformer.get_embedding_dimension()
    modules = [transformer, *extra]
    if extra:
        width = extra[-1].get_embedding_dimension()
    modules.append(models.Pooling(width, pooling_mode=pooling, include_prompt=include_prompt))
    size = width * len(pooling)
    for out, bias, activation in dense:
        modules.append(models.Dense(size, out, bias=bias, activation_function=activation))
        size = out
    if normalize:
        modules.append(models.Normalize())
    model = SentenceTransformer(modules=modules, prompts=prompts, default_prompt_name=default_prompt_name,
                                truncate_dim=truncate_dim, device="cpu")
    model.save(str(folder))
    return Path(folder)


def to_classic(folder: Path, max_seq_length=None, do_lower_case=False) -> Path:
    """Rewrite a v5 save in sentence-transformers' classic format, as most Hub checkpoints are:
    `sentence_transformers.models.X` types, pooling_mode_* flags, sentence_bert_config.json with
    max_seq_length and do_lower_case (applied by the loader, not saved into the tokenizer)."""
    modules = json.loads((folder / "modules.json").read_text())
    for m in modules:
        m["type"] = "sentence_transformers.models." + m["type"].rsplit(".", 1)[-1]
    (folder / "modules.json").write_text(json.dumps(modules))
    pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
    modes = pooling.pop("pooling_mode")
    modes = [modes] if isinstance(modes, str) else modes
    flags = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
             "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
             "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
    classic = {"word_embedding_dimension": pooling.pop("embedding_dimension"),
               **{flag: mode in modes for flag, mode in flags.items()}, **pooling}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(classic))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                  "do_lower_case": do_lower_case}))
    return folder


def reference(folder, texts=TEXTS, normalize=False, **kwargs) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    return model.encode(texts, convert_to_tensor=True, normalize_embeddings=normalize, **kwargs).cpu()


def ours(folder, texts=TEXTS, **kwargs) -> torch.Tensor:
    return torch.tensor(pipeline("feature-extraction", model=folder)(texts, pooling="auto", **kwargs))


def assert_matches(folder, texts=TEXTS, **kwargs):
    got, theirs = ours(folder, texts, **kwargs), reference(folder, texts, **kwargs)
    torch.testing.assert_close(got, theirs, atol=1e-5, rtol=1e-5)
    return got


def token_count(folder, text) -> int:
    return len(pipeline("feature-extraction", model=folder).tokenizer.encode(text).ids)


def test_inputs_are_longer_than_max_seq_length(tmp_path):
    folder = st_save(tmp_path)
    assert token_count(folder, LONG) > 128 and token_count(folder, TEXTS[0]) > MAX_SEQ
    assert all(token_count(folder, PROMPTS["doc"] + text) <= MAX_SEQ for text in SHORT)


# -- Pooling -------------------------------------------------------------------------------

@pytest.mark.parametrize("include_prompt", [True, False])
@pytest.mark.parametrize("pooling", [("cls",), ("max",), ("mean",), ("mean_sqrt_len_tokens",), ("weightedmean",),
                                     ("lasttoken",), ("cls", "mean", "max"),
                                     ("lasttoken", "weightedmean", "mean_sqrt_len_tokens")], ids="+".join)
def test_every_pooling_mode(tmp_path, pooling, include_prompt):
    folder = st_save(tmp_path, pooling=pooling, include_prompt=include_prompt, prompts=PROMPTS,
                     default_prompt_name="doc")
    got = assert_matches(folder)
    assert got.shape == (len(TEXTS), 32 * len(pooling))
    assert_matches(folder, prompt_name="query")
    assert_matches(folder, prompt="a prompt longer than max_seq_length " * 4)  # only its last token is pooled


@pytest.mark.parametrize("pooling", [("cls", "max", "mean"), ("mean", "lasttoken", "cls", "weightedmean")],
                         ids="+".join)
def test_classic_pooling_flags_concatenate_in_sentence_transformers_order(tmp_path, pooling):
    folder = to_classic(st_save(tmp_path, pooling=pooling, prompts=PROMPTS, default_prompt_name="query",
                                include_prompt=False), MAX_SEQ)
    assert_matches(folder)


# -- Dense, Normalize, backbones -------------------------------------------------------------

@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dense", [
    [(16, True, torch.nn.Tanh())],
    [(16, False, torch.nn.Identity())],
    [(48, True, torch.nn.Tanh()), (12, False, torch.nn.Identity())],
], ids=["tanh-bias", "identity-nobias", "two-dense"])
def test_dense_and_normalize(tmp_path, dense, normalize):
    folder = st_save(tmp_path, pooling=("mean", "cls"), dense=dense, normalize=normalize)
    got = assert_matches(folder)
    assert got.shape[1] == dense[-1][0]
    assert torch.allclose(got.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5) == normalize
    config = json.loads((folder / "2_Dense" / "config.json").read_text())
    assert config["activation_function"] in ("torch.nn.modules.activation.Tanh", "torch.nn.modules.linear.Identity")


@pytest.mark.parametrize("model_type", ["distilbert", "roberta"])
def test_other_encoders_with_the_whole_chain(tmp_path, model_type):
    folder = st_save(tmp_path, model_type=model_type, pooling=("weightedmean", "max"), include_prompt=False,
                     dense=[(20, True, torch.nn.Tanh())], normalize=True, prompts=PROMPTS, default_prompt_name="query")
    assert_matches(folder)
    assert_matches(folder, prompt="something else: ", normalize=True, truncate_dim=10)


def test_classic_format_with_dense_and_normalize(tmp_path):
    folder = to_classic(st_save(tmp_path, max_seq_length=None, dense=[(16, True, torch.nn.Tanh())], normalize=True),
                        max_seq_length=40)
    assert (folder / "2_Dense" / "model.safetensors").is_file()
    assert_matches(folder)


# -- the Transformer module: max_seq_length, do_lower_case ----------------------------------

def test_max_seq_length_cuts_and_truncation_false_refuses(tmp_path):
    folder = st_save(tmp_path, max_seq_length=MAX_SEQ)
    longer = st_save(tmp_path / "longer", max_seq_length=100)
    cut = assert_matches(folder)
    assert not torch.allclose(cut, ours(longer), atol=1e-3)  # the cut matters for the long inputs
    torch.testing.assert_close(ours(folder, truncation=True), cut)
    with pytest.raises(ValueError, match=f"max_seq_length={MAX_SEQ}.*truncation=True"):
        ours(folder, TEXTS, truncation=False)
    assert ours(folder, ["Short one."], truncation=False).shape == (1, 32)
    # without a max_seq_length the model's own limit (128 positions) is where it cuts
    assert_matches(st_save(tmp_path / "unset", max_seq_length=None))


@pytest.mark.parametrize("classic", [False, True])
def test_do_lower_case(tmp_path, classic):
    if classic:  # the loader lowercases (sentence_bert_config.json)
        folder = to_classic(st_save(tmp_path, max_seq_length=None), MAX_SEQ, do_lower_case=True)
    else:  # v5 saves a Lowercase step into tokenizer.json
        folder = st_save(tmp_path, do_lower_case=True)
    cased = st_save(tmp_path / "cased", do_lower_case=False)
    got = assert_matches(folder, prompt="QUERY: ")
    assert not torch.allclose(got, reference(cased, prompt="QUERY: "), atol=1e-3)  # lowercasing changed tokens
    if classic:  # per-token output stays transformers': the tokenizer as saved, lowercasing only in the chain
        extractor = pipeline("feature-extraction", model=folder)
        extractor(TEXTS, pooling="auto")
        text = "MiXeD CaSe Python"
        assert extractor.tokenizer.encode(text).ids != extractor.sentence_model.tokenizer.encode(text).ids
        assert extractor.sentence_model.tokenizer.encode(text).ids == extractor.tokenizer.encode(text.lower()).ids


# -- prompts and truncate_dim ---------------------------------------------------------------

def test_prompts_by_name_explicit_and_default(tmp_path):
    folder = st_save(tmp_path, prompts=PROMPTS, default_prompt_name="query", include_prompt=False,
                     pooling=("mean", "lasttoken"))
    default = assert_matches(folder)
    assert_matches(folder, prompt_name="doc")
    assert_matches(folder, prompt="Instruct: find the docs\nQuery: ")
    no_prompt = assert_matches(folder, prompt="")
    assert_matches(folder, prompt_name="document")  # sentence-transformers' empty encode_document prompt
    assert not torch.allclose(default, no_prompt, atol=1e-3)
    with pytest.raises(ValueError, match=r"prompt_name 'nope' is not one of .*'doc'"):
        ours(folder, prompt_name="nope")
    with pytest.raises(ValueError, match="prompt or prompt_name, not both"):
        ours(folder, prompt="x", prompt_name="doc")
    with pytest.raises(TypeError, match="prompt_name must be a string"):
        ours(folder, prompt_name=3)
    with pytest.raises(ValueError, match="need pooling='auto'"):
        pipeline("feature-extraction", model=folder)(TEXTS, pooling="mean", prompt_name="doc")


def test_truncate_dim_from_the_call_and_the_checkpoint(tmp_path):
    folder = st_save(tmp_path, dense=[(16, True, torch.nn.Tanh())], normalize=True)
    for normalize in (False, True):
        got = assert_matches(folder, truncate_dim=6, normalize=normalize)
        assert got.shape == (len(TEXTS), 6)
    saved = st_save(tmp_path / "saved", dense=[(16, True, torch.nn.Tanh())], truncate_dim=5)
    assert json.loads((saved / "config_sentence_transformers.json").read_text())["truncate_dim"] == 5
    assert assert_matches(saved).shape == (len(TEXTS), 5)
    assert assert_matches(saved, truncate_dim=3).shape == (len(TEXTS), 3)
    with pytest.raises(ValueError, match="truncate_dim=17 but .* makes 16-dimensional"):
        ours(folder, truncate_dim=17)
    with pytest.raises(ValueError, match="truncate_dim must be a positive integer"):
        ours(folder, truncate_dim=0)


# -- the other tasks on the same path -------------------------------------------------------

def test_sentence_similarity_and_zero_shot_use_the_chain(tmp_path):
    from sentence_transformers import util

    folder = st_save(tmp_path, pooling=("max",), dense=[(16, True, torch.nn.Tanh())], prompts=PROMPTS,
                     default_prompt_name="query")
    source, others = TEXTS[0], TEXTS[1:5] + [LONG]
    theirs = util.cos_sim(*reference(folder, [source], prompt_name="doc"), reference(folder, others, prompt_name="doc"))
    got = pipeline("sentence-similarity", model=folder)({"source_sentence": source, "sentences": others},
                                                        prompt_name="doc")
    torch.testing.assert_close(torch.tensor(got), theirs[0], atol=1e-5, rtol=1e-5)

    labels = ["loops", "numbers", "classes"]
    texts = TEXTS[:3]
    vectors = reference(folder, texts + [f"This example is {x}." for x in labels], normalize=True)
    cos = (vectors[:3] @ vectors[3:].T).double()
    result = pipeline("zero-shot-classification", model=folder)(texts, candidate_labels=labels, multi_label=True)
    for r, row in zip(result, (cos + 1) / 2):
        assert r["labels"] == [labels[i] for i in row.argsort(descending=True)]
        torch.testing.assert_close(torch.tensor(r["scores"], dtype=torch.float64), row.sort(descending=True).values,
                                   atol=1e-5, rtol=1e-5)


# -- unsupported modules, pickles ------------------------------------------------------------

def test_a_module_lightpipe_cannot_run_is_a_clear_error(tmp_path):
    from sentence_transformers import models

    cnn = models.CNN(in_embedding_dimension=32, out_channels=8, kernel_sizes=[1, 3])
    folder = st_save(tmp_path, extra=[cnn])
    with pytest.raises(ValueError, match=r"module '1_CNN' is sentence_transformers\..*CNN, which lightpipe can't run"):
        ours(folder)
    # the per-token output (transformers' feature-extraction) doesn't need the chain
    assert len(pipeline("feature-extraction", model=folder)("Short one.")[0][0]) == 32

    custom = st_save(tmp_path / "custom", normalize=True)
    modules = json.loads((custom / "modules.json").read_text())
    modules[-1]["type"] = "my_package.layers.Normalize"
    (custom / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"module '2_Normalize' is custom code \(my_package.layers.Normalize\)"):
        ours(custom)
    with pytest.raises(ValueError, match="never runs a repository's code"):
        pipeline("sentence-similarity", model=custom)({"source_sentence": "a", "sentences": ["b"]})


def test_module_paths_stay_inside_the_checkpoint(tmp_path):
    folder = st_save(tmp_path / "model", dense=[(16, True, torch.nn.Tanh())])
    outside = tmp_path / "elsewhere"
    (folder / "2_Dense").rename(outside)  # a Dense module that lives outside the model folder
    modules = json.loads((folder / "modules.json").read_text())
    modules[2]["path"] = "../elsewhere"
    (folder / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match=r"modules.json names file '../elsewhere', which is outside the model folder"):
        ours(folder)
    (folder / "modules.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match=r"modules.json must hold a JSON array"):
        ours(folder)


def test_pickled_dense_weights_need_allow_pickle(tmp_path):
    folder = st_save(tmp_path, dense=[(16, True, torch.nn.Tanh())])
    dense = folder / "2_Dense"
    torch.save(load_file(dense / "model.safetensors"), dense / "pytorch_model.bin")
    (dense / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="2_Dense has only pickled weights .*allow_pickle=True"):
        ours(folder)
    got = pipeline("feature-extraction", model=folder, allow_pickle=True)(TEXTS, pooling="auto")
    torch.testing.assert_close(torch.tensor(got), reference(folder), atol=1e-5, rtol=1e-5)


# -- the real all-MiniLM-L6-v2 ------------------------------------------------------------------

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def test_minilm_cuts_at_its_max_seq_length_256():
    from lightpipe.hub import resolve

    folder = resolve(MINILM)
    texts = [" ".join(sentences(15, start=20)), " ".join(sentences(25, start=100)), TEXTS[0]]
    extractor = pipeline("feature-extraction", model=MINILM)
    lengths = [len(e.ids) for e in extractor.tokenizer.encode_batch(texts)]
    assert 256 < lengths[0] < 512 < lengths[1]
    got = torch.tensor(extractor(texts, pooling="auto"))
    torch.testing.assert_close(got, reference(folder, texts), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="max_seq_length=256"):
        extractor(texts, pooling="auto", truncation=False)
    got = torch.tensor(extractor(texts, pooling="auto", prompt_name="query", truncate_dim=100, normalize=True))
    torch.testing.assert_close(got, reference(folder, texts, prompt_name="query", truncate_dim=100, normalize=True),
                               atol=1e-5, rtol=1e-5)


# -- the Hub: every module's files, never code -------------------------------------------------

def test_download_of_a_checkpoint_with_dense(hub_server, tmp_path):
    folder = st_save(tmp_path / "st", dense=[(16, False, torch.nn.Identity())], normalize=True, prompts=PROMPTS,
                     default_prompt_name="query")
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    files.update({"2_Dense/custom_layer.py": "raise SystemExit", "modeling_x.py": "raise SystemExit",
                  "onnx/model.onnx": b"\0" * 8})
    hub_server.add("org/st-dense", files)
    got = torch.tensor(pipeline("feature-extraction", model="org/st-dense")(TEXTS, pooling="auto"))
    torch.testing.assert_close(got, reference(folder), atol=1e-5, rtol=1e-5)
    fetched = set(hub_server.downloads())
    assert {"modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "1_Pooling/config.json",
            "2_Dense/config.json", "2_Dense/model.safetensors"} <= fetched
    assert not any(p.endswith(".py") or p.startswith("onnx/") for p in fetched)


def test_download_of_pickled_dense_weights_only_with_allow_pickle(hub_server, tmp_path):
    folder = st_save(tmp_path / "st", dense=[(16, True, torch.nn.Tanh())])
    torch.save(load_file(folder / "2_Dense" / "model.safetensors"), folder / "2_Dense" / "pytorch_model.bin")
    (folder / "2_Dense" / "model.safetensors").unlink()
    hub_server.add("org/st-pickled", folder)
    hub_server.add("org/st-pickled-2", folder)
    got = pipeline("feature-extraction", model="org/st-pickled", allow_pickle=True)(TEXTS, pooling="auto")
    torch.testing.assert_close(torch.tensor(got), reference(folder), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="2_Dense has only pickled weights .*allow_pickle=True"):
        pipeline("feature-extraction", model="org/st-pickled")(TEXTS, pooling="auto")
    # without allow_pickle the pickle isn't even fetched
    with pytest.raises(FileNotFoundError, match="2_Dense.*allow_pickle=True.*lightpipe download MODEL --allow-pickle"):
        pipeline("feature-extraction", model="org/st-pickled-2")(TEXTS, pooling="auto")
    assert hub_server.downloads().count("2_Dense/pytorch_model.bin") == 1


# -- the server: OpenAI /v1/embeddings and TEI /embed ------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from lightpipe.server import create_app, start_in_thread

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folder = st_save(tmp_path_factory.mktemp("served"), pooling=("mean", "max"), include_prompt=False,
                         dense=[(16, True, torch.nn.Tanh())], prompts=PROMPTS, default_prompt_name="query")
    app = create_app([f"feature-extraction={folder}"], max_client_batch_size=32)
    with start_in_thread(app) as running:
        for _ in range(600):
            if httpx.get(running.url + "/health").status_code == 200:
                break
            import time

            time.sleep(0.05)
        running.folder = folder
        yield running


@pytest.mark.server
def test_openai_embeddings_and_dimensions(served):
    from openai import OpenAI, UnprocessableEntityError

    client = OpenAI(base_url=served.url + "/v1", api_key="-")
    texts = SHORT
    out = client.embeddings.create(model=str(served.folder), input=texts)
    got = torch.tensor([d.embedding for d in out.data])
    torch.testing.assert_close(got, reference(served.folder, texts, normalize=True), atol=1e-5, rtol=1e-5)
    out = client.embeddings.create(model=str(served.folder), input=texts, dimensions=8)
    got = torch.tensor([d.embedding for d in out.data])
    torch.testing.assert_close(got, reference(served.folder, texts, normalize=True, truncate_dim=8), atol=1e-5, rtol=1e-5)
    with pytest.raises(UnprocessableEntityError) as err:
        client.embeddings.create(model=str(served.folder), input=texts, dimensions=17)
    assert "16-dimensional" in err.value.response.text


@pytest.mark.server
def test_tei_embed_prompt_name_and_truncate(served):
    def embed(**body):
        return httpx.post(served.url + "/embed", json=body, timeout=60)

    texts = SHORT
    got = embed(inputs=texts, prompt_name="doc").json()
    torch.testing.assert_close(torch.tensor(got), reference(served.folder, texts, normalize=True, prompt_name="doc"),
                               atol=1e-5, rtol=1e-5)
    got = embed(inputs=texts, normalize=False).json()  # the default prompt, no Normalize module
    torch.testing.assert_close(torch.tensor(got), reference(served.folder, texts), atol=1e-5, rtol=1e-5)
    r = embed(inputs=texts, prompt_name="nope")
    assert r.status_code == 422 and "'doc'" in r.json()["error"]
    r = embed(inputs=[LONG])  # TEI's default truncate=false: an over-long input is refused
    assert r.status_code == 422 and f"max_seq_length={MAX_SEQ}" in r.json()["error"], r.text
    got = embed(inputs=[LONG], truncate=True, dimensions=4).json()
    torch.testing.assert_close(torch.tensor(got), reference(served.folder, [LONG], normalize=True, truncate_dim=4),
                               atol=1e-5, rtol=1e-5)
