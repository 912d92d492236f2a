"""Decoder-space read-outs as a soft prompt (larimar/prefix_decoder.py) and the memory that holds them."""

import pytest
import torch

from larimar.decoder import LatentDecoder
from larimar.memory import SequentialMemory, reference_memory
from larimar.prefix_decoder import EmbeddingPrefixDecoder
from tests.test_decoder import tiny_lm

BOS, HEAD, TAIL, L = 1, [7, 8], [9], 4


C = 12


@pytest.fixture(params=["gpt2", "llama", "llama+latent"])
def decoder(request):
    torch.manual_seed(0)
    lm = tiny_lm(request.param.split("+")[0])
    latent = LatentDecoder(lm, C, pad_token_id=0).eval() if request.param.endswith("latent") else None
    return EmbeddingPrefixDecoder(lm, pad_token_id=0, bos_id=BOS, rows=L, head_ids=HEAD, tail_ids=TAIL, latent=latent)


def values(decoder, facts):
    """Read-outs of facts: rows, behind a random latent part when the decoder has one."""
    rows = decoder.fact_values(facts)
    return torch.cat([torch.randn(len(facts), decoder.latent_dim), rows], 1) if decoder.latent else rows


def queries(B=3, T=6):
    ids = torch.randint(10, 50, (B, T))
    ids[:, 0] = BOS
    return ids, torch.ones(B, T, dtype=torch.long)


def plain(decoder, ids, mask):
    return decoder.lm(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0) * mask).logits


