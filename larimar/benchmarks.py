"""Benchmark records for evaluation: CounterFact (both formats), zsRE (MEND format), synthetic facts.

Formats (see ../shared/data/README.md):
- CounterFact, ROME's canonical records: ``requested_rewrite{prompt, subject, target_new.str,
  target_true.str}``, ``paraphrase_prompts`` and ``neighborhood_prompts`` (whose true answer is the
  rewrite's ``target_true``).
- CounterFact, EasyEdit's flattened records: ``prompt, target_new, ground_truth, rephrase_prompt,
  locality_prompt, locality_ground_truth``. Their ``rephrase_prompt`` is often a generation prompt,
  not a paraphrase, so it is *not* loaded as one: only ES and NS are meaningful on this format.
- zsRE, MEND's format: ``src, rephrase, answers[], loc, loc_ans``; ``answers[0]`` is the edit
  target (ROME's ``MENDQADataset``), ``loc`` is an "nq question:" whose answer must stay ``loc_ans``.
- ``synthetic`` or ``synthetic:N``: N facts of `larimar.synthetic` with distinct prompts, the
  domain the demo model was trained on.

`load_facts` reduces any of these to `Fact`s (prompt, target, rephrases), the unit the memory
experiments write and recall.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from larimar.config import ConfigError
from larimar.sources import resolve_source
from larimar.synthetic import PEOPLE, RELATIONS, distinct_facts


@dataclass(frozen=True)
class CounterFactCase:
    case_id: int
    prompt: str  # the rewrite prompt with the subject filled in
    target_new: str
    target_true: str
    paraphrases: tuple[str, ...] = ()  # empty for flattened records (no reliable paraphrase)
    neighborhood: tuple[str, ...] = ()
    neighborhood_true: str = ""  # the answer the neighbourhood prompts must keep
    format: str = "canonical"  # "canonical" (ROME) or "flat" (EasyEdit)
    subject: str = ""  # the edited subject (ROME-style editors locate its last token)


@dataclass(frozen=True)
class ZsreCase:
    case_id: int
    prompt: str  # src
    target: str  # answers[0]
    rephrase: str
    loc: str
    loc_ans: str
    subject: str = ""


@dataclass(frozen=True)
class Fact:
    prompt: str
    target: str
    rephrases: tuple[str, ...] = field(default=())
    subject: str = ""

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.target}"


def _read_json(path: str | Path) -> list[dict]:
    try:
        resolved = resolve_source(str(path))
    except ConfigError:
        resolved = None
    if not isinstance(resolved, Path) or not resolved.is_file():
        raise ConfigError(
            f"--data: {path!r} is not a file (expected a CounterFact or zsRE JSON file, "
            "a ../shared/data/... path, or synthetic[:N])"
        )
    data = json.loads(Path(resolved).read_text())
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        raise ConfigError(f"--data: {path} must hold a non-empty JSON list of records")
    return data


def detect_format(record: dict) -> str:
    if "requested_rewrite" in record:
        return "counterfact-canonical"
    if "locality_prompt" in record and "target_new" in record:
        return "counterfact-flat"
    if "src" in record and "answers" in record:
        return "zsre"
    if {"prompt", "target_new", "subject"} <= set(record):
        return "knowedit"  # KnowEdit's ZsRE / WikiData_counterfact test files (training text only)
    raise ConfigError(
        f"--data: unrecognised record with keys {sorted(record)}; expected CounterFact "
        "(requested_rewrite, or prompt/target_new/locality_prompt) or zsRE (src/answers/loc)"
    )


def _limit(records: list, limit: int | None) -> list:
    return records if limit is None else records[:limit]


def counterfact_case(record: dict, index: int) -> CounterFactCase:
    fmt = detect_format(record)
    if fmt == "counterfact-canonical":
        rw = record["requested_rewrite"]
        true = rw["target_true"]["str"]
        return CounterFactCase(
            int(record.get("case_id", index)),
            rw["prompt"].format(rw["subject"]),
            rw["target_new"]["str"],
            true,
            tuple(record.get("paraphrase_prompts", ())),
            tuple(record.get("neighborhood_prompts", ())),
            true,
            "canonical",
            rw["subject"],
        )
    if fmt == "counterfact-flat":
        loc = record.get("locality_prompt")
        return CounterFactCase(
            int(record.get("case_id", index)),
            record["prompt"],
            record["target_new"],
            record["ground_truth"],
            (),
            (loc,) if loc else (),
            record.get("locality_ground_truth", ""),
            "flat",
            record.get("subject", ""),
        )
    raise ConfigError(f"--data: counterfact needs CounterFact records, got {fmt} records")


def load_counterfact(path: str | Path, limit: int | None = None) -> list[CounterFactCase]:
    return [counterfact_case(r, i) for i, r in enumerate(_limit(_read_json(path), limit))]


def zsre_case(record: dict, index: int) -> ZsreCase:
    if detect_format(record) != "zsre":
        raise ConfigError(f"--data: zsre needs MEND-format zsRE records (src, answers, loc), got keys {sorted(record)}")
    if not record["answers"]:
        raise ConfigError(f"--data: zsRE record {index} has an empty 'answers' list")
    return ZsreCase(
        index,
        record["src"],
        record["answers"][0],
        record["rephrase"],
        record["loc"],
        record["loc_ans"],
        record.get("subject", ""),
    )


def load_zsre(path: str | Path, limit: int | None = None) -> list[ZsreCase]:
    return [zsre_case(r, i) for i, r in enumerate(_limit(_read_json(path), limit))]


SYNTHETIC_MAX = len(PEOPLE) * len(RELATIONS)


def load_facts(source: str, limit: int | None = None, seed: int = 0) -> list[Fact]:
    """Facts to write: from zsRE, either CounterFact format, or ``synthetic[:N]``."""
    if source.startswith("synthetic"):
        n = int(source.split(":", 1)[1]) if ":" in source else SYNTHETIC_MAX
        n = min(n, limit) if limit is not None else n
        return [Fact(f.prompt, f.obj) for f in distinct_facts(n, seed=seed)]
    records = _limit(_read_json(source), limit)
    fmt = detect_format(records[0])
    if fmt == "zsre":
        return [
            Fact(c.prompt, c.target, (c.rephrase,), c.subject) for c in (zsre_case(r, i) for i, r in enumerate(records))
        ]
    return [
        Fact(c.prompt, c.target_new, c.paraphrases, c.subject)
        for c in (counterfact_case(r, i) for i, r in enumerate(records))
    ]
