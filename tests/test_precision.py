"""The decoder and the encoder at inference precision (larimar/precision.py): int8 weight-only layers
close to the fp32 ones, a cast decoder that still conditions (its KV-cache slot in the layers' dtype),
z = 0 still the plain LM, memory values still float32, a bf16 encoder backbone whose latents stay
float32, bad names refused."""

import pytest
import torch
from torch import nn

from larimar.decoder import LatentDecoder
from larimar.encoder import LatentEncoder
from larimar import precision as precision_module
from larimar.precision import Int8WeightOnlyLinear, set_decoder_precision, set_encoder_precision
from larimar.prefix_decoder import EmbeddingPrefixDecoder
from tests.test_decoder import tiny_lm

BOS, C = 1, 12


@pytest.fixture(params=[True, False], ids=["native-bf16", "no-native-bf16"])
def native(request, monkeypatch):
    """Both CPU kinds, whichever this one is: with native bf16 the int8 model runs bf16
    activations and bf16 prefill GEMMs, without it float32 ones (`precision.native_bf16`)."""
    monkeypatch.setattr(precision_module, "native_bf16", lambda: request.param)
    return request.param


def test_int8_weight_only_linear_is_close_to_the_float_layer():
    torch.manual_seed(0)
    layer = nn.Linear(96, 40, bias=True)
    q = Int8WeightOnlyLinear(layer)
    assert q.weight_int8.dtype == torch.int8 and q.scale.shape == (40,)
    x = torch.randn(3, 5, 96)
    want, got = layer(x), q(x)
    assert got.shape == want.shape and got.dtype == x.dtype  # computed in bf16, answered in the input's dtype
    assert q(x.bfloat16()).dtype == torch.bfloat16
    assert (got.float() - want).norm() / want.norm() < 0.02  # bf16 inputs + int8 weights: about 1%
    assert (got.float() - want).norm() / want.norm() > 0  # really quantized


def test_int8_prefill_positions_run_as_a_gemm_on_the_same_quantized_weights(native):
    """Inputs of GEMM_FROM_POSITIONS positions per sequence or more (a long prefill) multiply by
    the layer's dequantized int8 weights (in bf16 on a CPU with native bf16, else in float32):
    position for position what the int8 kernel gives a decoding step, up to bf16 rounding; the
    choice goes by positions, so a sequence gets the same numbers alone and batched with others."""
    from larimar.precision import GEMM_FROM_POSITIONS

    torch.manual_seed(0)
    layer = nn.Linear(96, 40, bias=True)
    q = Int8WeightOnlyLinear(layer)
    assert q.weight_gemm.dtype == (torch.bfloat16 if native else torch.float32)
    T = GEMM_FROM_POSITIONS
    x = torch.randn(3, T, 96)
    many = q(x).float()  # the GEMM path
    steps = torch.stack([q(x[:, t : t + 1])[:, 0] for t in range(T)], 1).float()  # the int8 kernel, a step at a time
    assert (many - steps).norm() / steps.norm() < 5e-3
    xg = x.to(q.weight_gemm.dtype).float()  # what the GEMM multiplies
    quantized = xg @ (q.weight_int8.float() * q.scale.float()[:, None]).T + q.bias.float()
    original = layer(xg).detach()
    assert (many - quantized).norm() < 0.5 * (many - original).norm()  # the int8 weights, not the original ones
    assert torch.equal(q(x[:1]), q(x)[:1])  # a sequence alone gets what it gets beside others
    assert torch.equal(q(x[:1, :1]), q(x[:, :1])[:1])  # ... and so does a decoding step
    assert torch.equal(q(x[:1, :4]), q(x[:, :4])[:1])  # ... and a short prompt (int8 kernel)


