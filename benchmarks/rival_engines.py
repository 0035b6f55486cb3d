"""ONNX Runtime and CTranslate2 for benchmarks/rivals.py: converted from the same transformers
checkpoint folders the other columns load, cached (one folder per conversion, written under a
temporary name and renamed when complete, so an interrupted run rebuilds it), and run with a
fixed number of threads.

ONNX Runtime: exported by optimum (`optimum.exporters.onnx.main_export`). Encoders are then
fused by ORT's own transformer optimizer (attention, skip-layer-norm, bias-GELU: ORT's recipe
for BERT-like models on CPU). int8 is `onnxruntime.quantization.quantize_dynamic` with
per-channel weight scales and reduce_range (7-bit weights): ORT's advice for CPUs without VNNI,
where 8-bit weights can saturate the u8 x s8 multiply. Measured on the real MiniLM (400
sentences): per-tensor 8-bit weights give a mean cosine to sentence-transformers of 0.958 (min
0.90), these settings 0.991 (min 0.974), about 20% slower. Generation runs through optimum's
ORTModel classes: transformers' generate() loop calling ORT sessions with a KV cache.

CTranslate2: `ctranslate2.converters.TransformersConverter`, float32 on disk; int8 is the same
model loaded with compute_type="int8" (CTranslate2 quantizes the weights as it loads them).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def cached(folder: Path, build) -> Path:
    """`folder`, made by `build(tmp_folder)` unless a complete one is already there."""
    if folder.is_dir():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    build(partial)
    partial.rename(folder)
    return folder


# ---- ONNX Runtime ----

def onnx_export(checkpoint: Path, out: Path, task: str) -> Path:
    """optimum's export of `checkpoint` for `task` (e.g. "feature-extraction",
    "text-classification", "text-generation-with-past", "text2text-generation-with-past")."""
    from optimum.exporters.onnx import main_export

    def build(tmp):
        main_export(str(checkpoint), str(tmp), task=task, library_name="transformers")
        # seq2seq: keep the separate decoder and decoder-with-past (the merged copy adds an If
        # node per step and a third copy of the decoder weights)
        (tmp / "decoder_model_merged.onnx").unlink(missing_ok=True)

    return cached(out, build)


def onnx_fuse_encoder(exported: Path, out: Path, num_heads: int, hidden_size: int) -> Path:
    """ORT's transformer optimizer over a BERT-like encoder's model.onnx."""
    from onnxruntime.transformers.optimizer import optimize_model

    def build(tmp):
        copy_side_files(exported, tmp)
        fused = optimize_model(str(exported / "model.onnx"), model_type="bert", num_heads=num_heads,
                               hidden_size=hidden_size)
        fused.save_model_to_file(str(tmp / "model.onnx"))

    return cached(out, build)


def onnx_int8(src: Path, out: Path) -> Path:
    """Every .onnx file of `src`, dynamically quantized (int8 weights, activations per call)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    def build(tmp):
        copy_side_files(src, tmp)
        for model in sorted(src.glob("*.onnx")):
            # fused graphs hold contrib ops that shape inference can't type: their outputs are float
            quantize_dynamic(model, tmp / model.name, weight_type=QuantType.QInt8, per_channel=True,
                             reduce_range=True, extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})

    return cached(out, build)


def copy_side_files(src: Path, dst: Path) -> None:
    """Config and tokenizer files (everything but the ONNX graphs)."""
    for f in src.iterdir():
        if f.is_file() and f.suffix not in (".onnx", ".onnx_data"):
            shutil.copy(f, dst / f.name)


