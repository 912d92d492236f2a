"""The Larimar model on tiny random backbones: objective, training step, save/load (larimar/model.py)."""

import json

import pytest
import torch

from larimar.config import ConfigError, from_dict
from larimar.losses import LossConfig, beta
from larimar.model import LarimarConfig, LarimarModel

TEXTS = [
    "the capital of vorland is zell .",
    "the river arn flows into the grey sea .",
    "mira teaches chemistry in oslo .",
    "the tower was built in 1907 .",
    "the red fox sleeps under the oak .",
    "tomas plays the violin every night .",
    "the bakery opens at six in the morning .",
    "the comet returns every 76 years .",
]


def tiny_config(**overrides) -> LarimarConfig:
    data = {
        "encoder": "tiny-bert",
        "decoder": "tiny-llama",
        "encoder_trainable_layers": -1,
        "decoder_trainable": True,
        "max_length": 16,
        "memory": {"slots": 8, "latent_dim": 16, "read_noise_std": 0.01},
        "loss": {"kl": 0.1},
    }
    data.update(overrides)
    return from_dict(LarimarConfig, data)


def episodes(model: LarimarModel, B: int = 2, N: int = 4) -> dict[str, torch.Tensor]:
    texts = TEXTS[: B * N]
    enc = model.tokenize_for_encoder(texts)
    dec = model.tokenize_for_decoder(texts)
    return {
        "enc_input_ids": enc["input_ids"].view(B, N, -1),
        "enc_attention_mask": enc["attention_mask"].view(B, N, -1),
        "dec_input_ids": dec["input_ids"].view(B, N, -1),
        "dec_attention_mask": dec["attention_mask"].view(B, N, -1),
    }


@pytest.mark.parametrize("decoder", ["tiny-llama", "tiny-gpt2"])
def test_one_optimisation_step_lowers_the_loss(decoder):
    model = LarimarModel(tiny_config(decoder=decoder))
    batch = episodes(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    torch.manual_seed(1)
    first = model(**batch, beta=0.1)
    assert set(first.terms) == {"reconstruction", "autoencoder", "lm", "kl"}
    assert all(torch.isfinite(torch.tensor(v)) for v in first.terms.values())
    first.loss.backward()
    opt.step()
    torch.manual_seed(1)
    assert model(**batch, beta=0.1).loss < first.loss


def test_frozen_decoder_skips_the_constant_lm_term_and_trains_the_projections():
    model = LarimarModel(tiny_config(decoder_trainable=False))
    assert not any(p.requires_grad for p in model.decoder.lm.parameters())
    out = model(**episodes(model))
    assert "lm" not in out.terms
    out.loss.backward()
    assert model.decoder.kv_proj.weight.grad is not None and model.decoder.emb_proj.weight.grad.abs().sum() > 0
    assert model.encoder.head.weight.grad is not None and model.memory.prior_mean.grad is not None


def test_save_then_load_reproduces_logits_exactly(tmp_path):
    model = LarimarModel(tiny_config()).eval()
    with torch.no_grad():  # make every trainable piece differ from a fresh init
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    model.save_pretrained(tmp_path / "m")
    loaded = LarimarModel.from_pretrained(tmp_path / "m")
    batch = model.tokenize_for_decoder(TEXTS[:3])
    z = model.encode_texts(TEXTS[:3])
    torch.testing.assert_close(loaded.encode_texts(TEXTS[:3]), z, atol=0, rtol=0)
    torch.testing.assert_close(loaded.decoder(**batch, z=z), model.decoder(**batch, z=z), atol=0, rtol=0)
    torch.testing.assert_close(loaded.memory.prior_mean, model.memory.prior_mean, atol=0, rtol=0)
    # Hugging Face's layout: model_type, and a generation_config.json whose defaults generate_text uses
    assert json.loads((tmp_path / "m" / "config.json").read_text())["model_type"] == "larimar"
    gen = json.loads((tmp_path / "m" / "generation_config.json").read_text())
    gen["max_new_tokens"] = 3
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps(gen))
    reloaded = LarimarModel.from_pretrained(tmp_path / "m")
    [(_, n)] = reloaded.generate_text(["alice lives in"], torch.zeros(1, reloaded.cfg.memory.latent_dim))
    assert n <= 3
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not a Larimar config"):
        LarimarModel.read_config(tmp_path / "m")


