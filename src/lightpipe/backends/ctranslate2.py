"""CTranslate2 as the engine of a BERT-style encoder: `pipeline(..., backend="ctranslate2")`.
(Generation models — GPT-2, Llama, Mistral, Qwen2, BART, Marian — generate through a
CTranslate2 Generator / Translator instead: `attach_generation`, ct2_specs.py and
ct2_generate.py.)

On this project's CPUs CTranslate2 runs all-MiniLM-L6-v2 about 1.8x faster than PyTorch in
float32, and its int8 (per-row int8 activations) keeps a cosine of 0.99 to float32 where
PyTorch has no int8 GEMM that does (issue 15). So the encoder's layers can run there while
everything else stays lightpipe's: tokenization, the length-sorted batcher, the task heads
(classifier, QA, MLM; small matmuls on the hidden states, in torch), sentence-transformers'
pooling chain.

The CTranslate2 model is built from the weights lightpipe has just loaded (not by
transformers' converter: lightpipe never imports transformers), with `ctranslate2.specs`,
saved to a temporary folder that is deleted once CTranslate2 has read it. Nothing is cached
on disk: building it costs about as much as reading the weights once. Then the encoder
module's `forward` (BertModel's, DistilBertModel's) is this engine's, and its torch layers
are dropped; the embeddings stay in torch for what shares them (a tied MLM decoder), and
BERT's pooler for its classifier.

What differs from the torch backend (docs/python.md, "Backends"): float32 outputs equal to
rounding (~1e-5), not bit for bit; int8 quantizes weights per row and activations per token
as CTranslate2 does; RoBERTa positions are numbered by place (real tokens 0, 1, 2, ...
after the padding offset), so a pad token id *inside* a text (the literal "<pad>") shifts no
position, where torch and transformers skip it.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from torch import nn

from .ct2_specs import ACTIVATIONS  # config.json's activation name → CTranslate2's Activation member

EXTRA = "pip install 'lightpipe[ctranslate2]'"
BERT_TYPES = ("bert", "roberta", "xlm-roberta", "camembert")
MODEL_TYPES = (*BERT_TYPES, "distilbert")
DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
GENERATION_HEADS = ("causal-lm", "seq2seq-lm")


def import_ctranslate2():
    try:
        import ctranslate2
    except ImportError as e:
        raise ImportError(f"backend='ctranslate2' needs the ctranslate2 package: {EXTRA} ({e})") from None
    return ctranslate2


def check(config: dict, device: torch.device, head: str | None = None) -> None:
    """Fail before the weights load: a model type CTranslate2 can't express (an encoder's, or
    with a generation `head` — causal-lm, seq2seq-lm — a generator's), a device other than the
    CPU (`device`: as loading.resolve_device gives it), or the package missing."""
    model_type = config.get("model_type")
    if head in GENERATION_HEADS:
        from .ct2_specs import check_generation

        check_generation(config)
    elif model_type not in MODEL_TYPES:
        raise ValueError(f"backend='ctranslate2' runs {', '.join(MODEL_TYPES)} encoders, not model_type "
                         f"{model_type!r}; use backend='torch' (the default) for this model")
    else:
        act = config.get("activation" if model_type == "distilbert" else "hidden_act", "gelu")
        if act not in ACTIVATIONS:
            raise ValueError(f"backend='ctranslate2' has no {act!r} activation (model_type {model_type!r}); "
                             f"known: {sorted(ACTIVATIONS)}. Use backend='torch'")
        if config.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"backend='ctranslate2' runs absolute positions only, not position_embedding_type "
                             f"{config['position_embedding_type']!r}")
    if device.type != "cpu":
        raise ValueError(f"backend='ctranslate2' runs on the CPU in lightpipe, not device='{device}'; "
                         "use backend='torch' on an accelerator")
    import_ctranslate2()


def compute_type_for(dtype: torch.dtype, quantize: str | None) -> str:
    """CTranslate2's compute type for lightpipe's dtype and quantize=, checked against this CPU."""
    ct2 = import_ctranslate2()
    compute_type = DTYPES[dtype]
    if quantize == "int8":
        compute_type = "int8" if dtype == torch.float32 else f"int8_{compute_type}"
    supported = ct2.get_supported_compute_types("cpu")
    if compute_type not in supported:
        raise ValueError(f"backend='ctranslate2' can't compute in {compute_type} on this CPU (dtype={dtype}, "
                         f"quantize={quantize!r}); it offers {sorted(supported)}")
    return compute_type


def attach(model: nn.Module, config: dict, quantize: str | None = None, folder=None, head: str | None = None
           ) -> nn.Module:
    """Run `model`'s encoder in CTranslate2 (in place; returns the model), or with a
    generation `head` its generation (`attach_generation`; `folder`: the checkpoint's, for its
    generation_config.json). `quantize="int8"`: CTranslate2's int8 for the linear layers; an
    encoder's torch head stays as loaded."""
    if head in GENERATION_HEADS:
        return attach_generation(model, config, quantize, folder)
    ct2 = import_ctranslate2()
    from ..models.bert import BertModel
    from ..models.distilbert import DistilBertModel

    encoder = next(m for m in model.modules() if isinstance(m, (BertModel, DistilBertModel)))
    dtype = encoder.embeddings.word_embeddings.weight.dtype
    compute_type = compute_type_for(dtype, quantize)
    spec, positions, takes_types = encoder_spec(encoder, config)
    with tempfile.TemporaryDirectory(prefix="lightpipe-ct2-") as folder:
        spec.save(folder)
        engine = ct2.Encoder(folder, device="cpu", compute_type=compute_type, inter_threads=1,
                             intra_threads=torch.get_num_threads())
    encoder.forward = Ctranslate2Forward(engine, positions, takes_types, dtype, compute_type)
    layers = encoder.encoder if isinstance(encoder, BertModel) else encoder.transformer
    layers["layer"] = nn.ModuleList()  # now in CTranslate2: don't hold the torch copy too
    return model