def test_a_read_out_is_the_fact_in_context(decoder):
    """Conditioning on a fact's value gives the logits of <bos> head fact tail query, row for row
    (behind the latent slot, for a latent+decoder read-out)."""
    fact = [20, 21, 22]  # shorter than L: the empty row is masked out
    ids, mask = queries(B=1)
    z = values(decoder, [fact])
    got = decoder(ids, mask, z)
    text = torch.tensor([[BOS, *HEAD, *fact, *TAIL, *ids[0, 1:].tolist()]])
    if decoder.latent is None:
        want = decoder.lm(input_ids=text).logits[:, -ids.shape[1] :]
    else:
        want = decoder.latent(text, torch.ones_like(text), z[:, :C])[:, -ids.shape[1] :]
    assert got.shape == (1, ids.shape[1], want.shape[-1])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_zero_rows_are_the_plain_decoder_and_mixed_batches_keep_them_so(decoder):
    ids, mask = queries()
    mask[1, :2] = 0  # left padding, as generation batches are
    ids[1, 2] = BOS
    want = plain(decoder, ids, mask)
    z = torch.zeros(3, decoder.value_dim)
    torch.testing.assert_close(decoder(ids, mask, z), want, atol=0, rtol=0)  # no conditioned row: the LM alone
    z[0] = values(decoder, [[20, 21]])[0]
    mixed = decoder(ids, mask, z)
    torch.testing.assert_close(mixed[1:][mask[1:].bool()], want[1:][mask[1:].bool()], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(mixed[0], want[0], atol=1e-3)


def test_generate_continues_as_teacher_forcing_predicts(decoder):
    ids, mask = queries(B=2)
    mask[0, :1] = 0
    ids[0, 1] = BOS
    z = values(decoder, [[20, 21, 22], [30]])
    out = decoder.generate(ids, mask, z, max_new_tokens=5, do_sample=False, eos_token_id=None)
    assert out.shape == (2, ids.shape[1] + 5) and torch.equal(out[:, : ids.shape[1]], ids)
    full = torch.ones(2, out.shape[1], dtype=torch.long)
    full[0, :1] = 0
    logits = decoder(out, full, z)
    torch.testing.assert_close(logits[:, ids.shape[1] - 1 : -1].argmax(-1), out[:, ids.shape[1] :])
    # rows [20, 21, 22] and [30] fill 3 of the L = 4 value rows: the fourth is left out of the cache
    assert decoder.generation_start(ids.shape[1], z) == ids.shape[1] + decoder.lead - 1
    assert decoder.generation_start(ids.shape[1], torch.zeros_like(z)) == ids.shape[1]


def test_conditioned_queries_must_start_with_bos(decoder):
    ids, mask = queries(B=1)
    ids[0, 0] = 11
    with pytest.raises(ValueError, match="<bos>"):
        decoder(ids, mask, values(decoder, [[20]]))


def test_chat_reads_weigh_the_slot_by_their_own_scale():
    """chat_latent_scale: a chat read-out decodes as a decoder with latent_scale = chat_latent_scale
    decodes the plain read-out (the rows untouched, z = 0 still the plain LM); without one, chat
    reads are the read-outs themselves."""
    torch.manual_seed(0)
    lm = tiny_lm("llama")
    latent = LatentDecoder(lm, C, pad_token_id=0).eval()
    build = lambda scale, chat=None: EmbeddingPrefixDecoder(  # noqa: E731
        lm, 0, BOS, L, HEAD, TAIL, latent=latent, latent_scale=scale, chat_latent_scale=chat
    )
    weak, strong, chatty = build(0.5), build(2.0), build(0.5, 2.0)
    ids, mask = queries(B=2)
    z = values(chatty, [[20, 21, 22], [30]])
    z[1] = 0
    chat_z = chatty.chat_read(z)
    assert torch.equal(chat_z[:, C:], z[:, C:]) and torch.equal(chat_z[1], z[1])
    torch.testing.assert_close(chatty(ids, mask, chat_z), strong(ids, mask, z), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chatty(ids, mask, z), weak(ids, mask, z), atol=0, rtol=0)
    assert weak.chat_read(z) is z and EmbeddingPrefixDecoder(lm, 0, BOS, L, HEAD, TAIL).chat_read(z) is z
    with pytest.raises(ValueError, match="latent_scale > 0"):
        build(0.0, 1.0)


def test_chat_latent_scale_is_checked_by_the_config():
    from larimar.model import LarimarConfig

    base = {"value_space": "latent+decoder", "value_latent_scale": 0.5}
    assert LarimarConfig(**base, value_chat_latent_scale=1.0).value_chat_latent_scale == 1.0
    for bad in (
        {**base, "value_chat_latent_scale": -1.0},
        {**base, "value_latent_scale": 0.0, "value_chat_latent_scale": 1.0},
    ):
        with pytest.raises(ValueError, match="value_chat_latent_scale"):
            LarimarConfig(**bad)
    with pytest.raises(ValueError, match="value_chat_latent_scale"):
        LarimarConfig(value_space="decoder", value_target=False, value_chat_latent_scale=1.0)


def test_memory_holds_values_wider_than_its_keys():
    """SequentialMemory(value_dim=V): exact recall of each written value, and forgetting one
    restores the state without it."""
    torch.manual_seed(0)
    K, C, V, n = 64, 16, 40, 8
    mem = SequentialMemory(reference_memory(K, C), ridge=1e-3, value_dim=V, keys="relu")
    keys, values = torch.randn(n, C), torch.randn(n, V)
    mem.write(keys, values)
    torch.testing.assert_close(mem.read(keys)[0], values.double(), atol=1e-4, rtol=1e-4)
    before = mem.M.clone()
    extra_k, extra_v = torch.randn(1, C), torch.randn(1, V)
    mem.write(extra_k, extra_v)
    mem.forget(extra_k, extra_v)
    torch.testing.assert_close(mem.M, before, atol=1e-8, rtol=0)
    again = SequentialMemory.from_state_dict(mem.state_dict())
    assert again.V == V and torch.equal(again.read(keys), mem.read(keys))
    with pytest.raises(ValueError, match=f"\\(n, {V}\\)"):
        mem.write(keys, torch.randn(n, C))


@pytest.fixture(scope="module", params=["decoder", "latent+decoder"])
def decoder_space_editor(request, tmp_path_factory):
    """A tiny latent-space model, saved, then derived (`LarimarModel.derive`) to decoder-space values
    (the latent slot's weights dropped) or to latent+decoder ones (every trained weight kept)."""
    from tests.conftest import tiny_editor

    from larimar import LarimarEditor, LarimarModel

    src = tmp_path_factory.mktemp("latent")
    tiny = tiny_editor().model
    tiny.save_pretrained(src)
    space = request.param
    model, dropped = LarimarModel.derive(
        src, [f"value_space={space}", "readout=value_norm", "value_tokens=6", 'value_template="{value} ."']
    )
    rows = 6 * model.decoder.hidden
    if space == "decoder":
        assert "decoder.kv_proj.weight" in dropped and not any(k.startswith("encoder.head") for k in dropped)
        assert model.value_dim == rows
    else:
        assert dropped == [] and model.value_dim == model.cfg.memory.latent_dim + rows
        assert torch.equal(model.decoder.kv_proj.weight, tiny.decoder.kv_proj.weight)  # loaded under its old name
    out = tmp_path_factory.mktemp("derived")
    model.save_pretrained(out)
    assert LarimarModel.read_value_dim(out) == model.value_dim
    assert LarimarModel.read_value_dim(src) == model.cfg.memory.latent_dim
    return LarimarEditor(LarimarModel.from_pretrained(out), scope_model=None)


def test_a_decoder_space_memory_writes_reads_forgets_and_saves(decoder_space_editor, tmp_path):
    from larimar.memory_file import MemoryFileError

    editor = decoder_space_editor
    mem = editor.create_memory(keys="relu")
    assert mem.state.V == editor.model.value_dim != mem.state.C
    ids = mem.edit(["alice lives in", "bob plays the"], ["paris", "piano"])
    z, _ = mem.read(["alice lives in"])
    rows = editor.model.decoder_space_values(["alice lives in paris"])
    torch.testing.assert_close(z[:, -rows.shape[1] :], rows, atol=5e-3, rtol=0.05)  # its own prompt reads it back
    [g] = mem.generate(["alice lives in"], max_new_tokens=4)
    assert g.in_scope and isinstance(g.text, str)
    [s] = mem.score(["alice lives in"], ["paris"])
    assert s.in_scope and s.tokens >= 1
    back = editor.load_memory(mem.save(tmp_path / "m.safetensors"))
    assert torch.equal(back.read(["alice lives in"])[0], z)
    mem.forget(ids[0])
    assert len(mem) == 1 and not torch.allclose(mem.read(["alice lives in"])[0], z, atol=1e-3)
    from tests.conftest import tiny_editor

    with pytest.raises(MemoryFileError, match="values"):
        tiny_editor().load_memory(tmp_path / "m.safetensors")


def test_the_store_sizes_and_builds_decoder_space_memories(tmp_path):
    from larimar.serving.store import MemoryStore, StoreConfig, new_memory_bytes

    C, V = 8, 30
    store = MemoryStore(StoreConfig(storage=str(tmp_path), latent_dim=C, value_dim=V, default_slots=16))
    mid = store.commit(store.prepare_create("t", "a")).id
    keys, values = torch.randn(2, C), torch.randn(2, V)
    scope = torch.nn.functional.normalize(torch.randn(4, 5), dim=1)
    facts = [{"prompt": "p1", "target": "x"}, {"prompt": "p2", "target": "y"}]
    store.commit(store.prepare_write("t", mid, facts, keys, values, scope))
    assert store.records[mid].memory.state.M.shape == (1, 16, V)
    assert new_memory_bytes(16, C, V) > new_memory_bytes(16, C)
    again = MemoryStore(StoreConfig(storage=str(tmp_path), latent_dim=C, value_dim=V, default_slots=16))
    assert torch.equal(again.records[mid].memory.state.M, store.records[mid].memory.state.M)


@pytest.mark.parametrize("snapshot_every", [1000, 1])
def test_memories_of_another_value_width_are_marked_not_fatal(tmp_path, snapshot_every):
    """A storage written by a model with other values (v2's latents under a v3 server, say): from the
    log or from a snapshot, that memory is marked damaged with the reason, the server still starts
    and its other memories and new ones work."""
    from larimar.serving.store import MemoryStore, StoreConfig, Unavailable

    C = 8
    old = MemoryStore(StoreConfig(storage=str(tmp_path), latent_dim=C, default_slots=16, snapshot_every=snapshot_every))
    mid = old.commit(old.prepare_create("t", "old")).id
    scope = torch.nn.functional.normalize(torch.randn(2, 5), dim=1)
    old.commit(
        old.prepare_write("t", mid, [{"prompt": "p", "target": "x"}], torch.randn(1, C), torch.randn(1, C), scope)
    )
    new = MemoryStore(StoreConfig(storage=str(tmp_path), latent_dim=C, value_dim=3 * C, default_slots=16))
    assert mid in new.damaged and "values" in new.damaged[mid].message()
    with pytest.raises(Unavailable, match="values"):
        new.get("t", mid)
    fresh = new.commit(new.prepare_create("t", "new")).id
    assert new.records[fresh].memory.state.V == 3 * C