def test_bad_config_names_the_key():
    with pytest.raises(ConfigError, match="memory.slotz"):
        tiny_config(memory={"slotz": 3})
    with pytest.raises(ConfigError, match="memory.slots"):
        tiny_config(memory={"slots": -1})
    with pytest.raises(ConfigError, match="pooling"):
        tiny_config(pooling="max")
    with pytest.raises(ConfigError, match="loss.kl"):
        from_dict(LarimarConfig, {"loss": {"kl": "high"}})


def test_cyclic_beta_schedule():
    cfg = LossConfig(kl=0.5, beta_cycles=2)
    values = [beta(s, 100, cfg) for s in range(100)]
    assert values[0] == 0 and values[24] == 0  # first half of each cycle at 0
    assert 0 < values[30] < 0.5  # ramp
    assert values[40] == 0.5 and values[49] == 0.5
    assert values[50] == 0  # second cycle restarts
    assert beta(10, 100, LossConfig(kl=0.0)) == 0.0


def test_encoder_trainable_layers():
    model = LarimarModel(tiny_config(encoder_trainable_layers=1))
    layers = model.encoder.backbone.encoder.layer
    assert all(p.requires_grad for p in layers[-1].parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert not model.encoder.backbone.embeddings.word_embeddings.weight.requires_grad
    assert model.encoder.head.weight.requires_grad


def test_top_layer_untied_slot_in_bf16_and_bundled_names(tmp_path, monkeypatch):
    """The smol recipe's decoder conditioning (top layers only, separate key/value, zero init)
    learns, saves in bf16 (the shipped adapter) and loads by a bundled name."""
    import larimar.model as model_module

    model = LarimarModel(
        tiny_config(
            inject_layers=1, embedding_shift=False, conditioning_init="zero", tie_key_value=False, latent_scale_min=0.5
        )
    ).eval()
    assert model.decoder.emb_proj is None and float(model.decoder.kv_proj.weight.detach().abs().sum()) == 0
    batch = model.tokenize_for_decoder(TEXTS[:2])
    z = model.encode_texts(TEXTS[:2])
    with torch.no_grad():
        model.decoder.kv_proj.weight.normal_(std=0.5)
    cache = model.decoder.prefix_cache(z)
    k0, v0 = cache.layers[0].keys, cache.layers[0].values
    k1, v1 = cache.layers[1].keys, cache.layers[1].values
    assert float(k0.abs().sum()) == 0 and float(v0.abs().sum()) == 0  # below the injected layer: zero slot
    assert not torch.equal(k1, v1)  # untied
    assert not torch.allclose(model.decoder(**batch, z=z), model.decoder(**batch, z=torch.zeros_like(z)))
    model.save_pretrained(tmp_path / "shipped" / "tiny-adapter", dtype=torch.bfloat16)
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(tmp_path / "shipped" / "tiny-adapter" / "model.safetensors").values()} == {
        torch.bfloat16
    }
    monkeypatch.setattr(model_module, "BUNDLED_DIR", tmp_path / "shipped")
    assert model_module.bundled_models() == ["tiny-adapter"]
    loaded = LarimarModel.from_pretrained("tiny-adapter")
    torch.testing.assert_close(loaded.decoder.kv_proj.weight, model.decoder.kv_proj.weight.bfloat16().float())
    with pytest.raises(FileNotFoundError, match="tiny-adapter"):
        LarimarModel.from_pretrained("no-such-model")


# Keyed training rows (the v2 objective): a fact, the prompt that keys it, another wording that reads it.
KEYED_ROWS = [
    {"text": f"{p} {t}", "key": p, "query": q, "target": t}
    for p, q, t in [
        ("the capital of vorland is", "vorland's capital city is", "zell"),
        ("mira teaches", "the subject mira teaches is", "chemistry"),
        ("the river arn flows into the", "the arn ends in the", "grey sea"),
        ("tomas plays the", "the instrument tomas plays is the", "violin"),
    ]
]


def one_step_trains(model, batch, head) -> None:
    """`head` gets gradient from the keyed loss and one Adam step lowers that loss."""
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    first = model(**batch)
    first.loss.backward()
    assert head.weight.grad.abs().sum() > 0
    opt.step()
    assert model(**batch).loss < first.loss


