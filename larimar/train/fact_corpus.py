"""Fact-style training text from the editing benchmarks' own files (CounterFact, zsRE).

The paper trains on WikiText only. A small decoder on a CPU budget learns far faster to read a
short fact back out of its latent when it also sees short fact sentences: "<prompt> <target>",
the shape of every edit it will be asked to recall. A model trained with this text must say so
in its name (e.g. ``larimar-smol-facts``) and be reported beside the WikiText-only variant.

Evaluation cases must stay unseen: every case of the files named in ``exclude`` is dropped by
case id (CounterFact) and by subject (both benchmarks), and so is any sentence that names one of
their subjects, so a dev-set metric is a held-out one.

Edits per record (`edit_records`, the "write one text, answer another" objective): the prompt,
the target, the subject, and every other prompt of the same fact that must give the target:
- CounterFact canonical: the rewrite prompt and target_new; paraphrase and generation prompts.
- CounterFact flattened: prompt and target_new; its rephrase_prompt (a generation prompt or a paraphrase).
- KnowEdit (ZsRE, WikiData_counterfact): prompt and target_new; rephrase_prompt and the
  ``generate_prompt`` paraphrases (their "1. " numbering stripped).
- zsRE (MEND): src and answers[0]; rephrase.

Sentences per record:
- CounterFact (ROME format or EasyEdit's flattened format): the rewrite prompt with the new
  target and with the true target, and the neighbourhood / locality prompt with its true target.
- zsRE (MEND format): the question and its rephrase, each followed by ``answers[0]``.
"""

from __future__ import annotations

import json
import random
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


_NUMBERING = re.compile(r"^\s*\d+[.)]\s+")


def kind(record: dict) -> str:
    """The record's benchmark format, by the evaluation loader's own detection."""
    from larimar.benchmarks import detect_format  # larimar.evaluation imports larimar.train.data, which imports us

    try:
        return {"counterfact-canonical": "counterfact", "counterfact-flat": "counterfact_flat"}.get(
            fmt := detect_format(record), fmt
        )
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


def edit(record: dict) -> dict | None:
    """{prompt, target, subject, queries} of a record (queries: the other prompts of the same fact)."""
    k = kind(record)
    if k == "counterfact":
        rw = record["requested_rewrite"]
        prompt, target, subject = rw["prompt"].format(rw["subject"]), _target(rw["target_new"]), rw["subject"]
        queries = list(record.get("paraphrase_prompts", [])) + list(record.get("generation_prompts", []))
    elif k == "counterfact_flat":
        prompt, target, subject = record["prompt"], _target(record["target_new"]), record.get("subject")
        queries = [record["rephrase_prompt"]] if record.get("rephrase_prompt") else []
    elif k == "knowedit":
        prompt, target, subject = record["prompt"], _target(record["target_new"]), record.get("subject")
        queries = ([record["rephrase_prompt"]] if record.get("rephrase_prompt") else []) + [
            _NUMBERING.sub("", q) for q in record.get("generate_prompt", [])
        ]
    else:
        prompt, target, subject = record["src"], str(record["answers"][0]).strip(), record.get("subject")
        queries = [record["rephrase"]] if record.get("rephrase") else []
    prompt = prompt.strip()
    if not prompt or not target:
        return None
    queries = [q.strip() for q in dict.fromkeys(queries) if q.strip() and q.strip() != prompt]
    return {"prompt": prompt, "target": target, "subject": (subject or "").strip(), "queries": queries}


def _exclusions(exclude: list[Path], subjects: list[str]) -> tuple[set[str], set[str], re.Pattern | None]:
    """Case ids and subjects of the `exclude` files plus `subjects`, and a pattern naming any of them."""
    ids, names = set(), {s.strip() for s in subjects if s.strip()}
    for path in exclude:
        for r in _load(path):
            i, s = identities(r)
            if i is not None:
                ids.add(i)
            if s:
                names.add(s)
    mentions = re.compile("|".join(rf"\b{re.escape(s)}\b" for s in sorted(names))) if names else None
    return ids, names, mentions


def _kept_records(paths: list[Path], ids: set[str], names: set[str]):
    """The records of `paths` that are neither an excluded case (by id; zsRE and KnowEdit ids are
    only positions) nor about an excluded subject."""
    for path in paths:
        for r in _load(path):
            i, s = identities(r)
            if not ((i is not None and i in ids and kind(r) not in ("zsre", "knowedit")) or (s and s in names)):
                yield r


def edit_records(paths: list[Path], exclude: list[Path] = (), exclude_subjects: list[str] = ()) -> list[dict]:
    """Every edit of `paths` (see `edit`), minus the cases, subjects and mentions of the exclusions;
    a query naming an excluded subject is dropped, and so is an edit whose own text names one."""
    ids, names, mentions = _exclusions(list(exclude), list(exclude_subjects))
    seen, out = set(), []
    for r in _kept_records(paths, ids, names):
        e = edit(r)
        if e is None or (mentions is not None and mentions.search(f"{e['prompt']} {e['target']}")):
            continue
        if mentions is not None:
            e["queries"] = [q for q in e["queries"] if not mentions.search(q)]
        if (e["prompt"], e["target"]) not in seen:
            seen.add((e["prompt"], e["target"]))
            out.append(e)
    return out


def edit_rows(edits: list[dict], queries_per_edit: int, seed: int | None) -> list[dict]:
    """Training rows {text, key, query, target}: per edit, its own prompt once and up to
    `queries_per_edit` of its other prompts (a seeded sample), each a row of its own."""
    rng = random.Random(seed)
    rows = []
    for e in edits:
        queries = list(e["queries"])
        if seed is not None:
            rng.shuffle(queries)
        for q in [e["prompt"], *queries[:queries_per_edit]]:
            rows.append({"text": f"{e['prompt']} {e['target']}", "key": e["prompt"], "query": q, "target": e["target"]})
    return rows


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
    elif k == "knowedit":
        out += [(record["prompt"], _target(record["target_new"]))]
    else:
        answer = str(record["answers"][0]).strip()
        out += [(record["src"], answer)] + ([(record["rephrase"], answer)] if record.get("rephrase") else [])
    return [f"{p.strip()} {t}" for p, t in out if p.strip() and t]


def fact_sentences(paths: list[Path], exclude: list[Path] = (), exclude_subjects: list[str] = ()) -> list[str]:
    """Every fact sentence of `paths`, minus the cases (ids and subjects) of the `exclude` files."""
    ids, subjects, mentions = _exclusions(list(exclude), list(exclude_subjects))
    seen, out = set(), []
    for r in _kept_records(paths, ids, subjects):
        for text in sentences(r):
            if mentions is not None and mentions.search(text):
                continue  # another record's sentence naming a held-out subject, e.g. as its target
            if text not in seen:
                seen.add(text)
                out.append(text)
    return out
