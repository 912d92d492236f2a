"""How a prompt and its continuation become decoder tokens: ROME's convention, used by every method.

``<bos> prompt`` and ``" " + continuation`` are tokenised apart, so a continuation's tokens are
the same whatever the prompt, and scoring a continuation means scoring exactly those tokens.
Larimar's model (`LarimarModel.tokenize_continuations`, `tokenize_edits`) and the peer baselines
(`larimar.baselines.base.LMEditor.encode`) both build their sequences here, with the same
sequence-start rule, so every method is scored on the same token sequences.
"""

from __future__ import annotations


def special_ids(tok) -> tuple[int, int]:
    """(start, end) ids of a decoder tokenizer: BOS else CLS (else EOS), and EOS else SEP."""
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
    if bos is None:
        bos = eos
    if bos is None or eos is None:
        raise ValueError(f"decoder tokenizer {tok.name_or_path} has neither BOS/EOS nor CLS/SEP tokens")
    return bos, eos


def continuation_ids(tok, continuation: str) -> list[int]:
    """The tokens of ``" " + continuation`` (stripped); [] for an empty continuation."""
    text = continuation.strip()
    return tok(" " + text, add_special_tokens=False)["input_ids"] if text else []


def prompt_and_continuation(tok, bos_id: int, prompt: str, continuation: str) -> tuple[list[int], int, list[int]]:
    """(``<bos> prompt continuation`` ids, index of the first continuation token, continuation ids)."""
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    c_ids = continuation_ids(tok, continuation)
    return [bos_id, *p_ids, *c_ids], 1 + len(p_ids), c_ids
