"""The decoder's weights at inference precision: fp32 (as trained), bf16, or int8 weight-only.

Why: generating one token on CPU is bound by reading the decoder's weights, not by arithmetic.
On SmolLM2-135M (2 cores, single stream, torch.profiler) 86-89% of a decode step is inside
``aten::mm`` streaming 540 MB of fp32 weights at about 17 GB/s; the rest of the step (norms,
rotary, attention, Python) is about 3.5 ms. Halving the bytes (bf16) nearly doubles tokens/s;
int8 weights with one scale per output channel halve them again. int8 runs on PyTorch's own CPU
kernel for that format, ``aten::_weight_int8pack_mm`` (bf16 activations, int8 weights, bf16
per-channel scales), the kernel optimum-quanto and torchao dispatch to on CPU. optimum-quanto
itself reached 57 tokens/s here against 72 for this module, because its tensor-subclass dispatch
and autograd Function cost 3.6 ms per token on 2 cores; torchao's int8 weight-only config, without
`torch.compile`, ran at 20 tokens/s (below fp32's 24); `torch.compile` bought bf16 only 45 -> 51
tokens/s after a two-minute compile; and the kernel's float32-activation path is far slower than
its bf16 one (a 125-token prefill 2.8 s against 71 ms; 15 against 71 tokens/s decoding). Hence a
plain module around the kernel, with bf16 activations. That kernel is a matrix-vector one, so a
prefill (tens of rows) runs instead as a bf16 GEMM on the same int8 weights, dequantized once
(from `GEMM_FROM_POSITIONS` positions per sequence); with it and the one-pass prefill of `EmbeddingPrefixDecoder.prefill`, the
v3 decoder's conditioned first token fell from 84 to 47 ms.

The conditioning (latent slots, embedding shift, prefix rows) follows the LM into bf16, so the
slot entries of the KV cache have the dtype the layers' own keys and values have.

All of that holds on a CPU with native bf16 (AVX512-BF16 or AMX: the machine those figures come
from). On one without (`native_bf16`; an AVX2 AMD EPYC, 2 cores) oneDNN emulates bf16 GEMMs at a
fifth of fp32's speed, and the bf16 prefill GEMM made v3's conditioned first token 745 ms. There
the int8 model keeps float32 activations and float32 prefill GEMMs, and only the matrix-vector
kernel sees bf16 (`python jobs/bench_serve.py --model larimar-smol-v3 --sections decode
--precisions fp32,int8`: fp32 17.9 tokens/s plain, 17.1 conditioned, first token 167 ms; int8
28.3 / 23.6 / 168 ms; 8 jobs batched 58.3 against 77.3 tokens/s).

The encoder has its own switch (`set_encoder_precision`): fp32 or a bf16 backbone. An edit is
bound by arithmetic, not by weight reads (MiniLM over an edit's prompt, sentence and target, in
batches), and a CPU with native bf16 (AVX512-BF16, AMX) runs oneDNN's bf16 GEMMs at several
times its fp32 rate: 32 edits' encoder pass on one thread 132.6 -> 63.6 ms, one edit 13.6 -> 9.3
ms (`python jobs/bench_edit_path.py --model larimar-smol-facts --sizes 1,32 --encoder-precision
fp32|bf16`), keys, values and scope vectors at cosine >= 0.99995 to fp32's. Only the
backbone is cast: pooling and the latent heads run in float32, so memory keys and values stay
float32. A CPU without native bf16 emulates it, slower than fp32: `default_encoder_precision`
picks bf16 only where oneDNN reports the hardware for it.

SmolLM2's shipped weights are themselves a Q4_1 GGUF, dequantized on load (larimar.backbones):
per-channel int8 adds a rounding of at most half a step of max|w|/127 per weight on top of it.
"""

from __future__ import annotations

import torch
from torch import nn

from larimar.decoder import ConditionedDecoder
from larimar.encoder import LatentEncoder

PRECISIONS = ("fp32", "bf16", "int8")
ENCODER_PRECISIONS = ("fp32", "bf16")
GEMM_FROM_POSITIONS = 16  # positions per sequence from which `Int8WeightOnlyLinear` runs a GEMM