def test_keyed_episodes_train_the_target_head_and_lower_the_loss(tmp_path):
    """The v2 objective: facts written with prompt keys, read with other wordings, loss on the
    target tokens; the zero-initialised target head gets gradient and one step lowers the loss.
    A saved model starts a new one through init_from (the new head keeps its init)."""
    from larimar.train.loop import episode_batch

    rows = KEYED_ROWS
    cfg = dict(
        decoder_trainable=False,
        value_target=True,
        readout="value_norm",
        context_weight=0.0,
        memory={"slots": 8, "latent_dim": 16},
    )
    model = LarimarModel(tiny_config(**cfg))
    base = tmp_path / "base"
    LarimarModel(tiny_config(**{**cfg, "value_target": False})).save_pretrained(base)
    assert model.init_from(base) == ["encoder.target_head.weight"]
    batch = episode_batch(model, rows, 2, 2)
    assert batch["dec_loss_weight"].sum() == sum(
        len(model.decoder_tokenizer(" " + r["target"], add_special_tokens=False)["input_ids"]) for r in rows
    )
    one_step_trains(model, batch, model.encoder.target_head)
    with pytest.raises(ValueError, match="mixes plain and keyed"):
        episode_batch(model, rows[:3] + [{"text": "x", "key": "", "query": "", "target": ""}], 2, 2)


def test_target_token_values_carry_the_decoders_embeddings_of_the_target():
    """value_target_tokens: a third value term from the decoder's input embeddings of the target's
    tokens; zero-initialised (values unchanged at init), trained by keyed episodes, and the same in
    the training batch and in the fact encoder the editor and the server use."""
    from larimar.fact_encoder import encode_facts
    from larimar.facts import make_fact
    from larimar.train.loop import episode_batch

    rows = KEYED_ROWS
    cfg = dict(
        decoder_trainable=False,
        value_target=True,
        value_target_tokens=True,
        readout="value_norm",
        context_weight=0.0,
        memory={"slots": 8, "latent_dim": 16},
    )
    model = LarimarModel(tiny_config(**cfg))
    facts = [make_fact(prompt=r["key"], target=r["target"]) for r in rows]
    before = encode_facts(model, facts, scope=False).values
    feats = model.target_token_features_of(["zell", "grey sea"])
    emb = model.decoder.lm.get_input_embeddings().weight
    ids = model.decoder_tokenizer(" grey sea", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(feats[1], emb[ids].mean(0))
    batch = episode_batch(model, rows, 2, 2)
    assert batch["target_dec_ids"].shape[:2] == (2, 2)
    one_step_trains(model, batch, model.target_token_head)
    model.eval()
    after = encode_facts(model, facts, scope=False).values
    assert not torch.allclose(before, after)  # the trained head moved the values
    expected = model.values_from_pooled(
        model.encode_pooled([f.text for f in facts]),
        model.encode_pooled([r["target"] for r in rows]),
        model.target_token_features_of([r["target"] for r in rows]),
    )
    torch.testing.assert_close(after, expected.detach())


def test_pooled_texts_in_length_sorted_chunks_equal_each_text_alone():
    """encode_pooled's length-sorted chunks change only the padding, never a text's result or its place."""
    model = LarimarModel(tiny_config()).eval()
    texts = ["a", "the capital of france is paris", "b c", "one two three four five six seven eight", "x y z", "a"]
    with torch.no_grad():
        alone = torch.cat([model.encode_pooled([t]) for t in texts])
        chunked = model.encode_pooled(texts, chunk=2)
        padded = model.encoder.pooled(**model.tokenize_for_encoder(texts))  # one batch padded to the longest
    assert chunked.shape == (len(texts), alone.shape[1])
    torch.testing.assert_close(chunked, alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, padded, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(chunked[0], chunked[1])  # distinct texts stay distinct (nothing was shuffled)
    torch.testing.assert_close(chunked[0], chunked[5])


def test_pooled_chunks_on_a_thread_pool_equal_the_serial_pass_bit_for_bit_and_keep_grad_mode():
    """`encode_pooled(pool=...)` runs the same chunks on other threads: the same bits, in the same
    places; a pool thread takes the caller's grad mode (thread-local in torch), so a no_grad
    caller gets no graph and a training caller gets one."""
    from concurrent.futures import ThreadPoolExecutor

    model = LarimarModel(tiny_config()).eval()
    texts = [f"text {i} " + "word " * (i % 7) for i in range(11)]
    with ThreadPoolExecutor(2) as pool:
        with torch.no_grad():
            serial = model.encode_pooled(texts, chunk=3)
            threaded = model.encode_pooled(texts, chunk=3, pool=pool)
        assert torch.equal(serial, threaded) and not threaded.requires_grad
        trained = model.encode_pooled(texts, chunk=3, pool=pool)
    assert trained.requires_grad and trained.grad_fn is not None
    torch.testing.assert_close(trained.detach(), serial)
