"""The fresh-process tier: what a user runs, run as a user runs it.

Every course task, the CLI and the server run in a child interpreter of this venv in which
transformers and sentence_transformers can't be imported (tests/fresh.py), on tiny checkpoints
written beforehand in this process (with real checkpoints' conventions: a BOS post-processor, a
chat template using jinja extensions, generation_config eos lists). Each child's output is
compared with the same lightpipe call made here, in-process, where transformers is loaded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import fresh_checks
from compare import assert_same
from fresh import Fresh, assert_clean, free_port, lightpipe_command
from fresh_checks import CHAT, GREEDY, MINILM, NAMES, TEXTS, Checks
from tiny import bart_checkpoint, bpe_tokenizer, encoder_checkpoint, marian_checkpoint, save_checkpoint, t5_checkpoint
from tiny import spm_encoder_checkpoint
from tiny import labels, write_generation_config

pytestmark = pytest.mark.fresh

SST2 = {"id2label": {0: "NEGATIVE", 1: "POSITIVE"}, "label2id": {"NEGATIVE": 0, "POSITIVE": 1}}


# A chat template in the style of Qwen2 / Llama 3 instruct models: `{%- -%}` trimming, the BOS
# token, a namespace scan with `{% break %}`, `{% continue %}`, and `raise_exception`.
CHAT_TEMPLATE = """\
{{- bos_token }}
{%- set ns = namespace(tool_message=false) %}
{%- for message in messages %}
    {%- if message['role'] == 'tool' %}
        {%- set ns.tool_message = true %}
        {%- break %}
    {%- endif %}
{%- endfor %}
{%- if ns.tool_message %}
    {{- raise_exception('This model does not support tool messages.') }}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = 'You are a helpful assistant.' %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '<|im_start|>system\\n' + system_message + '<|im_end|>\\n' }}
{%- for message in loop_messages %}
    {%- if message['role'] not in ['user', 'assistant'] %}
        {{- raise_exception('Conversation roles must be user or assistant after an optional system message.') }}
    {%- endif %}
    {%- if message['content'] is none or message['content'] | trim == '' %}
        {%- continue %}
    {%- endif %}
    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def chat_decoder_checkpoint(folder: Path) -> Path:
    """A tiny Llama chat model saved as instruct checkpoints are: a fast tokenizer whose
    post-processor adds BOS, ChatML turn tokens, the template above, eos = <|im_end|>, and a
    generation_config with an eos list and sampling defaults."""
    import transformers
    from tokenizers.processors import TemplateProcessing

    base = bpe_tokenizer(folder, "gpt2").backend_tokenizer
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=base, bos_token="<|begin_of_text|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"], model_max_length=128, chat_template=CHAT_TEMPLATE)
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    for name in ("vocab.json", "merges.txt"):  # a tokenizer.json-only repo, as Llama 3's
        (Path(folder) / name).unlink(missing_ok=True)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, bos_token_id=bos, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():  # sharper logits: greedy paths without near-ties
        model.lm_head.weight.mul_(8)
    save_checkpoint(folder, model.eval(), tok)
    write_generation_config(folder, bos_token_id=bos, eos_token_id=[tok.eos_token_id, tok.pad_token_id],
                            pad_token_id=tok.pad_token_id, do_sample=True, temperature=0.7, top_p=0.8)
    return Path(folder)


@pytest.fixture(scope="session")
def folders(tmp_path_factory) -> dict[str, str]:
    """The checkpoints, written once per session by transformers in this process."""
    mk = tmp_path_factory.mktemp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = {
            "cls": encoder_checkpoint(mk("cls"), "bert", "sequence-classification", **SST2),
            "ner": encoder_checkpoint(mk("ner"), "bert", "token-classification", lowercase=False,
                                      **labels(["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"])),
            "qa": encoder_checkpoint(mk("qa"), "distilbert", "question-answering"),
            "mlm": encoder_checkpoint(mk("mlm"), "roberta", "masked-lm"),
            "nli": encoder_checkpoint(mk("nli"), "bert", "sequence-classification",
                                      **labels(["contradiction", "neutral", "entailment"])),
            "deberta": spm_encoder_checkpoint(mk("deberta"), "deberta-v2", "sequence-classification", form="bare",
                                              **labels(["entailment", "neutral", "contradiction"])),
            "albert": spm_encoder_checkpoint(mk("albert"), "albert", "masked-lm", form="slow"),
            "chat": chat_decoder_checkpoint(mk("chat")),
            "bart": bart_checkpoint(mk("bart")),
            "t5": t5_checkpoint(mk("t5")),
            "marian": marian_checkpoint(mk("marian")),
        }
    return {k: str(v) for k, v in built.items()}


