"""`sequence_facts`: which structural rules each patient sequence breaks (VALIDITY_RULES, checked by
grammar.py's table, the one the constrained sampler masks with, so "valid" means the same to both) and
every per-sequence fact the report's metrics need, in whole-array numpy passes over all sequences at
once (no Python loop per token), since the report runs it on 100k real and 100k synthetic sequences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cehrgpt_tutorials.sequences.codes import Sequences
from cehrgpt_tutorials.sequences.grammar import VALIDITY_RULES, check_sequences
from cehrgpt_tutorials.sequences.vocabulary import (
    AGE,
    CONCEPT,
    DEMOGRAPHIC_PROMPT_SIZE,
    INPATIENT_TIME,
    TIME,
    VISIT_END,
    VISIT_START,
    YEAR,
    Vocabulary,
)


@dataclass
class SequenceFacts:
    """What every metric needs from one set of sequences."""

    count: int
    lengths: np.ndarray
    problems: dict[str, np.ndarray]  # rule -> per-sequence bool
    valid: np.ndarray
    visits: np.ndarray  # [VS] per sequence
    visit_types: np.ndarray  # codes of the tokens right after each [VS]
    days_between_visits: np.ndarray
    age: np.ndarray  # age at first visit (nan when the prompt has none)
    start_year: np.ndarray
    gender: np.ndarray  # code, -1 when missing
    race: np.ndarray
    concept_codes: np.ndarray  # distinct clinical concepts of each sequence, sequence after sequence
    concepts_per_patient: np.ndarray
    whole_hashes: np.ndarray  # a 64-bit fingerprint per sequence (see sequence_hashes)
    clinical_hashes: np.ndarray  # the same over the clinical concepts only
    # Every [VS]: its token position, its sequence, and its day as cehrgpt's converter dates it (days
    # since 1 January of the sequence's year token: the sum of the time tokens before it).
    visit_positions: np.ndarray
    visit_sequence: np.ndarray
    visit_days: np.ndarray
    clinical_lengths: np.ndarray


def sequence_hashes(codes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """One 64-bit fingerprint per sequence: a polynomial hash of its codes mixed with its length and
    code sum (all mod 2**64). Different sequences share one with a ~2**-64 chance, so comparing 100k
    synthetic with 100k real sequences is one np.isin over 100k numbers.
    """
    lengths = np.diff(offsets)
    result = lengths.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
    non_empty = lengths > 0
    if not non_empty.any():
        return result
    positions = np.arange(len(codes), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    values = codes.astype(np.uint64) + np.uint64(1)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(int(lengths.max()), np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64))
        result[non_empty] += np.add.reduceat(values * powers[positions], offsets[:-1][non_empty])
        result[non_empty] += np.add.reduceat(values, offsets[:-1][non_empty]) * np.uint64(0xA0761D6478BD642F)
    return result


@dataclass(frozen=True)
class _TokenLayout:
    """Where things are in the flat token array: what several facts share, computed once."""

    codes: np.ndarray
    starts: np.ndarray  # first token of each sequence
    ends: np.ndarray  # one past its last token
    kind: np.ndarray  # per token: its kind (vocabulary.fact("kind"))
    sequence_index: np.ndarray  # per token: its sequence
    is_first: np.ndarray  # per token: first of a non-empty sequence
    is_last: np.ndarray
    in_prompt: np.ndarray  # per token: one of the demographic prompt's positions
    depth_before: np.ndarray  # per token: visits open before it
    starts_at: np.ndarray  # positions of every [VS]
    ends_at: np.ndarray  # positions of every [VE]


def _token_layout(sequences: Sequences, vocabulary: Vocabulary) -> _TokenLayout:
    codes, offsets, lengths = sequences.codes, sequences.offsets, sequences.lengths
    starts, ends = offsets[:-1], offsets[1:]
    total, non_empty = len(codes), lengths > 0
    kind = vocabulary.fact("kind")[codes]
    is_start, is_end = kind == VISIT_START, kind == VISIT_END
    is_first = np.zeros(total, dtype=bool)
    is_first[starts[non_empty]] = True
    is_last = np.zeros(total, dtype=bool)
    is_last[ends[non_empty] - 1] = True
    in_prompt = np.zeros(total, dtype=bool)
    for offset in range(DEMOGRAPHIC_PROMPT_SIZE):
        in_prompt[(starts + offset)[lengths > offset]] = True
    # Visit depth before each token: +1 after [VS], -1 after [VE], restarting at 0 in every sequence
    # (one cumsum: the first step of a sequence also takes back what the previous sequence left).
    step = is_start.astype(np.int32) - is_end.astype(np.int32)
    restarted = step.copy()
    first_steps = starts[non_empty]
    if len(first_steps) > 1:
        restarted[first_steps[1:]] -= np.add.reduceat(step, first_steps)[:-1]
    depth_before = np.cumsum(restarted, dtype=np.int32) - step
    return _TokenLayout(
        codes=codes, starts=starts, ends=ends, kind=kind,
        sequence_index=np.repeat(np.arange(sequences.count, dtype=np.int32), lengths),
        is_first=is_first, is_last=is_last, in_prompt=in_prompt, depth_before=depth_before,
        starts_at=np.flatnonzero(is_start), ends_at=np.flatnonzero(is_end),
    )  # fmt: skip


def _in_inpatient_visit(layout: _TokenLayout, positions: np.ndarray, inpatient_of: np.ndarray) -> np.ndarray:
    """For tokens at `positions`: inside a visit whose type (the token after its [VS]) is inpatient."""
    starts_at, total = layout.starts_at, len(layout.codes)
    if not len(starts_at):
        return np.zeros(len(positions), dtype=bool)
    latest = np.searchsorted(starts_at, positions, side="right") - 1
    start = np.where(latest >= 0, starts_at[np.maximum(latest, 0)], -1)
    sequence = layout.sequence_index[positions]
    inside = (layout.depth_before[positions] >= 1) & (start >= layout.starts[sequence])
    type_position = np.minimum(start + 1, total - 1)
    has_type = inside & (start + 1 < layout.ends[sequence])
    return has_type & inpatient_of[layout.codes[type_position]]


def _clinical_tokens(layout: _TokenLayout, vocabulary: Vocabulary) -> np.ndarray:
    """Per token: a clinical concept, i.e. a concept id after the prompt, except the visit type after
    [VS] and the discharge token before the [VE] of an inpatient visit (structure, not clinical events)."""
    codes, starts_at, ends_at = layout.codes, layout.starts_at, layout.ends_at
    after_start = np.minimum(starts_at + 1, len(codes) - 1)
    before_end = np.maximum(ends_at - 1, 0)
    inpatient_end = _in_inpatient_visit(layout, ends_at, vocabulary.fact("inpatient_visit"))
    discharged = ~layout.is_first[ends_at] & vocabulary.fact("discharge")[codes[before_end]]
    clinical = (layout.kind == CONCEPT) & ~layout.in_prompt
    clinical[after_start[~layout.is_last[starts_at]]] = False
    clinical[before_end[inpatient_end & discharged]] = False
    return clinical


def _visit_days(layout: _TokenLayout, number_of: np.ndarray) -> np.ndarray:
    """Day of each visit start as the converter dates it: its date cursor moves by every between-visit
    (D/W/M/LT) and inpatient (i-D) time token, from 1 January of the year token. A malformed token
    moves nothing."""
    is_time = (layout.kind == TIME) | (layout.kind == INPATIENT_TIME)
    elapsed = np.cumsum(np.where(is_time, np.nan_to_num(number_of[layout.codes]), 0.0))
    before_sequence = np.concatenate(([0.0], elapsed))[layout.starts]
    return elapsed[layout.starts_at] - before_sequence[layout.sequence_index[layout.starts_at]]


def sequence_facts(sequences: Sequences, vocabulary: Vocabulary) -> SequenceFacts:
    """Validity per rule (the grammar's table) and the distributions of every sequence, in a few
    whole-array numpy passes.

    Only the token kinds and the visit depth are computed for every token; the other facts look at
    the positions of the tokens they concern ([VS], [VE], time tokens, ...).
    """
    codes, offsets, count, lengths = sequences.codes, sequences.offsets, sequences.count, sequences.lengths
    layout = _token_layout(sequences, vocabulary)
    kind_of, number_of = vocabulary.fact("kind"), vocabulary.fact("number")
    size = len(vocabulary)

    # The structural rules: one table lookup per token (cehrgpt_tutorials/sequences/grammar.py).
    rule_masks, grammar = check_sequences(codes, offsets, vocabulary)
    problems = grammar.rule_flags(rule_masks)
    problems = {rule: problems[rule] for rule in VALIDITY_RULES}
    valid = ~np.logical_or.reduce(list(problems.values())) if count else np.zeros(0, dtype=bool)

    def prompt_value(offset: int, values: np.ndarray, missing):
        result = np.full(count, missing, dtype=values.dtype)
        present = lengths > offset
        result[present] = values[codes[layout.starts[present] + offset]]
        return result

    clinical = _clinical_tokens(layout, vocabulary)
    clinical_codes = codes[clinical]
    clinical_lengths = np.zeros(count, dtype=np.int64)
    non_empty = lengths > 0
    if non_empty.any():
        clinical_lengths[non_empty] = np.add.reduceat(clinical.astype(np.int32), layout.starts[non_empty])
    clinical_offsets = np.concatenate(([0], np.cumsum(clinical_lengths)))
    # Distinct concepts per sequence: sort (sequence, code) keys, keep the first of each run.
    keys = np.unique(np.repeat(np.arange(count, dtype=np.int64), clinical_lengths) * size + clinical_codes)
    starts_at, time_at = layout.starts_at, np.flatnonzero(layout.kind == TIME)
    after_start = np.minimum(starts_at + 1, len(codes) - 1)

    return SequenceFacts(
        count=count,
        lengths=lengths,
        problems=problems,
        valid=valid,
        visits=np.bincount(layout.sequence_index[starts_at], minlength=count),
        visit_types=codes[after_start[~layout.is_last[starts_at]]],
        days_between_visits=number_of[codes[time_at[layout.depth_before[time_at] == 0]]],
        age=prompt_value(1, np.where(kind_of == AGE, number_of, np.nan), np.nan),
        start_year=prompt_value(0, np.where(kind_of == YEAR, number_of, np.nan), np.nan),
        gender=prompt_value(2, np.arange(size, dtype=np.int64), -1),
        race=prompt_value(3, np.arange(size, dtype=np.int64), -1),
        concept_codes=(keys % size).astype(np.int32),
        concepts_per_patient=np.bincount(keys // size, minlength=count),
        whole_hashes=sequence_hashes(codes, offsets),
        clinical_hashes=sequence_hashes(clinical_codes, clinical_offsets),
        clinical_lengths=clinical_lengths,
        visit_positions=starts_at,
        visit_sequence=layout.sequence_index[starts_at],
        visit_days=_visit_days(layout, number_of),
    )
