"""EasyEdit's interface on the shipped model (larimar/evaluation/easyedit.py): every keyword of `edit`, the
metrics' shape and meaning (cross-checked against `jobs/eval.py zsre`'s code), `batch_edit`,
`sequential_edit`, and hyperparameter files."""

import pytest

from larimar.config import ConfigError
from larimar.evaluation.easyedit import BaseEditor, LarimarHyperParams, summary

pytestmark = pytest.mark.slow

EDITS = dict(
    prompts=["The Eiffel Tower is in", "The mother tongue of Danielle Darrieux is"],
    target_new=["Rome", "English"],
    ground_truth=["Paris", "French"],
    subject=["Eiffel Tower", "Danielle Darrieux"],
    rephrase_prompts=["Where is the Eiffel Tower? It is in", "Danielle Darrieux's mother tongue is"],
    locality_inputs={
        "neighborhood": {
            "prompt": ["The Louvre is in", "The mother tongue of Léon Blum is"],
            "ground_truth": ["Paris", "French"],
        }
    },
    portability_inputs={
        "one_hop": {
            "prompt": ["The Eiffel Tower is in the country of", "Danielle Darrieux speaks"],
            "ground_truth": ["Italy", "English"],
        }
    },
)


@pytest.fixture(scope="module")
def editor():
    return BaseEditor.from_hparams("larimar-smol-v2")


def test_edit_with_every_keyword_returns_easyedits_metrics(editor):
    metrics, memory, ids = editor.edit(**EDITS)
    assert ids == [1, 2] and len(memory) == 2  # the returned memory holds every edit
    assert [r["case_id"] for r in metrics] == [0, 1]
    for r in metrics:
        assert set(r) >= {"case_id", "requested_rewrite", "time", "pre", "post"}
        post, pre = r["post"], r["pre"]
        assert set(post) >= {"rewrite_acc", "rephrase_acc", "locality", "portability"}
        assert list(post["locality"]) == ["neighborhood_acc"] and list(post["portability"]) == ["one_hop_acc"]
        assert post["rewrite_acc"] == [1.0] and pre["rewrite_acc"][0] < 1.0  # the edit took
        assert post["rephrase_acc"][0] > pre["rephrase_acc"][0]
        assert post["locality"]["neighborhood_acc"] == [1.0]  # the neighbour is out of scope: untouched
        assert post["in_scope"][:2] == [True, True] and post["in_scope"][2] is False
        assert r["requested_rewrite"]["ground_truth"] in ("Paris", "French")
    s = summary(metrics)
    assert s["rewrite_acc"] == 1.0 and s["locality/neighborhood_acc"] == 1.0 and "portability/one_hop_acc" in s


def test_metrics_are_the_evaluations_numbers(editor):
    """rewrite/rephrase/locality of one zsRE case equal `jobs/eval.py zsre`'s ES/PS/locality (scope)."""
    from larimar.evaluation import zsre
    from larimar.evaluation.config import EvalConfig
    from larimar.evaluation.context import EvalContext
    from larimar.benchmarks import ZsreCase

    case = ZsreCase(
        case_id=0,
        subject="Danielle Darrieux",
        prompt="The mother tongue of Danielle Darrieux is",
        target="English",
        rephrase="Danielle Darrieux's mother tongue is",
        loc="The mother tongue of Léon Blum is",
        loc_ans="French",
    )
    ctx = EvalContext(EvalConfig(experiment="zsre", model="larimar-smol-v2", data="unused"), model=editor.editor.model)
    record = zsre.evaluate(ctx, [case], lambda k: None)[0]["scope"]
    [r], _, _ = editor.edit(
        prompts=case.prompt,
        target_new=case.target,
        subject=case.subject,
        rephrase_prompts=case.rephrase,
        locality_inputs={"nq": {"prompt": case.loc, "ground_truth": case.loc_ans}},
    )
    assert r["post"]["rewrite_acc"] == [record["ES"]] and r["post"]["rephrase_acc"] == [record["PS"]]
    assert r["post"]["locality"]["nq_acc"] == [record["locality"]]


def test_sequential_and_batch_edit_score_on_the_memory_holding_all_edits(editor):
    alone, _, _ = editor.edit(**EDITS)
    together, memory, _ = editor.edit(**EDITS, sequential_edit=True)
    batched, bmem, ids = editor.batch_edit(
        prompts=EDITS["prompts"],
        target_new=EDITS["target_new"],
        subject=EDITS["subject"],
        locality_prompts=["The Louvre is in"] * 2,
        locality_ground_truth=["Paris"] * 2,
    )
    assert len(memory) == len(bmem) == 2 and ids == [1, 2]
    assert [r["post"]["rewrite_acc"] for r in together] == [r["post"]["rewrite_acc"] for r in batched]
    assert all(r["post"]["locality"]["neighborhood_acc"] == [1.0] for r in batched)
    more, same, _ = editor.edit(prompts=["Kilimanjaro is in"], target_new=["Peru"], memory=memory)
    assert same is memory and len(memory) == 3


def test_bad_inputs_name_what_is_wrong(editor, tmp_path):
    with pytest.raises(ValueError, match="target_new has 1 entries for 2 edits"):
        editor.edit(prompts=["a", "b"], target_new=["x"])
    with pytest.raises(ValueError, match="'prompt' and 'ground_truth'"):
        editor.edit(prompts="a", target_new="x", locality_inputs={"nq": {"prompt": "q"}})
    bad = tmp_path / "bad.yaml"
    bad.write_text("alg_name: LARIMAR\nmodel_name: larimar-smol-v2\nslotz: 4\n")
    with pytest.raises(ConfigError, match="slotz"):
        LarimarHyperParams.from_hparams(bad)
    bad.write_text("alg_name: ROME\n")
    with pytest.raises(ConfigError, match="alg_name"):
        LarimarHyperParams.from_hparams(str(bad)[:-5])  # ".yaml" may be left off, as in EasyEdit
    with pytest.raises(ConfigError, match="not found"):
        LarimarHyperParams.from_hparams("no-such-hparams")
    h = LarimarHyperParams.from_hparams("larimar-smol-v2")
    assert (h.model_name, h.keys, h.use_scope) == ("larimar-smol-v2", "linear", True)
