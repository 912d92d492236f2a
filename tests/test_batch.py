"""Continuous batching on tiny random decoders (larimar.decoder.Decoding and the decoders'
`prefill`/`decode`): rows that join a running batch between two tokens, and rows that leave it,
get the logits each would get alone, with the latent slot(s), the embedding shift and the
embedding prefix, conditioned or z = 0."""

import pytest
import torch

from larimar.decoder import Decoding, LatentDecoder
from larimar.prefix_decoder import EmbeddingPrefixDecoder
from tests.test_decoder import tiny_lm

BOS, C = 1, 12
PROMPTS = [[BOS, 30, 31, 32, 33], [BOS, 40, 41], [BOS, 45, 46, 47, 48, 49, 44]]


def make(kind: str, arch: str):
    """A decoder and three read-outs: conditioned, z = 0, conditioned."""
    torch.manual_seed(0)
    lm = tiny_lm(arch)
    latent = LatentDecoder(lm, C, pad_token_id=0, init="normal", slots=2).eval()  # with the embedding shift
    torch.nn.init.normal_(latent.kv_extra.weight, std=0.02)
    z = torch.randn(3, C)
    if kind == "latent":
        dec = latent
    else:
        dec = EmbeddingPrefixDecoder(lm, 0, BOS, rows=4, head_ids=[7, 8], tail_ids=[9], latent=latent).eval()
        z = torch.cat([z, dec.fact_values([[20, 21, 22], [], [23, 24]])], 1)
    z[1] = 0
    return dec, z


def pad_left(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["latent", "prefix"])
@torch.no_grad()
def test_rows_joining_and_leaving_between_tokens_get_the_logits_they_get_alone(kind, arch):
    dec, z = make(kind, arch)
    config = dec.lm.config
    got: list[list[torch.Tensor]] = [[], [], []]  # each row's logits per new token
    tokens: list[list[int]] = [[], [], []]

    def take(rows: list[int], logits: torch.Tensor) -> torch.Tensor:
        for r, lg in zip(rows, logits):
            got[r].append(lg)
            tokens[r].append(int(lg.argmax()))
        return logits.argmax(-1)

    logits, state = dec.prefill(*pad_left(PROMPTS[:1]), z[:1])  # row 0 starts alone
    last, rows = take([0], logits), [0]
    for _ in range(4):
        last = take(rows, dec.decode(last, state))
    logits, joining = dec.prefill(*pad_left(PROMPTS[1:]), z[1:])  # rows 1 and 2 join (one plain, one not)
    state = Decoding.concat([state, joining], config)
    last, rows = torch.cat([last, take([1, 2], logits)]), [0, 1, 2]
    for _ in range(2):
        last = take(rows, dec.decode(last, state))
    before = state.mask.shape[1]
    state, last, rows = state.select([1, 2], config), last[1:], [1, 2]  # row 0 leaves
    assert state.mask.shape[1] < before  # the positions only row 0 attended to are gone
    for _ in range(3):
        last = take(rows, dec.decode(last, state))

    for r, prompt in enumerate(PROMPTS):
        ids = torch.tensor([prompt + tokens[r][:-1]])
        alone = dec(ids, torch.ones_like(ids), z[r : r + 1])[0, len(prompt) - 1 :]  # teacher-forced, no cache
        assert len(got[r]) == alone.shape[0] == (7 if r == 0 else 6)
        torch.testing.assert_close(torch.stack(got[r]), alone, atol=1e-4, rtol=1e-4)
    plain = torch.tensor([PROMPTS[1] + tokens[1][:-1]])
    torch.testing.assert_close(
        torch.stack(got[1]), dec.lm(input_ids=plain).logits[0, len(PROMPTS[1]) - 1 :], atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("kind", ["latent", "prefix"])
@torch.no_grad()
def test_prefill_then_decode_equals_transformers_generate(kind):
    """The decoding the serving path runs (`completion.Batch`) picks the tokens `generate` picks."""
    dec, z = make(kind, "llama")
    ids, mask = pad_left(PROMPTS)
    want = dec.generate(ids, mask, z, max_new_tokens=5, do_sample=False)[:, ids.shape[1] :]
    logits, state = dec.prefill(ids, mask, z)
    last, out = logits.argmax(-1), []
    for _ in range(5):
        out.append(last)
        last = dec.decode(last, state).argmax(-1)
    assert torch.equal(torch.stack(out, 1), want)
