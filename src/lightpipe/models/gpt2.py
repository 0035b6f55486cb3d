"""GPT-2: learned positions, pre-LayerNorm blocks, fused qkv, tied LM head (nanoGPT-shaped).

The Hub checkpoint stores its projections as `Conv1D` weights of shape (in, out), and they stay
that way: `x @ W + b` through addmm is what transformers computes (bit for bit), and on CPU it
is as fast as nn.Linear for one token and faster for a batch of them (MKL's small-M GEMM
prefers this layout; measured 10-35% at 8 rows on GPT-2-small shapes). `quantize_int8`
knows this layout (common.Conv1D).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import Family, Model, ModelConfig
from .common import Conv1D, activation, attention, decoder_mask, lm_logits, merge_heads, padded_positions
from .kv_cache import KVCache


@dataclass
class Config(ModelConfig):
    null_means_default = False  # a null stays None, as transformers reads it

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    tie_word_embeddings: bool = True
    add_cross_attention: bool = False

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


class Attention(nn.Module):
    def __init__(self, config: Config, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.layer_idx = layer_idx
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        # as documented (and as transformers' eager attention does); its default SDPA path ignores
        # both flags in 4.57.6 — a documented-vs-actual deviation, tested against eager
        scale = config.head_dim**-0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            scale /= layer_idx + 1
        self.scale = scale

    def forward(self, x, mask, is_causal, cache: KVCache | None):
        B, T, C = x.shape
        qkv = self.c_attn(x).view(B, T, 3, self.n_head, C // self.n_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, D)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        y = attention(q, k, v, mask, is_causal, scale=self.scale)
        return self.c_proj(merge_heads(y))


class MLP(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = Conv1D(config.n_embd, inner)
        self.c_proj = Conv1D(inner, config.n_embd)
        self.act = activation(config.activation_function)

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config: Config, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, mask, is_causal, cache):
        x = x + self.attn(self.ln_1(x), mask, is_causal, cache)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(Model):
    base_model_prefix = "transformer"

    def __init__(self, config: Config):
        super().__init__()
        if config.add_cross_attention:
            raise ValueError("GPT-2 with cross-attention (add_cross_attention=True) is not supported by lightpipe")
        self.config = config
        self.max_positions = config.n_positions  # learned positions: a hard context limit
        self.context_length = config.n_positions
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.h = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)

    def new_cache(self, budget_tokens: int | None = None, dtype=None, device=None) -> KVCache:
        c = self.config
        w = self.wte.weight
        return KVCache(c.n_layer, c.n_head, c.head_dim, dtype or w.dtype, device or w.device, budget_tokens)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache: KVCache | None = None):
        B, T = input_ids.shape
        end = cache.key_length if cache is not None else T
        if end > self.max_positions:
            raise ValueError(
                f"input_ids reach position {end} but GPT-2's context is {self.max_positions} positions; "
                "truncate the input"
            )
        if cache is not None:  # each row at its own length
            position_ids = cache.positions
        elif position_ids is None and attention_mask is not None:
            position_ids = padded_positions(attention_mask, T)
        if position_ids is None:
            pos = self.wpe.weight[:T]  # (T, C): a slice, no gather
        else:
            pos = self.wpe(position_ids)
        x = self.wte(input_ids) + pos
        if cache is not None:
            mask, is_causal = cache.mask(x.dtype)
        else:
            mask, is_causal = decoder_mask(attention_mask, T, x.dtype, x.device)
        for block in self.h:
            x = block(x, mask, is_causal, cache)
        return self.ln_f(x)


class GPT2LMHeadModel(Model):
    base_model_prefix = "transformer"

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.max_positions = self.context_length = config.n_positions
        self.tied_weights = ["lm_head.weight"] if config.tie_word_embeddings else []

    def tie_weights(self):
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def new_cache(self, budget_tokens: int | None = None, dtype=None, device=None) -> KVCache:
        return self.transformer.new_cache(budget_tokens, dtype, device)

    def forward(self, input_ids, attention_mask=None, position_ids=None, cache=None, logits_to_keep: int = 0):
        x = self.transformer(input_ids, attention_mask, position_ids, cache)
        if logits_to_keep:
            x = x[:, -logits_to_keep:]
        return lm_logits(self.lm_head, x)


HEADS = {"base": GPT2Model, "causal-lm": GPT2LMHeadModel}


def sanitize(state: dict) -> dict:
    """Drop the causal-mask buffers (`attn.bias`, `attn.masked_bias`) that old checkpoints saved."""
    return {k: v for k, v in state.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}


FAMILIES = (Family(("gpt2",), Config, HEADS, sanitize),)
