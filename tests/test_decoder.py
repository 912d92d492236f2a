"""Latent conditioning of GPT-2 and Llama decoders (larimar/decoder.py)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from larimar.decoder import LatentDecoder

C = 12


def tiny_lm(arch: str):
    if arch == "gpt2":
        cfg = GPT2Config(
            vocab_size=50, n_embd=32, n_layer=3, n_head=4, n_positions=64, bos_token_id=None, eos_token_id=None
        )
        return GPT2LMHeadModel(cfg).eval()
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(params=[("gpt2", 1), ("llama", 1), ("gpt2", 3), ("llama", 3)], ids=lambda p: f"{p[0]}-{p[1]}slot")
def decoder(request):
    torch.manual_seed(0)
    arch, slots = request.param
    dec = LatentDecoder(tiny_lm(arch), C, pad_token_id=0, slots=slots).eval()
    if dec.kv_extra is not None:  # the extra slots start at zero; make them matter
        torch.nn.init.normal_(dec.kv_extra.weight, std=0.02)
    return dec


def batch(B=3, T=7):
    ids = torch.randint(1, 50, (B, T))
    return ids, torch.ones(B, T, dtype=torch.long)


def test_zero_latent_reproduces_the_plain_decoder(decoder):
    ids, mask = batch()
    mask[1, :2] = 0  # left padding in one row
    plain = decoder.lm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
    cond = decoder(ids, mask, torch.zeros(3, C))
    torch.testing.assert_close(cond[mask.bool()], plain[mask.bool()], atol=1e-5, rtol=1e-5)
    # without padding the positions are the default ones
    ids, mask = batch()
    torch.testing.assert_close(
        decoder(ids, mask, torch.zeros(3, C)), decoder.lm(input_ids=ids).logits, atol=1e-5, rtol=1e-5
    )


def test_nonzero_latent_changes_logits_per_row(decoder):
    ids, mask = batch()
    z = torch.zeros(3, C)
    z[1] = torch.randn(C) * 3
    base, cond = decoder(ids, mask, torch.zeros(3, C)), decoder(ids, mask, z)
    assert (cond[1] - base[1]).abs().max() > 1e-3
    torch.testing.assert_close(cond[[0, 2]], base[[0, 2]], atol=1e-5, rtol=1e-5)  # rows do not leak


def test_both_injection_paths_matter(decoder):
    ids, mask = batch()
    z = torch.randn(3, C) * 3
    full = decoder(ids, mask, z)
    with torch.no_grad():
        decoder.emb_proj.weight.zero_()
    prefix_only = decoder(ids, mask, z)
    assert (full - prefix_only).abs().max() > 1e-4
    assert (prefix_only - decoder(ids, mask, torch.zeros(3, C))).abs().max() > 1e-4


def test_generate_with_latent_matches_teacher_forcing(decoder):
    ids, mask = batch(B=2, T=5)
    mask[0, :2] = 0
    ids[0, :2] = 0
    z = torch.randn(2, C) * 3
    out = decoder.generate(ids, mask, z, max_new_tokens=6, do_sample=False)
    assert out.shape == (2, 11)
    torch.testing.assert_close(out[:, :5], ids)
    # greedy continuation = argmax of the teacher-forced logits on the generated sequence
    full_mask = torch.cat([mask, torch.ones(2, 6, dtype=torch.long)], 1)
    logits = decoder(out, full_mask, z)
    torch.testing.assert_close(logits[:, 4:-1].argmax(-1), out[:, 5:])
    # and the latent is actually used: a different z gives a different continuation distribution
    other = decoder(out, full_mask, torch.zeros(2, C))
    assert (other - logits).abs().max() > 1e-3


def test_extra_slots_extend_a_one_slot_model():
    """A one-slot model's weights load into a three-slot one (run.init_from); the extra slots are used."""
    torch.manual_seed(0)
    lm = tiny_lm("llama")
    one = LatentDecoder(lm, C, pad_token_id=0)
    three = LatentDecoder(lm, C, pad_token_id=0, slots=3)
    missing, unexpected = three.load_state_dict(one.state_dict(), strict=False)
    assert missing == ["kv_extra.weight"] and not unexpected
    ids, mask = batch()
    z = torch.randn(3, C) * 3
    assert three.prefix_cache(z).get_seq_length() == 3
    before = three(ids, mask, z)
    torch.nn.init.normal_(three.kv_extra.weight, std=0.5)
    assert (three(ids, mask, z) - before).abs().max() > 1e-3
    with pytest.raises(ValueError, match="slots"):
        LatentDecoder(lm, C, pad_token_id=0, slots=0)


def test_generate_rejects_beams(decoder):
    ids, mask = batch(B=1)
    with pytest.raises(ValueError, match="num_beams"):
        decoder.generate(ids, mask, torch.randn(1, C), max_new_tokens=2, num_beams=2)


def test_token_logprobs_and_loss_are_consistent(decoder):
    ids, mask = batch()
    mask[2, -3:] = 0
    z = torch.randn(3, C)
    lp = decoder.token_logprobs(ids, mask, z)
    assert lp.shape == (3, 6) and (lp[2, -3:] == 0).all() and (lp <= 0).all()
    torch.testing.assert_close(decoder.loss(ids, mask, z), -lp.sum() / mask[:, 1:].sum())