def ort_options(threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return options


def ort_session(folder: Path, threads: int):
    import onnxruntime as ort

    return ort.InferenceSession(str(folder / "model.onnx"), ort_options(threads), providers=["CPUExecutionProvider"])


# ---- CTranslate2 ----

class _PaddedVocabulary:
    """A tokenizer whose vocabulary is padded with unused names up to the model's embedding
    rows: CTranslate2 wants one token per row, and the benchmark's GPT-2 and distilbart keep
    their real vocabulary sizes (50257, 50265) with smaller tokenizers trained on the
    benchmark's own text."""

    def __init__(self, tokenizer, size: int):
        self._tokenizer, self._size = tokenizer, size

    def get_vocab(self):
        vocab = dict(self._tokenizer.get_vocab())
        for i in range(len(vocab), self._size):
            vocab[f"<unused_{i}>"] = i
        return vocab

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def ct2_convert(checkpoint: Path, out: Path) -> Path:
    """CTranslate2's float32 conversion of `checkpoint`."""
    import transformers
    from ctranslate2.converters import TransformersConverter

    class Converter(TransformersConverter):
        def load_model(self, model_class, model_name_or_path, **kwargs):
            model = super().load_model(model_class, model_name_or_path, **kwargs)
            if model.config.model_type == "bart" and not hasattr(model.config, "normalize_before"):
                model.config.normalize_before = False  # BART is post-norm; ctranslate2 4.8 reads a key 4.57's BartConfig lacks
            return model

        def load_tokenizer(self, tokenizer_class, model_name_or_path, **kwargs):
            tokenizer = super().load_tokenizer(tokenizer_class, model_name_or_path, **kwargs)
            rows = transformers.AutoConfig.from_pretrained(model_name_or_path).vocab_size
            return _PaddedVocabulary(tokenizer, rows) if len(tokenizer.get_vocab()) < rows else tokenizer

    return cached(out, lambda tmp: Converter(str(checkpoint)).convert(str(tmp), force=True))


def ct2_vocabulary(model: Path) -> dict[str, int]:
    """token -> id of a converted model's (target or only) vocabulary."""
    import json

    name = next(n for n in ("target_vocabulary.json", "shared_vocabulary.json", "vocabulary.json") if (model / n).is_file())
    return {token: i for i, token in enumerate(json.loads((model / name).read_text()))}


def ct2_generate(generator, tok, texts: list[str], new_tokens: int) -> list[list[int]]:
    """A CTranslate2 Generator's greedy continuations, exactly `new_tokens` ids each (rivals.py's
    decoding rows), fed the tokens of `tok` (the checkpoint's transformers tokenizer)."""
    starts = [tok.convert_ids_to_tokens(tok(text)["input_ids"]) for text in texts]
    results = generator.generate_batch(starts, max_length=new_tokens, min_length=new_tokens, beam_size=1,
                                       sampling_topk=1, include_prompt_in_result=False)
    return [r.sequences_ids[0] for r in results]


def ct2_summarize(translator, tok, vocabulary: dict[str, int], documents: list[str], settings: dict) -> list[list[int]]:
    """A CTranslate2 Translator's best summary of each document as ids, with BART's
    forced_bos_token_id as target prefix and `settings` (benchmarks/summarization.GENERATION)."""
    sources = [tok.convert_ids_to_tokens(i) for i in tok(documents, truncation=True)["input_ids"]]
    # transformers' max_length counts the decoder start token, CTranslate2's doesn't
    results = translator.translate_batch(
        sources, target_prefix=[[tok.bos_token]] * len(documents), beam_size=settings["num_beams"],
        length_penalty=settings["length_penalty"], no_repeat_ngram_size=settings["no_repeat_ngram_size"],
        max_decoding_length=settings["max_length"] - 1, min_decoding_length=settings["min_length"] - 1)
    return [[vocabulary[t] for t in r.hypotheses[0]] for r in results]


def ct2_threads(threads: int) -> dict:
    return dict(device="cpu", inter_threads=1, intra_threads=threads)


def as_array(storage) -> np.ndarray:
    """A CTranslate2 StorageView (on CPU) as a float32 numpy array."""
    return np.asarray(storage, dtype=np.float32)