def decoder(arch: str) -> EmbeddingPrefixDecoder:
    torch.manual_seed(0)
    lm = tiny_lm(arch)
    latent = LatentDecoder(lm, C, pad_token_id=0, init="normal").eval()
    return EmbeddingPrefixDecoder(lm, pad_token_id=0, bos_id=BOS, rows=4, head_ids=[7, 8], tail_ids=[9], latent=latent)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_a_cast_decoder_conditions_like_the_fp32_one(precision, native):
    ref, dec = decoder("llama"), set_decoder_precision(decoder("llama"), precision)
    if precision == "int8":
        kinds = {type(m) for m in dec.lm.modules()}
        assert Int8WeightOnlyLinear in kinds and nn.Linear not in kinds  # the output head too
    # int8 without native bf16: norms, attention and conditioning stay float32 (faster there)
    want_dtype = torch.bfloat16 if precision == "bf16" or native else torch.float32
    assert dec.lm.get_input_embeddings().weight.dtype == want_dtype
    rows = dec.fact_values([[20, 21, 22]])
    assert rows.dtype == torch.float32  # memory values stay float32 whatever the decoder runs in
    torch.testing.assert_close(rows, ref.fact_values([[20, 21, 22]]), atol=0.02, rtol=0.02)
    ids = torch.tensor([[BOS, 30, 31, 32]])
    mask = torch.ones_like(ids)
    z = torch.cat([torch.randn(1, C), rows], 1)
    want, got = ref(ids, mask, z), dec(ids, mask, z).float()
    assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.99
    out = dec.generate(ids, mask, z, max_new_tokens=3, do_sample=False)  # the slot's cache entries in that dtype
    assert out.shape == (1, 7)
    zero = torch.zeros_like(z)
    torch.testing.assert_close(dec(ids, mask, zero), dec.lm(input_ids=ids).logits)  # z = 0: the LM alone
    # ... also batched with a conditioned row: the plain row is run apart, bit for bit the LM alone
    two = torch.cat([ids, torch.tensor([[BOS, 33, 34, 35]])])
    mixed = dec(two, torch.ones_like(two), torch.cat([z, zero]))
    assert torch.equal(mixed[1], dec.lm(input_ids=two[1:]).logits[0])
    assert torch.equal(mixed[0], dec(ids, mask, z)[0])


def test_an_unknown_precision_is_refused_and_fp32_leaves_the_decoder_as_trained():
    with pytest.raises(ValueError, match="fp32, bf16, int8"):
        set_decoder_precision(decoder("gpt2"), "fp16")
    assert set_decoder_precision(d := decoder("gpt2"), "fp32") is d  # as trained: untouched


def test_the_serving_settings_offer_exactly_these_precisions():
    import typing

    from larimar.precision import PRECISIONS
    from larimar.serving.schemas import ServeSettings

    literal, _none = typing.get_args(ServeSettings.model_fields["decoder_precision"].annotation)
    assert typing.get_args(literal) == PRECISIONS


def tiny_encoder() -> LatentEncoder:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    return LatentEncoder(BertModel(cfg).eval(), C, trainable_layers=0).eval()


def test_a_bf16_encoder_backbone_gives_float32_latents_close_to_the_fp32_ones():
    """Only the backbone is cast: pooling and the heads stay float32, so what a memory stores keeps
    its dtype; the latents differ from fp32's by bf16 rounding, no more."""
    ref, enc = tiny_encoder(), set_encoder_precision(tiny_encoder(), "bf16")
    assert next(enc.backbone.parameters()).dtype == torch.bfloat16 and enc.head.weight.dtype == torch.float32
    ids = torch.randint(0, 50, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # a padded row
    with torch.no_grad():
        want, got = ref(ids, mask), enc(ids, mask)
        pooled = enc.pooled(ids, mask)
    assert got.dtype == torch.float32 and pooled.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(got, want, dim=-1).min() > 0.999
    assert not torch.equal(got, want)  # really computed in bf16


def test_an_unknown_encoder_precision_is_refused_and_the_default_follows_the_cpu():
    from larimar.precision import ENCODER_PRECISIONS, default_encoder_precision

    with pytest.raises(ValueError, match="fp32, bf16"):
        set_encoder_precision(tiny_encoder(), "int8")
    enc = tiny_encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    set_encoder_precision(enc, "fp32")
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())  # as trained
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert default_encoder_precision() == ("bf16" if native else "fp32")
    assert default_encoder_precision() in ENCODER_PRECISIONS


def test_the_serving_settings_offer_exactly_the_encoder_precisions():
    import typing

    from pydantic import ValidationError

    from larimar.precision import ENCODER_PRECISIONS
    from larimar.serving.schemas import ServeSettings

    literal, _none = typing.get_args(ServeSettings.model_fields["encoder_precision"].annotation)
    assert typing.get_args(literal) == ENCODER_PRECISIONS
    with pytest.raises(ValidationError, match="encoder_precision"):
        ServeSettings(encoder_precision="int8")
