"""CTranslate2 model specs of lightpipe's loaded generation models, built from their weights
(never by transformers' converter): GPT-2 and the Llama family (llama, mistral, qwen2) as a
`TransformerDecoderModelSpec`, BART and Marian as a `TransformerSpec` (encoder + decoder).

The layouts follow CTranslate2's own converters (ctranslate2/converters/transformers.py):
q/k/v fused into one (3C, C) projection (cross-attention: q alone, k and v fused), GPT-2's
Conv1D (in, out) weights transposed, RMSNorm's gamma only, SwiGLU as linear_0 (gate, with the
activation) and linear_0_noact (up). The vocabulary is token ids as names ("<0>", "<1>", ...):
lightpipe tokenizes, CTranslate2 only needs the embedding's size.

What CTranslate2 can't express is refused by `check_generation` before the weights load.
"""

from __future__ import annotations

import torch
from torch import nn

DECODER_TYPES = ("gpt2", "llama", "mistral", "qwen2")
SEQ2SEQ_TYPES = ("bart", "marian")
# config.json's activation → CTranslate2's Activation member
ACTIVATIONS = {"gelu": "GELU", "gelu_new": "GELUTanh", "gelu_pytorch_tanh": "GELUTanh", "gelu_fast": "GELUTanh",
               "relu": "RELU", "silu": "SWISH", "swish": "SWISH", "tanh": "Tanh"}


def token(i: int) -> str:
    return f"<{i}>"


def vocabulary(size: int) -> list[str]:
    return [token(i) for i in range(size)]


def check_generation(config: dict) -> None:
    """Refuse, before the weights load, a generation checkpoint CTranslate2 can't run as
    lightpipe's torch model does."""
    model_type = config.get("model_type")
    known = DECODER_TYPES + SEQ2SEQ_TYPES
    if model_type not in known:
        raise ValueError(f"backend='ctranslate2' generates with {', '.join(known)} models, not model_type "
                         f"{model_type!r}; use backend='torch' (the default) for this model")
    # each family's config key for it, and its default (as its config class has it)
    key, default = {"gpt2": ("activation_function", "gelu_new"), "bart": ("activation_function", "gelu"),
                    "marian": ("activation_function", "gelu")}.get(model_type, ("hidden_act", "silu"))
    act = config.get(key, default)
    if act not in ACTIVATIONS:
        raise ValueError(f"backend='ctranslate2' has no {act!r} activation (model_type {model_type!r}); "
                         f"known: {sorted(ACTIVATIONS)}. Use backend='torch'")
    if model_type == "gpt2":
        if config.get("scale_attn_by_inverse_layer_idx") or config.get("scale_attn_weights") is False:
            raise ValueError("backend='ctranslate2' can't scale GPT-2's attention by layer "
                             "(scale_attn_by_inverse_layer_idx / scale_attn_weights=False); use backend='torch'")
    elif model_type in DECODER_TYPES:
        scaling = config.get("rope_scaling") or {}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in ("default", "linear"):
            raise ValueError(f"backend='ctranslate2' runs rope_scaling 'default' and 'linear', not {kind!r} "
                             f"(model_type {model_type!r}); use backend='torch'")
    elif model_type == "marian" and config.get("share_encoder_decoder_embeddings") is False and (
            config.get("decoder_vocab_size") not in (None, config.get("vocab_size"))):
        raise ValueError("backend='ctranslate2' needs Marian's decoder vocabulary as large as its embeddings "
                         f"(decoder_vocab_size {config.get('decoder_vocab_size')} != vocab_size "
                         f"{config.get('vocab_size')}); use backend='torch'")


def f32(t: torch.Tensor) -> torch.Tensor:
    """A spec weight: float32 on the CPU (CTranslate2 converts to the compute type itself)."""
    return t.detach().float().contiguous()


def linear(spec, module: nn.Module, transpose: bool = False) -> None:
    weight = module.weight.t() if transpose else module.weight
    spec.weight = f32(weight)
    if getattr(module, "bias", None) is not None:
        spec.bias = f32(module.bias)


def fused(spec, modules: list[nn.Linear]) -> None:
    """One projection of several (q, k, v): weights (and biases, if any) stacked on the output dim."""
    spec.weight = f32(torch.cat([m.weight for m in modules]))
    if modules[0].bias is not None:
        spec.bias = f32(torch.cat([m.bias for m in modules]))


def norm(spec, module: nn.Module) -> None:
    spec.gamma = f32(module.weight)
    if getattr(module, "bias", None) is not None:
        spec.beta = f32(module.bias)