class Int8WeightOnlyLinear(nn.Module):
    """A frozen `nn.Linear` with int8 weights, one bf16 scale per output feature (symmetric:
    w = q * scale, q in [-127, 127]); inputs are computed in bf16 and outputs come back in bf16.

    Decoding steps and short prompts run on the int8 kernel, a matrix-vector kernel whose time
    grows with the rows it multiplies (SmolLM2's 576 x 1536 layer on 2 cores: 1 row 13 us against
    46 us for a bf16 GEMM, 8 rows 45 vs 55, 58 rows 322 vs 179). An input of `GEMM_FROM_POSITIONS`
    positions per sequence or more (a long prompt, the v3 prefix, a teacher-forced pass) runs a
    bf16 GEMM on the same quantized weights, dequantized once (q * scale in bf16, kept beside the
    int8 ones: twice the int8 bytes more in memory). The choice goes by positions per sequence, not
    by rows, so how many prompts share a pass never changes how each is computed: choosing by rows
    made a short prompt's first token come out of the int8 kernel alone and of the GEMM beside
    three others, and a near-tie flipped (tests/test_openai.py). Every position through the GEMM
    cost a short plain prompt's first token 20 -> 29 ms, hence the threshold. On a CPU without
    native bf16 the GEMM runs in float32 on float32 dequantized weights (`gemm_dtype`)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale.to(torch.bfloat16))
        dequantized = self.weight_int8.float() * self.scale.float()[:, None]
        gemm = gemm_dtype()
        self.register_buffer("weight_gemm", dequantized.to(gemm), persistent=False)
        bias = linear.bias.detach() if linear.bias is not None else None
        self.register_buffer("bias", bias.to(torch.bfloat16) if bias is not None else None)
        self.register_buffer("bias_gemm", bias.to(gemm) if bias is not None else None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, dtype = x.shape, x.dtype
        positions = shape[-2] if len(shape) >= 3 else 1  # (B, T, K): T; (B, K): one each
        x = x.reshape(-1, shape[-1])
        if positions >= GEMM_FROM_POSITIONS:
            y = nn.functional.linear(x.to(self.weight_gemm.dtype), self.weight_gemm, self.bias_gemm)
        else:
            y = torch._weight_int8pack_mm(x.to(torch.bfloat16), self.weight_int8, self.scale)
            if self.bias is not None:
                y = y + self.bias
        return y.to(dtype).view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def set_decoder_precision(decoder: ConditionedDecoder, precision: str) -> ConditionedDecoder:
    """Cast a conditioned decoder (its LM and its conditioning) for inference, in place:
    "fp32" leaves it as it is, "bf16" casts it, "int8" swaps every linear layer of the LM (the
    tied output head included, as its own int8 copy) for `Int8WeightOnlyLinear` and casts the
    rest to bf16 where the CPU has native bf16 (`native_bf16`); elsewhere the norms, attention and
    conditioning stay float32, which an AVX2 CPU runs faster than emulated bf16 (an AVX2 EPYC, v3:
    plain 24.3 -> 28.3 tokens/s, conditioned first token 212 -> 168 ms). For generation and
    scoring only: int8 layers have no gradient."""
    if precision not in PRECISIONS:
        raise ValueError(f"decoder precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return decoder
    if precision == "int8" and next(decoder.lm.parameters()).device.type != "cpu":
        raise ValueError("decoder precision 'int8' runs on CPU only; use 'bf16' on GPUs")
    if precision == "bf16" or native_bf16():
        decoder.to(torch.bfloat16)
        latent = getattr(decoder, "latent", None)  # EmbeddingPrefixDecoder keeps its latent decoder unregistered
        if isinstance(latent, nn.Module):
            latent.to(torch.bfloat16)
    if precision == "int8":
        lm = decoder.lm
        for module in list(lm.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, Int8WeightOnlyLinear(child))
        lm.requires_grad_(False)
    return decoder


def native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (oneDNN's check: AVX512-BF16 or AMX). Without
    it oneDNN emulates bf16 GEMMs, several times slower than fp32 (an AVX2 EPYC, 2 threads: 58 x
    576 @ 576 x 1536 in 5.7 ms bf16 against 0.86 ms fp32), while the int8 matrix-vector kernel
    stays faster than fp32 (1 row: 49 us against 87)."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def gemm_dtype() -> torch.dtype:
    """The dtype of `Int8WeightOnlyLinear`'s dequantized GEMM weights: bf16 where the CPU has it
    natively, float32 otherwise (twice the memory, and the prefill that an emulated bf16 GEMM
    made 4 to 5 times slower than fp32's)."""
    return torch.bfloat16 if native_bf16() else torch.float32


def default_encoder_precision() -> str:
    """bf16 where this CPU multiplies bf16 in hardware (`native_bf16`), else fp32."""
    return "bf16" if native_bf16() else "fp32"


def set_encoder_precision(encoder: LatentEncoder, precision: str) -> LatentEncoder:
    """Cast a latent encoder's backbone for inference, in place: "fp32" leaves it as it is, "bf16"
    casts the backbone; its heads stay float32 and `LatentEncoder.pooled` pools in float32, so
    latents, values and scope vectors come out float32 either way. For inference only."""
    if precision not in ENCODER_PRECISIONS:
        raise ValueError(f"encoder precision must be one of {', '.join(ENCODER_PRECISIONS)}, got {precision!r}")
    if precision == "bf16":
        encoder.backbone.to(torch.bfloat16)
        encoder.backbone.requires_grad_(False)
    return encoder


def compile_encoder(encoder: LatentEncoder) -> LatentEncoder:
    """Compile a latent encoder's backbone for inference, in place (`torch.compile`, dynamic
    shapes, Inductor's freezing: weights folded into the graph as constants, in the layouts its
    GEMM kernels want). For inference only: call under `torch.no_grad()`.

    Why: one edit's encoder pass is two or three short texts (about 30-40 positions), where the
    GEMMs are about two thirds of eager PyTorch's time (torch.profiler) and the rest is small
    operators (GELU, layer norms, attention, layout copies) and the Python of HF's BERT modules
    between them, which a compiled graph fuses or drops. In one process on one thread of an
    AVX512-BF16 EPYC (`python jobs/bench_edit_path.py --model larimar-smol-facts --sizes 1,32
    --repeats 9 [--encoder-compile]`): one edit's encode 10.9 -> 9.1 ms, 32 edits' 120.4 -> 111.1
    ms (arithmetic there). Served, an edit's p50 over HTTP at one client was 0.5 to 6 ms lower in
    five alternating rounds (median 27.9 -> 22.5 ms; README, "Measured"). The cost is a compile
    of about 25-40 s on the first calls of a process (Inductor's caches make a restart on the
    same machine faster), and keys that equal eager's to about 1e-5, not bit for bit, so the
    Python editor (eager) and a compiled server differ at that level.

    Sizes 0 and 1 are specialised even with dynamic shapes: a lone text compiles a graph of its
    own, so warm up with one text and with two (`larimar.serving.encoding.TextEncoding`)."""
    encoder.backbone.requires_grad_(False)
    encoder.backbone = torch.compile(encoder.backbone, dynamic=True, options={"freezing": True})
    return encoder