@pytest.fixture(scope="session")
def fresh(tmp_path_factory) -> Fresh:
    return Fresh(tmp_path_factory.mktemp("fresh"))


@pytest.fixture(scope="session")
def reference(folders) -> Checks:
    """The same checks, in this process (transformers loaded): what each child must match."""
    return Checks(folders)


def as_json(value):
    return json.loads(json.dumps(value))


def test_children_run_this_tree_and_refuse_the_blocked_packages(fresh):
    """The harness itself: a child imports this tree's lightpipe, and an import of transformers
    fails there and is reported even when the importer catches the ImportError."""
    import lightpipe

    code = "import lightpipe\nprint(lightpipe.__file__)\ntry:\n    import transformers\nexcept ImportError as e:\n    print(e)"
    proc, report = fresh.run([sys.executable, "-c", code], "harness")
    where, refusal = proc.stdout.splitlines()
    assert where == lightpipe.__file__ and "blocked" in refusal
    with pytest.raises(AssertionError, match="tried 1 times"):
        assert_clean(report, "harness")


def test_the_chat_template_renders_as_transformers_renders_it(folders):
    """The fixture's template (jinja extensions, BOS, raise_exception) is one transformers accepts,
    and lightpipe renders it to the same prompt."""
    import transformers
    from jinja2.exceptions import TemplateError

    from lightpipe.tokenization import load

    theirs = transformers.AutoTokenizer.from_pretrained(folders["chat"])
    ours = load(folders["chat"])
    rendered = []
    for messages in (CHAT, CHAT[1:], CHAT + [{"role": "assistant", "content": " "}, {"role": "user", "content": "And?"}]):
        rendered.append(theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        assert ours.apply_chat_template(messages) == rendered[-1]
    assert rendered[1].startswith("<|begin_of_text|><|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert "<|im_start|>assistant" not in rendered[2][:-len("<|im_start|>assistant\n")]  # the blank turn: skipped
    tool = CHAT + [{"role": "tool", "content": "42"}]
    with pytest.raises(TemplateError, match="tool messages"):
        theirs.apply_chat_template(tool, tokenize=False)
    with pytest.raises(ValueError, match="tool messages"):
        ours.apply_chat_template(tool)


# -- every task, in one child --------------------------------------------------------------

@pytest.fixture(scope="session")
def child(fresh, folders):
    """All of fresh_checks.py's checks run in one child: {name: {"result"} | {"error"}}, and its report."""
    spec = fresh.root / "folders.json"
    spec.write_text(json.dumps(folders))
    results = fresh.root / "results.json"
    proc, report = fresh.run([sys.executable, fresh_checks.__file__, spec, results], "pipelines")
    assert proc.returncode == 0 and results.is_file(), f"the checks' child failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(results.read_text()), report, proc.stderr


def test_pipelines_child_imports_neither_transformers_nor_sentence_transformers(child):
    _, report, stderr = child
    assert_clean(report, "pipelines child", stderr)


@pytest.mark.parametrize("name", NAMES)
def test_task_in_a_fresh_process(name, child, reference):
    results, _, _ = child
    got = results[name]
    assert "error" not in got, f"{name} fails in a fresh process:\n{got['error']}"
    assert_same(got["result"], as_json(reference.run(name)))


def test_the_checks_cover_every_task():
    from lightpipe.tasks import TASKS

    covered = {name.split("/")[0] for name in NAMES}
    assert covered == set(TASKS), set(TASKS) ^ covered


# -- the CLI -------------------------------------------------------------------------------

def lightpipe_cli(fresh, *args, name, env=None):
    proc, report = fresh.run([*lightpipe_command(), *args], name, env=env)
    assert proc.returncode == 0, f"lightpipe {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}"
    assert_clean(report, f"lightpipe {args[0]} {args[1]}", proc.stderr)
    return proc.stdout


def test_cli_streams_text_generation(fresh, folders, reference):
    out = lightpipe_cli(fresh, "run", "text-generation", "A class", "--model", folders["chat"], "--max-new-tokens", "8",
                        "--option", "do_sample=false", name="cli-stream")
    assert out == "A class" + "".join(reference.run("text-generation/stream-prompt")) + "\n"


def test_cli_readme_demo_on_the_embedded_default_offline(fresh, reference):
    """The README's first command: sentence-similarity on the embedded MiniLM, an empty cache, offline."""
    source, others = "I've been waiting for a course my whole life.", ["I love learning.", "The stock market fell."]
    out = lightpipe_cli(fresh, "run", "sentence-similarity", "--source", source, *others, name="cli-similarity")
    expected = reference.pipe("sentence-similarity")({"source_sentence": source, "sentences": others})
    assert_same(json.loads(out), expected)
    assert expected[0] > expected[1]


def test_cli_input_files(fresh, folders, reference, tmp_path):
    """--input: text lines through a classifier into Parquet, and JSON lines of chats through the chat model."""
    import pyarrow.parquet

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    lightpipe_cli(fresh, "run", "text-classification", "--model", folders["cls"], "--input", texts,
                  "--output", tmp_path / "scored.parquet", name="cli-file")
    rows = pyarrow.parquet.read_table(tmp_path / "scored.parquet").to_pylist()
    expected = reference.pipe("text-classification", "cls")(TEXTS)
    assert_same(rows, [{"text": t, **r} for t, r in zip(TEXTS, expected)])

    chats = tmp_path / "chats.jsonl"
    chats.write_text("\n".join(json.dumps({"text": c}) for c in (CHAT, CHAT[1:])) + "\n", encoding="utf-8")
    lightpipe_cli(fresh, "run", "text-generation", "--model", folders["chat"], "--input", chats,
                  "--output", tmp_path / "answers.jsonl", "--max-new-tokens", "8", "--option", "do_sample=false",
                  name="cli-chat-file")
    rows = [json.loads(line) for line in (tmp_path / "answers.jsonl").read_text().splitlines()]
    expected = reference.pipe("text-generation", "chat")([CHAT, CHAT[1:]], **GREEDY)
    assert [row["generated_text"] for row in rows] == [r[0]["generated_text"] for r in expected]


def test_cli_downloads_then_runs(fresh, folders, reference, tmp_path):
    """A model id the cache doesn't have: fetched from a (fake) Hub, then run, in one fresh process."""
    from hubserver import HubServer

    hub = HubServer().start()
    try:
        hub.add("course/classifier", folders["cls"], pipeline_tag="text-classification")
        online = {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
        out = lightpipe_cli(fresh, "run", "text-classification", "--model", "course/classifier", TEXTS[0],
                            name="cli-download", env=online)
    finally:
        hub.stop()
    assert any(path.endswith("/model.safetensors") for _, path in hub.requests)
    assert_same(json.loads(out), reference.pipe("text-classification", "cls")(TEXTS[0]))


# -- the server ----------------------------------------------------------------------------

class Server:
    """`lightpipe serve` in a fresh child on a free port; its output goes to a log file."""

    def __init__(self, fresh, folders):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = fresh.root / "server.log"
        self.models = {"emb": MINILM, "cls": "cls", "chat": "chat"}  # the names clients use
        args = ["serve", "--model", MINILM, "--model", f"cls=text-classification={folders['cls']}",
                "--model", f"chat=text-generation={folders['chat']}", "--port", self.port, "--log-level", "warning"]
        with open(self.log, "w") as log:
            report = fresh.new_report("server")
            self.proc = subprocess.Popen([*lightpipe_command(), *map(str, args)], env=fresh.env(report),
                                         stdout=log, stderr=subprocess.STDOUT)
        self.report = report

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_healthy(self, seconds=120):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"lightpipe serve exited {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"lightpipe serve not healthy after {seconds} s:\n{self.output()}")

    def stop(self) -> int:
        """Ctrl-C, as a user stops it: uvicorn shuts down and the interpreter exits normally."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(fresh, folders):
    running = Server(fresh, folders)
    try:
        running.wait_healthy()
        yield running
    finally:
        running.stop()


@pytest.fixture
def clients_online(monkeypatch):
    """InferenceClient refuses every request under HF_HUB_OFFLINE=1, even to 127.0.0.1."""
    from huggingface_hub import constants
    from huggingface_hub.utils import reset_sessions

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    reset_sessions()
    yield
    reset_sessions()


def test_server_with_the_openai_client(server, reference):
    from openai import OpenAI

    client = OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
    out = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    expected = reference.pipe("feature-extraction").embed(TEXTS).numpy()
    np.testing.assert_allclose(np.array([d.embedding for d in out.data]), expected, atol=1e-4)

    gen = reference.pipe("text-generation", "chat")
    chat_model = server.models["chat"]
    prompt = "A class"
    plain = gen(prompt, **GREEDY, return_full_text=False)[0]["generated_text"]
    done = client.completions.create(model=chat_model, prompt=prompt, max_tokens=8, temperature=0)
    assert done.choices[0].text == plain

    answer = gen(CHAT, **GREEDY, return_full_text=False)[0]["generated_text"]
    reply = client.chat.completions.create(model=chat_model, messages=CHAT, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content == answer
    chunks = list(client.chat.completions.create(model=chat_model, messages=CHAT, max_tokens=8, temperature=0,
                                                 stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer


def test_server_with_the_inference_client(server, reference, clients_online):
    from huggingface_hub import InferenceClient

    vec = InferenceClient(f"{server.url}/models/{MINILM}").feature_extraction(TEXTS[0])
    np.testing.assert_allclose(vec[0], reference.pipe("feature-extraction").embed(TEXTS[:1])[0].numpy(), atol=1e-4)

    got = InferenceClient(f"{server.url}/models/{server.models['cls']}").text_classification(TEXTS[1])
    expected = reference.pipe("text-classification", "cls")(TEXTS[1], top_k=None)
    assert_same([{"label": e.label, "score": e.score} for e in got], expected)

    gen = InferenceClient(f"{server.url}/models/{server.models['chat']}")
    expected = reference.pipe("text-generation", "chat")("A class", **GREEDY, return_full_text=False)
    assert gen.text_generation("A class", max_new_tokens=8) == expected[0]["generated_text"]
    assert "".join(gen.text_generation("A class", max_new_tokens=8, stream=True)) == expected[0]["generated_text"]


def test_server_logprobs_through_lightpipe_serve(server, folders):
    """Per-token log-probabilities from `lightpipe serve` (no transformers in it) are
    transformers' own greedy scores for the same chat, computed here."""
    import transformers
    from openai import OpenAI

    model = transformers.AutoModelForCausalLM.from_pretrained(folders["chat"]).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folders["chat"])
    prompt_ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                             do_sample=False, max_new_tokens=8, output_scores=True, return_dict_in_generate=True)
        expected = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0].tolist()
    ids = out.sequences[0, len(prompt_ids):].tolist()
    client = OpenAI(base_url=server.url + "/v1", api_key="-", max_retries=0)
    reply = client.chat.completions.create(model=server.models["chat"], messages=CHAT, max_tokens=8, temperature=0,
                                           logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert [c.token for c in content] == [tok.decode([i], clean_up_tokenization_spaces=False) for i in ids]
    np.testing.assert_allclose([c.logprob for c in content], expected, atol=1e-4)
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob >= c.logprob - 1e-6 for c in content)


def test_server_answers_a_refused_chat_with_422_and_serves_the_playground(server):
    bad = {"model": server.models["chat"], "messages": CHAT + [{"role": "tool", "content": "42"}], "max_tokens": 4}
    r = httpx.post(server.url + "/v1/chat/completions", json=bad, timeout=60)
    assert r.status_code == 422 and "tool messages" in r.text, r.text
    page = httpx.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()


def test_server_process_imported_neither_transformers_nor_sentence_transformers(server):
    code = server.stop()
    assert_clean(server.report, f"lightpipe serve (exit {code})", server.output())