def activation(name: str):
    from ctranslate2.specs import common_spec

    return getattr(common_spec.Activation, ACTIVATIONS[name])


# -- decoder-only -------------------------------------------------------------------------------

def decoder_spec(model: nn.Module, config: dict):
    """The TransformerDecoderModelSpec of a loaded GPT2LMHeadModel or LlamaForCausalLM."""
    from ctranslate2.specs import transformer_spec

    if config["model_type"] == "gpt2":
        spec, eps = gpt2_spec(model, config, transformer_spec)
    else:
        spec, eps = llama_spec(model, config, transformer_spec)
    size = spec.decoder.embeddings.weight.shape[0]
    spec.register_vocabulary(vocabulary(size))
    spec.config.layer_norm_epsilon = eps
    # the engine is always told its end tokens; these names only have to be in the vocabulary
    spec.config.bos_token = spec.config.eos_token = spec.config.unk_token = token(0)
    spec.validate()
    embeddings = model.transformer.wte if config["model_type"] == "gpt2" else model.model.embed_tokens
    tie(spec, {"decoder/embeddings/weight": embeddings.weight, "decoder/projection/weight": model.lm_head.weight})
    return spec


def gpt2_spec(model, config: dict, transformer_spec):
    body = model.transformer
    c = body.config
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        c.n_layer, c.n_head, pre_norm=True, activation=activation(c.activation_function))
    dec = spec.decoder
    dec.scale_embeddings = False
    dec.embeddings.weight = f32(body.wte.weight)
    dec.position_encodings.encodings = f32(body.wpe.weight)
    norm(dec.layer_norm, body.ln_f)
    for block, layer in zip(dec.layer, body.h):
        norm(block.self_attention.layer_norm, layer.ln_1)
        linear(block.self_attention.linear[0], layer.attn.c_attn, transpose=True)  # Conv1D: (in, out)
        linear(block.self_attention.linear[1], layer.attn.c_proj, transpose=True)
        norm(block.ffn.layer_norm, layer.ln_2)
        linear(block.ffn.linear_0, layer.mlp.c_fc, transpose=True)
        linear(block.ffn.linear_1, layer.mlp.c_proj, transpose=True)
    dec.projection.weight = f32(model.lm_head.weight)
    return spec, c.layer_norm_epsilon


def llama_spec(model, config: dict, transformer_spec):
    from ctranslate2.specs import attention_spec

    body = model.model
    c = body.config
    windows = set(body.windows)
    if len(windows) > 1:
        raise ValueError("backend='ctranslate2' has one sliding window for every layer; this model's layers have "
                         f"{sorted(windows, key=str)}; use backend='torch'")
    scaling = c.rope_scaling or {}
    linear_rope = scaling.get("rope_type", scaling.get("type")) == "linear"
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(
        c.num_hidden_layers, c.num_attention_heads, pre_norm=True, activation=activation(c.hidden_act),
        ffn_glu=True, rms_norm=True, rotary_dim=0, rotary_interleave=False,
        rotary_scaling_type=attention_spec.RotaryScalingType.Linear if linear_rope else None,
        rotary_scaling_factor=scaling.get("factor", 1) if linear_rope else 1, rotary_base=c.rope_theta,
        num_heads_kv=None if c.num_key_value_heads == c.num_attention_heads else c.num_key_value_heads,
        head_dim=c.head_dim, sliding_window=windows.pop())
    dec = spec.decoder
    dec.scale_embeddings = False
    dec.embeddings.weight = f32(body.embed_tokens.weight)
    norm(dec.layer_norm, body.norm)
    for block, layer in zip(dec.layer, body.layers):
        attn, mlp = layer.self_attn, layer.mlp
        norm(block.self_attention.layer_norm, layer.input_layernorm)
        fused(block.self_attention.linear[0], [attn.q_proj, attn.k_proj, attn.v_proj])
        linear(block.self_attention.linear[1], attn.o_proj)
        norm(block.ffn.layer_norm, layer.post_attention_layernorm)
        linear(block.ffn.linear_0, mlp.gate_proj)
        linear(block.ffn.linear_0_noact, mlp.up_proj)
        linear(block.ffn.linear_1, mlp.down_proj)
    dec.projection.weight = f32(model.lm_head.weight)
    return spec, c.rms_norm_eps


# -- encoder-decoder ----------------------------------------------------------------------------