def attach_generation(model: nn.Module, config: dict, quantize: str | None = None, folder=None) -> nn.Module:
    """Generate with CTranslate2 (in place; returns the model): a Generator (decoder-only) or
    Translator (encoder-decoder) built from the loaded weights becomes
    `model.generation_backend`, which the generation pipelines call instead of the torch
    engine; the torch layers are dropped (the embeddings stay, for what reads the model's
    facts). The CTranslate2 model's files stay in a temporary folder while the pipeline lives
    (removed with it): a seeded sampling call loads a fresh engine from them
    (ct2_generate.Ctranslate2Generation.engine_for)."""
    from functools import partial

    from .ct2_generate import Ctranslate2Generation
    from .ct2_specs import decoder_spec, seq2seq_spec

    ct2 = import_ctranslate2()
    dtype = next(model.parameters()).dtype
    compute_type = compute_type_for(dtype, quantize)
    threads = dict(device="cpu", compute_type=compute_type, inter_threads=1, intra_threads=torch.get_num_threads())
    files = tempfile.TemporaryDirectory(prefix="lightpipe-ct2-")
    start = decoder_start(config, folder) if model.is_encoder_decoder else None
    spec = seq2seq_spec(model, config, start) if model.is_encoder_decoder else decoder_spec(model, config)
    spec.save(files.name)
    del spec
    load = partial(ct2.Translator if model.is_encoder_decoder else ct2.Generator, files.name, **threads)
    model.generation_backend = Ctranslate2Generation(load, model, model.is_encoder_decoder, compute_type, start, files)
    # now in CTranslate2: don't hold the torch copy of the layers too
    if model.is_encoder_decoder:
        model.model.encoder.layers = nn.ModuleList()
        model.model.decoder.layers = nn.ModuleList()
    elif config["model_type"] == "gpt2":
        model.transformer.h = nn.ModuleList()
    else:
        model.model.layers = nn.ModuleList()
    return model


def decoder_start(config: dict, folder) -> int:
    """The encoder-decoder's first decoder token, as generation will ask for it: the
    checkpoint's generation_config.json (else config.json) decoder_start_token_id, else its
    bos_token_id."""
    from pathlib import Path

    from ..generation_config import GenerationConfig
    from ..repo_files import read_json

    saved = read_json(Path(folder) / "generation_config.json", missing=None) if folder else None
    generation = GenerationConfig.from_model(config, saved)
    start = generation.decoder_start_token_id
    start = start if start is not None else generation.bos_token_id
    if start is None:
        raise ValueError("backend='ctranslate2': this encoder-decoder has no decoder_start_token_id or bos_token_id")
    return int(start)


