"""Fact-style training text from the editing benchmarks' own files (CounterFact, zsRE).

The paper trains on WikiText only. A small decoder on a CPU budget learns far faster to read a
short fact back out of its latent when it also sees short fact sentences: "<prompt> <target>",
the shape of every edit it will be asked to recall. A model trained with this text must say so
in its name (e.g. ``larimar-smol-facts``) and be reported beside the WikiText-only variant.

Evaluation cases must stay unseen: every case of the files named in ``exclude`` is dropped by
case id (CounterFact) and by subject (both benchmarks), and so is any sentence that names one of
their subjects, so a dev-set metric is a held-out one.

Sentences per record:
- CounterFact (ROME format or EasyEdit's flattened format): the rewrite prompt with the new
  target and with the true target, and the neighbourhood / locality prompt with its true target.
- zsRE (MEND format): the question and its rephrase, each followed by ``answers[0]``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from larimar.config import ConfigError


def _load(path: Path) -> list[dict]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"data.facts: cannot read {path}: {e}") from None
    if not isinstance(records, list) or not records or not isinstance(records[0], dict):
        raise ConfigError(f"data.facts: {path} is not a JSON list of records")
    return records


def kind(record: dict) -> str:
    """The record's benchmark format, by the evaluation loader's own detection."""
    from larimar.evaluation.data import detect_format  # larimar.evaluation imports larimar.data, which imports us

    try:
        return {"counterfact-canonical": "counterfact", "counterfact-flat": "counterfact_flat"}.get(
            fmt := detect_format(record), fmt)
    except ConfigError as err:
        raise ConfigError(f"data.facts: {err}") from None


def _target(value) -> str:
    return (value["str"] if isinstance(value, dict) else str(value)).strip()


def identities(record: dict) -> tuple[str | None, str | None]:
    """(case id, subject) of a record, either may be None."""
    k = kind(record)
    if k == "counterfact":
        return str(record.get("case_id")), record["requested_rewrite"]["subject"].strip()
    if k == "counterfact_flat":
        return str(record.get("case_id")), str(record.get("subject", "")).strip() or None
    return None, str(record.get("subject", "")).strip() or None


def sentences(record: dict) -> list[str]:
    k = kind(record)
    out: list[tuple[str, str]] = []
    if k == "counterfact":
        rw = record["requested_rewrite"]
        prompt = rw["prompt"].format(rw["subject"])
        out += [(prompt, _target(rw["target_new"])), (prompt, _target(rw["target_true"]))]
        out += [(p, _target(rw["target_true"])) for p in record.get("neighborhood_prompts", [])[:1]]
    elif k == "counterfact_flat":
        out += [(record["prompt"], _target(record["target_new"])), (record["prompt"], _target(record["ground_truth"]))]
        if record.get("locality_prompt") and record.get("locality_ground_truth"):
            out.append((record["locality_prompt"], _target(record["locality_ground_truth"])))
    else:
        answer = str(record["answers"][0]).strip()
        out += [(record["src"], answer)] + ([(record["rephrase"], answer)] if record.get("rephrase") else [])
    return [f"{p.strip()} {t}" for p, t in out if p.strip() and t]


def fact_sentences(paths: list[Path], exclude: list[Path] = ()) -> list[str]:
    """Every fact sentence of `paths`, minus the cases (ids and subjects) of the `exclude` files."""
    ids, subjects = set(), set()
    for path in exclude:
        for r in _load(path):
            i, s = identities(r)
            if i is not None:
                ids.add(i)
            if s:
                subjects.add(s)
    mentions = re.compile("|".join(rf"\b{re.escape(s)}\b" for s in sorted(subjects))) if subjects else None
    seen, out = set(), []
    for path in paths:
        for r in _load(path):
            i, s = identities(r)
            if (i is not None and i in ids and kind(r) != "zsre") or (s and s in subjects):
                continue
            for text in sentences(r):
                if mentions is not None and mentions.search(text):
                    continue  # another record's sentence naming a held-out subject, e.g. as its target
                if text not in seen:
                    seen.add(text)
                    out.append(text)
    return out
