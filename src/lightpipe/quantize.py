"""Weight-only int8 for nn.Linear: int8 weights with one float scale per output channel.

Decoding one token at a time is bound by reading the weights, so storing them in a quarter of
the bytes is what makes it faster — but only if the matmul reads the int8 weights directly.
Measured on 2 cores of an AVX-512 Xeon (GPT-2-small shapes, one token):
  - dequantize-then-matmul writes a float copy every call: slower than float32;
  - torch._weight_int8pack_mm with float32 activations takes a scalar path: ~5x slower than float32;
  - torch._weight_int8pack_mm with bfloat16 activations is vectorised: ~2.5x faster than float32.
So an Int8Linear feeds the kernel bfloat16 activations (float32 models cast in and out). That
rounds activations and outputs to bfloat16 (8 significant bits), an error of the same order as
the int8 weights' own; `quantize="int8"` is an opt-in trade of exactness for speed. Where the
kernel is missing (old PyTorch, some devices) it falls back to dequantize-then-matmul.

`dynamic_activations=True` goes further (CPU only): activations are quantized to int8 per
call too and the int8 x int8 matmul runs in FBGEMM (VNNI) — about 2.3x float32 tokens/s for
GPT-2-small greedy decoding where weight-only gives about 1.6x, at the cost of a coarser error
(each row of activations shares one 7-bit scale) and of a PyTorch API marked deprecated.

A tied LM head gets its own int8 copy; the input embedding it was tied to stays float (it is
a lookup, not a matmul).
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .models.base import Model
from .models.common import Conv1D, drop_qkv_fusions


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: weight ≈ q * scale[:, None]."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q.contiguous(), scale


class Int8Linear(nn.Module):
    def __init__(self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        super().__init__()
        self.out_features, self.in_features = weight_int8.shape
        self.register_buffer("weight", weight_int8)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        # the kernel's activation dtype: the model's if half precision, else bfloat16 (see above)
        self.kernel_dtype = _kernel_dtype(weight_int8, dtype)
        self.register_buffer("scale", scale.to(self.kernel_dtype or dtype))

    @classmethod
    def from_linear(cls, linear: nn.Module) -> "Int8Linear":
        """From an nn.Linear or a Conv1D (GPT-2's: weight (in, out))."""
        weight = linear.weight.t() if isinstance(linear, Conv1D) else linear.weight
        q, scale = quantize_weight(weight)
        device = linear.weight.device
        return cls(q.to(device), scale.to(device), linear.bias, linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.kernel_dtype is not None:
            y = torch._weight_int8pack_mm(x2.to(self.kernel_dtype).contiguous(), self.weight, self.scale).to(x.dtype)
        else:
            y = F.linear(x2, self.weight.to(x.dtype)) * self.scale.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        kernel = f"int8 kernel on {self.kernel_dtype}" if self.kernel_dtype else "dequantize fallback"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kernel}"


class Int8DynamicLinear(nn.Module):
    """int8 weights and per-call int8 activations, through FBGEMM's prepacked dynamic linear (CPU)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.out_features, self.in_features = weight.shape
        w = weight.detach().float()
        scale = (w.abs().amax(dim=1).clamp(min=1e-12) / 127.0).double()
        with warnings.catch_warnings():  # torch 2.13 marks quantized tensors deprecated; the op still works
            warnings.simplefilter("ignore")
            q = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        b = None if bias is None else bias.detach().float()
        self.packed = torch.ops.quantized.linear_prepack(q, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce_range: 7-bit activations, as torch's dynamic quantization does, so AVX2 CPUs can't saturate
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, True).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights and activations"


def _kernel_dtype(weight: torch.Tensor, dtype: torch.dtype) -> torch.dtype | None:
    """The activation dtype torch._weight_int8pack_mm runs fast with here, or None if it doesn't run."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        return None
    candidate = dtype if dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    try:
        x = torch.zeros(1, weight.shape[1], dtype=candidate, device=weight.device)
        n = min(8, weight.shape[0])
        torch._weight_int8pack_mm(x, weight[:n].contiguous(), torch.ones(n, dtype=candidate, device=weight.device))
        return candidate
    except (RuntimeError, NotImplementedError):
        return None


def quantize_int8(model: nn.Module, skip: tuple[str, ...] = (), dynamic_activations: bool = False) -> nn.Module:
    """Replace every nn.Linear (and Conv1D, GPT-2's) of `model`, in place, by an int8 one; returns the model.

    `skip`: module names (or name prefixes) to leave in float, e.g. a tiny classifier head.
    `dynamic_activations`: quantize activations per call too (CPU only; faster, less exact).
    """
    if dynamic_activations:
        param = next(model.parameters(), None)
        if param is not None and param.device.type != "cpu":
            raise ValueError("quantize_int8(dynamic_activations=True) runs on CPU only; move the model to CPU first")
        if "fbgemm" not in torch.backends.quantized.supported_engines and "x86" not in torch.backends.quantized.supported_engines:
            raise ValueError("quantize_int8(dynamic_activations=True) needs PyTorch's FBGEMM/x86 quantized engine")
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, Conv1D)) and not any(name == s or name.startswith(s + ".") for s in skip)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if dynamic_activations:
            weight = module.weight.t() if isinstance(module, Conv1D) else module.weight
            setattr(parent, child, Int8DynamicLinear(weight, module.bias))
        else:
            setattr(parent, child, Int8Linear.from_linear(module))
    drop_qkv_fusions(model)
    if isinstance(model, Model):  # the head is its own int8 tensor now: nothing to tie any more
        model.tied_weights = []
        model.tie_weights = lambda: None
    return model