def encoder_spec(encoder: nn.Module, config: dict):
    """The TransformerEncoderModelSpec of a loaded BertModel / DistilBertModel, with its number
    of positions and whether it takes token type ids."""
    from ctranslate2.specs import common_spec, transformer_spec

    distil = config["model_type"] == "distilbert"
    emb = encoder.embeddings
    layers = encoder.transformer.layer if distil else encoder.encoder.layer
    act = config.get("activation" if distil else "hidden_act", "gelu")
    # One token type (RoBERTa's type_vocab_size 1) is a constant row: it joins the position table, so
    # CTranslate2 needs no type ids. BERT's two types are a second embedding, summed with the words.
    takes_types = not distil and emb.token_type_embeddings.num_embeddings > 1
    spec = transformer_spec.TransformerEncoderModelSpec(transformer_spec.TransformerEncoderSpec(
        len(layers), layers[0].n_heads, pre_norm=False, activation=getattr(common_spec.Activation, ACTIVATIONS[act]),
        layernorm_embedding=True, num_source_embeddings=2 if takes_types else 1,
        embeddings_merge=common_spec.EmbeddingsMerge.ADD))
    enc = spec.encoder
    enc.scale_embeddings = False
    f32 = lambda t: t.detach().float().contiguous()  # noqa: E731 — the spec's weights, float32 on the CPU
    enc.embeddings[0].weight = f32(emb.word_embeddings.weight)
    table = emb.position_embeddings.weight
    if config["model_type"] in BERT_TYPES[1:]:  # RoBERTa: real tokens' positions start after padding_idx
        table = table[emb.padding_idx + 1:]
    if not distil and not takes_types:
        table = table + emb.token_type_embeddings.weight[0]
    elif takes_types:
        enc.embeddings[1].weight = f32(emb.token_type_embeddings.weight)
    enc.position_encodings.encodings = f32(table)
    norm(enc.layernorm_embedding, emb.LayerNorm)
    for block, layer in zip(enc.layer, layers):
        attn, ffn = block.self_attention, block.ffn
        if distil:
            a = layer.attention
            qkv, out, attn_norm = (a.q_lin, a.k_lin, a.v_lin), a.out_lin, layer.sa_layer_norm
            up, down, ffn_norm = layer.ffn.lin1, layer.ffn.lin2, layer.output_layer_norm
        else:
            s = layer.attention.self
            qkv, out, attn_norm = (s.query, s.key, s.value), layer.attention.output.dense, layer.attention.output.LayerNorm
            up, down, ffn_norm = layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm
        attn.linear[0].weight = f32(torch.cat([m.weight for m in qkv]))  # CTranslate2's fused (3C, C) projection
        attn.linear[0].bias = f32(torch.cat([m.bias for m in qkv]))
        linear(attn.linear[1], out)
        norm(attn.layer_norm, attn_norm)
        linear(ffn.linear_0, up)
        linear(ffn.linear_1, down)
        norm(ffn.layer_norm, ffn_norm)
    eps = 1e-12 if distil else config.get("layer_norm_eps", 1e-12)  # DistilBERT hard-codes its epsilon
    spec.config.layer_norm_epsilon = eps
    # Ids go in as numbers; the vocabulary only has to have the embeddings' size (unk: token 0).
    spec.register_vocabulary([f"<{i}>" for i in range(emb.word_embeddings.num_embeddings)])
    spec.config.unk_token = "<0>"
    spec.validate()
    return spec, table.shape[0], takes_types


def linear(spec, module: nn.Linear) -> None:
    spec.weight = module.weight.detach().float().contiguous()
    spec.bias = module.bias.detach().float().contiguous()


def norm(spec, module: nn.LayerNorm) -> None:
    spec.gamma = module.weight.detach().float().contiguous()
    spec.beta = module.bias.detach().float().contiguous()


class Ctranslate2Forward:
    """The encoder module's forward, run by a ctranslate2.Encoder: (input_ids, attention_mask,
    token_type_ids) → last hidden states (B, T, C), as the torch forward returns them.

    CTranslate2 masks by lengths, so the attention mask must be right padding (what the
    pipelines' collate makes); its outputs at padding positions are not the torch backend's
    (nothing reads them: the pipelines trim every row to its real tokens)."""

    def __init__(self, engine, positions: int, takes_types: bool, dtype: torch.dtype, compute_type: str):
        self.engine, self.positions, self.takes_types, self.dtype = engine, positions, takes_types, dtype
        self.compute_type = compute_type

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        if T > self.positions:
            raise ValueError(f"input of {T} tokens is longer than the model's {self.positions} positions; truncate it")
        if attention_mask is None:
            lengths = torch.full((B,), T, dtype=torch.int32)
        else:
            lengths = attention_mask.sum(1, dtype=torch.int32)
            if not torch.equal(attention_mask.bool(), torch.arange(T) < lengths[:, None]):
                raise ValueError("backend='ctranslate2' takes right-padded batches: each attention_mask row "
                                 "must be ones, then zeros")
        ct2 = import_ctranslate2()
        ids = ct2.StorageView.from_array(input_ids.to(torch.int32).numpy())
        types = None
        if self.takes_types:
            types = (token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)).tolist()
        out = self.engine.forward_batch(ids, ct2.StorageView.from_array(lengths.numpy()), token_type_ids=types)
        hidden = torch.from_numpy(np.asarray(out.last_hidden_state))  # shares the StorageView's memory, keeps it alive
        return hidden if self.dtype == torch.float32 else hidden.to(self.dtype)

    def __repr__(self) -> str:
        return f"Ctranslate2Forward(compute_type={self.compute_type!r})"