def seq2seq_spec(model: nn.Module, config: dict, start: int):
    """The TransformerSpec of a loaded BartForConditionalGeneration / MarianMTModel; the
    decoder starts from token `start` (its embedding row as loaded, as transformers starts
    Marian from its pad token's row)."""
    from ctranslate2.specs import transformer_spec

    c = model.config
    act = activation(c.activation_function)
    layernorm_embedding = model.model.encoder.layernorm_embedding is not None
    encoder = transformer_spec.TransformerEncoderSpec(
        c.encoder_layers, c.encoder_attention_heads, pre_norm=c.prenorm, activation=act,
        layernorm_embedding=layernorm_embedding)
    decoder = transformer_spec.TransformerDecoderSpec(
        c.decoder_layers, c.decoder_attention_heads, pre_norm=c.prenorm, activation=act,
        layernorm_embedding=layernorm_embedding)
    spec = transformer_spec.TransformerSpec(encoder, decoder)
    stack(spec.encoder, model.model.encoder)
    stack(spec.decoder, model.model.decoder)
    for block, layer in zip(spec.encoder.layer, model.model.encoder.layers):
        attention(block.self_attention, layer.self_attn, layer.self_attn_layer_norm)
        ffn(block.ffn, layer)
    for block, layer in zip(spec.decoder.layer, model.model.decoder.layers):
        attention(block.self_attention, layer.self_attn, layer.self_attn_layer_norm)
        attention(block.attention, layer.encoder_attn, layer.encoder_attn_layer_norm, cross=True)
        ffn(block.ffn, layer)
    spec.decoder.projection.weight = f32(model.lm_head.weight)
    bias = model.final_logits_bias.reshape(-1)
    if bool(bias.any()):
        spec.decoder.projection.bias = f32(bias)
    spec.register_source_vocabulary(vocabulary(spec.encoder.embeddings[0].weight.shape[0]))
    spec.register_target_vocabulary(vocabulary(spec.decoder.embeddings.weight.shape[0]))
    spec.config.layer_norm_epsilon = 1e-5  # nn.LayerNorm's default, which BART and Marian use
    spec.config.decoder_start_token = token(start)
    spec.config.bos_token = spec.config.eos_token = spec.config.unk_token = token(0)
    spec.validate()
    tie(spec, {"decoder/embeddings/weight": model.model.decoder.embed_tokens.weight,
               "decoder/projection/weight": model.lm_head.weight,
               "encoder/embeddings_0/weight": model.model.encoder.embed_tokens.weight})
    return spec


def tie(spec, weights: dict[str, torch.Tensor]) -> None:
    """Save a weight the loaded model shares between places (tied embeddings and LM head,
    BART's and Marian's shared source and target embeddings) once: every later name becomes
    an alias of the first, as CTranslate2's converter aliases equal variables. Without it
    GPT-2-small's model.bin holds its 154 MB embedding twice and BART's three times. Called
    after `validate`, which would turn an alias's name into a string variable."""
    from ctranslate2.specs.model_spec import index_spec

    first: dict[tuple, str] = {}
    for name in sorted(weights):  # the alphabetically first keeps the data, as in the converter
        weight = weights[name]
        key = (weight.data_ptr(), weight.shape, weight.stride())
        if key not in first:
            first[key] = name
            continue
        scope, attr = name.rsplit("/", 1)
        setattr(index_spec(spec, scope), attr, first[key])


def stack(spec, module: nn.Module) -> None:
    """What bart.Stack holds: embeddings (scaled), the position table (from position 0), the
    optional layernorm_embedding and pre-norm final layer_norm."""
    embeddings = spec.embeddings[0] if isinstance(spec.embeddings, list) else spec.embeddings
    embeddings.weight = f32(module.embed_tokens.weight)
    spec.scale_embeddings = float(module.embed_scale)  # 1.0: none (BART); sqrt(d_model): Marian
    positions = module.embed_positions
    table = positions.table if hasattr(positions, "table") else positions.weight[2:]  # BART: fairseq's offset of 2
    spec.position_encodings.encodings = f32(table)
    if module.layernorm_embedding is not None:
        norm(spec.layernorm_embedding, module.layernorm_embedding)
    if module.layer_norm is not None:
        norm(spec.layer_norm, module.layer_norm)


def attention(spec, module: nn.Module, layer_norm: nn.LayerNorm, cross: bool = False) -> None:
    if cross:
        fused(spec.linear[0], [module.q_proj])
        fused(spec.linear[1], [module.k_proj, module.v_proj])
    else:
        fused(spec.linear[0], [module.q_proj, module.k_proj, module.v_proj])
    linear(spec.linear[-1], module.out_proj)
    norm(spec.layer_norm, layer_norm)


def ffn(spec, layer: nn.Module) -> None:
    linear(spec.linear_0, layer.fc1)
    linear(spec.linear_1, layer.fc2)
    norm(spec.layer_norm, layer.final_layer_norm)
