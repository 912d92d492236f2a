"""EasyEdit's editor interface on Larimar: `from_hparams`, `edit`, `batch_edit`, EasyEdit's metrics.

    from larimar.evaluation.easyedit import BaseEditor, LarimarHyperParams
    hparams = LarimarHyperParams.from_hparams("larimar-smol-v3")       # or a path to a YAML file
    editor = BaseEditor.from_hparams(hparams)
    metrics, memory, ids = editor.edit(
        prompts=["The Eiffel Tower is in"], target_new=["Rome"], ground_truth=["Paris"], subject=["Eiffel Tower"],
        rephrase_prompts=["Where is the Eiffel Tower? It is in"],
        locality_inputs={"neighborhood": {"prompt": ["The Louvre is in"], "ground_truth": ["Paris"]}},
        portability_inputs={"one_hop": {"prompt": ["The Eiffel Tower's country is"], "ground_truth": ["Italy"]}})
    metrics[0]["post"]["rewrite_acc"]                                 # [1.0]

Same keywords, same return shape (`metrics, edited, _`) and the same metric definitions as
EasyEdit (`compute_edit_quality`): `rewrite_acc`, `rephrase_acc` and `portability[<key>_acc]`
are teacher-forced token accuracies of the target (`test_prediction_acc`); `locality[<key>_acc]`
is the fraction of the locality answer's tokens whose argmax prediction the edit left unchanged.
They are computed by the evaluation code (`larimar.evaluation.forcing`), the numbers
`jobs/eval.py zsre` reports. What differs, because Larimar edits a memory, not weights: the
"edited model" is an `EditableMemory` holding every edit (the decoder's weights never change,
so there is no weights copy to restore; the third value is the facts' ids), and
`sequential_edit=False` (EasyEdit's default) measures each edit alone in a fresh memory, while
`sequential_edit=True` and `batch_edit` measure every edit on the memory that holds them all.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal, NamedTuple

from larimar import config
from larimar.editor import EditableMemory, LarimarEditor
from larimar.evaluation import metrics as m
from larimar.evaluation.forcing import force_with_memory


@dataclass
class LarimarHyperParams:
    """EasyEdit-style hyperparameters (`hparams/LARIMAR/<model>.yaml`), typed like every config here."""

    alg_name: Literal["LARIMAR"] = "LARIMAR"
    model_name: str = "larimar-smol-v3"  # a saved model directory or a bundled name
    device: str = "cpu"
    slots: int | None = None  # memory size K (None: the model's)
    keys: Literal["linear", "relu"] = "linear"
    ridge: float = 1e-3
    scope_model: str | None = "minilm-l6"  # None: every query reads the memory
    scope_threshold: float = 0.7
    subject_threshold: float = 0.3
    readout: Literal["raw", "value_norm"] | None = None  # None: the model's trained convention
    use_scope: bool = True  # the metrics read through the scope detector, as served
    batch_size: int = 32  # facts per memory update in batch_edit

    @classmethod
    def from_hparams(cls, name_or_path: str | Path) -> "LarimarHyperParams":
        """A YAML file (".yaml" may be left off, as in EasyEdit) or a bundled name such as
        "larimar-smol-v3" (larimar/hparams/LARIMAR/). Unknown keys and bad values raise a
        `ConfigError` naming the key."""
        path = Path(name_or_path)
        if path.suffix != ".yaml" and not path.exists():
            path = path.with_name(path.name + ".yaml")
        if not path.exists():
            bundled = resources.files("larimar") / "hparams" / "LARIMAR" / f"{Path(name_or_path).stem}.yaml"
            if not bundled.is_file():
                raise config.ConfigError(f"hyperparameter file {name_or_path!r} not found (nor bundled)")
            path = Path(str(bundled))
        return config.load(cls, path)


class EditResult(NamedTuple):
    metrics: list[dict]
    memory: EditableMemory
    ids: list[int]


def _per_edit(value, n: int, name: str) -> list:
    """EasyEdit accepts one string for a single edit or a list with one entry per edit."""
    if value is None:
        return [None] * n
    values = [value] if isinstance(value, str) else list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} edits")
    return values


def _as_list(value) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _inputs(groups: dict | None, n: int, name: str) -> dict[str, list[tuple[list[str], list[str]]]]:
    """{"neighborhood": {"prompt": [...], "ground_truth": [...]}} -> per key, per edit (prompts, answers)."""
    out = {}
    for key, group in (groups or {}).items():
        if not isinstance(group, dict) or set(group) != {"prompt", "ground_truth"}:
            raise ValueError(f"{name}[{key!r}] needs exactly the keys 'prompt' and 'ground_truth'")
        prompts, truths = (
            _per_edit(group["prompt"], n, f"{name}[{key!r}].prompt"),
            _per_edit(group["ground_truth"], n, f"{name}[{key!r}].ground_truth"),
        )
        pairs = []
        for i, (p, t) in enumerate(zip(prompts, truths)):
            p, t = _as_list(p), _as_list(t)
            if len(p) != len(t):
                raise ValueError(f"{name}[{key!r}] edit {i}: {len(p)} prompts but {len(t)} ground truths")
            pairs.append((p, t))
        out[key] = pairs
    return out


class BaseEditor:
    """EasyEdit's `BaseEditor`, for Larimar. Wraps a `LarimarEditor` (`.editor`)."""

    def __init__(self, editor: LarimarEditor, hparams: LarimarHyperParams):
        self.editor, self.hparams = editor, hparams

    @classmethod
    def from_hparams(cls, hparams: LarimarHyperParams | str | Path) -> "BaseEditor":
        if not isinstance(hparams, LarimarHyperParams):
            hparams = LarimarHyperParams.from_hparams(hparams)
        editor = LarimarEditor.from_pretrained(
            hparams.model_name,
            scope_model=hparams.scope_model,
            scope_threshold=hparams.scope_threshold,
            subject_threshold=hparams.subject_threshold,
            readout=hparams.readout,
        )
        editor.model.to(hparams.device)
        return cls(editor, hparams)

    def create_memory(self, capacity: int | None = None) -> EditableMemory:
        h = self.hparams
        return self.editor.create_memory(slots=h.slots, capacity=capacity, ridge=h.ridge, keys=h.keys)

    # -- EasyEdit's entry points --------------------------------------------------------------------

    def edit(
        self,
        prompts: str | list[str],
        target_new: str | list[str],
        ground_truth: str | list[str] | None = None,
        subject: str | list[str] | None = None,
        rephrase_prompts: str | list | None = None,
        locality_inputs: dict | None = None,
        portability_inputs: dict | None = None,
        sequential_edit: bool = False,
        memory: EditableMemory | None = None,
        verbose: bool = False,
    ) -> EditResult:
        """Write each (prompt -> target_new) fact; metrics per edit in EasyEdit's format.

        memory: an existing memory to write into (default: a new one). sequential_edit=False
        scores each edit alone in a fresh memory; True scores them all on the final memory."""
        return self._run(
            prompts,
            target_new,
            ground_truth,
            subject,
            rephrase_prompts,
            locality_inputs,
            portability_inputs,
            together=sequential_edit,
            memory=memory,
            verbose=verbose,
        )

    def batch_edit(
        self,
        prompts: list[str],
        target_new: list[str],
        ground_truth: list[str] | None = None,
        subject: list[str] | None = None,
        rephrase_prompts: list | None = None,
        locality_inputs: dict | None = None,
        portability_inputs: dict | None = None,
        locality_prompts: list[str] | None = None,
        locality_ground_truth: list[str] | None = None,
        memory: EditableMemory | None = None,
        verbose: bool = False,
    ) -> EditResult:
        """All edits written in updates of `hparams.batch_size` facts, scored on the memory holding
        them all. EasyEdit's batch-form `locality_prompts`/`locality_ground_truth` are accepted as
        the locality group "neighborhood"."""
        if locality_prompts is not None or locality_ground_truth is not None:
            if locality_inputs is not None:
                raise ValueError("give locality_inputs or locality_prompts/locality_ground_truth, not both")
            locality_inputs = {"neighborhood": {"prompt": locality_prompts, "ground_truth": locality_ground_truth}}
        return self._run(
            prompts,
            target_new,
            ground_truth,
            subject,
            rephrase_prompts,
            locality_inputs,
            portability_inputs,
            together=True,
            memory=memory,
            verbose=verbose,
        )

    # -- the work -----------------------------------------------------------------------------------

    def _run(
        self,
        prompts,
        target_new,
        ground_truth,
        subject,
        rephrase_prompts,
        locality_inputs,
        portability_inputs,
        together: bool,
        memory: EditableMemory | None,
        verbose: bool,
    ) -> EditResult:
        prompts = _as_list(prompts)
        n = len(prompts)
        targets = _per_edit(target_new, n, "target_new")
        if n == 0:
            raise ValueError("prompts is empty")
        truths, subjects = _per_edit(ground_truth, n, "ground_truth"), _per_edit(subject, n, "subject")
        rephrases = [_as_list(r) for r in _per_edit(rephrase_prompts, n, "rephrase_prompts")]
        locality, portability = (
            _inputs(locality_inputs, n, "locality_inputs"),
            _inputs(portability_inputs, n, "portability_inputs"),
        )
        memory = memory if memory is not None else self.create_memory()
        ids, seconds = [], [0.0] * n
        step = self.hparams.batch_size if together else 1  # one memory update per step
        for s in range(0, n, step):
            part = slice(s, s + step)
            start = time.perf_counter()
            ids += memory.edit(prompts[part], targets[part], subject=None if subject is None else subjects[part])
            k = len(prompts[part])
            seconds[part] = [(time.perf_counter() - start) / k] * k
        results = []
        for i in range(n):
            if together:
                scored = memory
            else:  # EasyEdit's default protocol: the edit alone
                scored = self.create_memory(capacity=1)
                scored.edit([prompts[i]], [targets[i]], subject=None if subject is None else [subjects[i]])
            request = {
                "prompt": prompts[i],
                "target_new": targets[i],
                "ground_truth": truths[i],
                "subject": subjects[i],
                "rephrase_prompt": rephrases[i] or None,
                "locality": {k: {"prompt": v[i][0], "ground_truth": v[i][1]} for k, v in locality.items()},
                "portability": {k: {"prompt": v[i][0], "ground_truth": v[i][1]} for k, v in portability.items()},
            }
            pre, post = self._quality(None, request), self._quality(scored, request)
            for key in locality:
                post["locality"][f"{key}_acc"] = [
                    m.unchanged_fraction(a, b)
                    for a, b in zip(post["locality"].pop(f"{key}_output"), pre["locality"].pop(f"{key}_output"))
                ]
            pre.pop("locality")
            record = {
                "case_id": i,
                "fact_id": ids[i],
                "requested_rewrite": request,
                "time": seconds[i],
                "pre": pre,
                "post": post,
            }
            if verbose:
                print(
                    f"[larimar] edit {i}: {prompts[i]!r} -> {targets[i]!r}: rewrite_acc {post['rewrite_acc']}",
                    flush=True,
                )
            results.append(record)
        return EditResult(results, memory, ids)

    def _quality(self, memory: EditableMemory | None, request: dict) -> dict:
        """EasyEdit's `compute_edit_quality` for one request, with one teacher-forced decoder pass;
        memory=None is the unedited decoder (the "pre" metrics and the locality reference)."""
        rows: list[tuple[str, str, str]] = [("rewrite", request["prompt"], request["target_new"])]
        rows += [("rephrase", p, request["target_new"]) for p in request["rephrase_prompt"] or []]
        for group in ("locality", "portability"):
            for key, inp in request[group].items():
                rows += [(f"{group}/{key}", p, t) for p, t in zip(inp["prompt"], inp["ground_truth"])]
        forced = force_with_memory(
            memory,
            [r[1] for r in rows],
            [r[2] for r in rows],
            use_scope=self.hparams.use_scope and memory is not None,
            model=self.editor.model,
        )
        out: dict = {"rewrite_acc": [], "locality": {}, "portability": {}}
        if request["rephrase_prompt"]:
            out["rephrase_acc"] = []
        for (kind, _, _), f in zip(rows, forced):
            if kind == "rewrite":
                out["rewrite_acc"].append(f.token_acc)
            elif kind == "rephrase":
                out["rephrase_acc"].append(f.token_acc)
            elif kind.startswith("locality/"):
                out["locality"].setdefault(f"{kind.split('/', 1)[1]}_output", []).append(f.pred_ids)
            else:
                out["portability"].setdefault(f"{kind.split('/', 1)[1]}_acc", []).append(f.token_acc)
        out["in_scope"] = [f.in_scope for f in forced] if memory is not None else None
        return out


def summary(results: list[dict]) -> dict[str, float | None]:
    """Means over edits of each post metric (EasyEdit's `summary_metrics`)."""
    flat: dict[str, list[float]] = {}
    for r in results:
        post = r["post"]
        for key in ("rewrite_acc", "rephrase_acc"):
            if key in post:
                flat.setdefault(key, []).append(m.mean(post[key]))
        for group in ("locality", "portability"):
            for key, values in post[group].items():
                flat.setdefault(f"{group}/{key}", []).append(m.mean(values))
    return {k: m.mean([v for v in vs if v is not None]) for k, vs in flat.items()}


__all__ = ["BaseEditor", "EditResult", "LarimarHyperParams", "summary"]
