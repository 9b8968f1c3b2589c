"""`sequence_facts`: which structural rules each patient sequence breaks (VALIDITY_RULES, checked by
cehrgpt_tutorials/sequences/grammar.py's transition table, the same one the constrained sampler masks with:
what cehrbert_data writes and cehrgpt's OMOP converter expects), and every per-sequence fact the
metrics need, in a few whole-array numpy passes."""

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


def sequence_facts(sequences: Sequences, vocabulary: Vocabulary) -> SequenceFacts:
    """Validity per rule (the grammar's table) and the distributions of every sequence, in a few
    whole-array numpy passes.

    Only the token kinds and the visit depth are computed for every token; the other facts look at
    the positions of the tokens they concern ([VS], [VE], time tokens, ...), found with searchsorted.
    """
    codes, offsets, count, lengths = sequences.codes, sequences.offsets, sequences.count, sequences.lengths
    starts, ends = offsets[:-1], offsets[1:]
    total = len(codes)
    non_empty = lengths > 0
    kind_of, number_of = vocabulary.fact("kind"), vocabulary.fact("number")
    inpatient_of, discharge_of = vocabulary.fact("inpatient_visit"), vocabulary.fact("discharge")

    sequence_index = np.repeat(np.arange(count, dtype=np.int32), lengths)  # of every token

    def sequence_of(positions: np.ndarray) -> np.ndarray:
        return sequence_index[positions]

    kind = kind_of[codes]
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
    depth_after = np.cumsum(restarted, dtype=np.int32)
    depth_before = depth_after - step

    starts_at = np.flatnonzero(is_start)
    ends_at = np.flatnonzero(is_end)
    time_at = np.flatnonzero(kind == TIME)

    def visit_of(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For tokens at `positions`: whether they are inside a visit, and whether it is inpatient."""
        if not len(starts_at):
            return np.zeros(len(positions), dtype=bool), np.zeros(len(positions), dtype=bool)
        latest = np.searchsorted(starts_at, positions, side="right") - 1
        start = np.where(latest >= 0, starts_at[np.maximum(latest, 0)], -1)
        sequence = sequence_of(positions)
        inside = (depth_before[positions] >= 1) & (start >= starts[sequence])
        type_position = np.minimum(start + 1, total - 1)
        has_type = inside & (start + 1 < ends[sequence])
        return inside, has_type & inpatient_of[codes[type_position]]

    # The structural rules: one table lookup per token (cehrgpt_tutorials/sequences/grammar.py).
    rule_masks, grammar = check_sequences(codes, offsets, vocabulary)
    problems = grammar.rule_flags(rule_masks)
    problems = {rule: problems[rule] for rule in VALIDITY_RULES}
    # SequenceFacts the metrics need: the visit type after each [VS], the discharge before an inpatient [VE].
    after_start = np.minimum(starts_at + 1, total - 1)
    _, inpatient_end = visit_of(ends_at)
    before_end = np.maximum(ends_at - 1, 0)
    discharged = ~is_first[ends_at] & discharge_of[codes[before_end]]
    valid = ~np.logical_or.reduce(list(problems.values())) if count else np.zeros(0, dtype=bool)

    def prompt_value(offset: int, values: np.ndarray, missing):
        result = np.full(count, missing, dtype=values.dtype)
        present = lengths > offset
        result[present] = values[codes[starts[present] + offset]]
        return result

    # Clinical concepts: concept ids after the prompt, except the visit type after [VS] and the
    # discharge token before the [VE] of an inpatient visit, which are structure, not clinical events.
    clinical = (kind == CONCEPT) & ~in_prompt
    clinical[after_start[~is_last[starts_at]]] = False
    clinical[before_end[inpatient_end & discharged]] = False
    clinical_at = np.flatnonzero(clinical)
    clinical_codes = codes[clinical_at]
    clinical_lengths = np.zeros(count, dtype=np.int64)
    if non_empty.any():
        clinical_lengths[non_empty] = np.add.reduceat(clinical.astype(np.int32), starts[non_empty])
    clinical_offsets = np.concatenate(([0], np.cumsum(clinical_lengths)))
    # Distinct concepts per sequence: sort (sequence, code) keys, keep the first of each run.
    size = len(vocabulary)
    keys = np.unique(np.repeat(np.arange(count, dtype=np.int64), clinical_lengths) * size + clinical_codes)

    # Day of each visit start: the converter moves its date cursor by every between-visit (D/W/M/LT) and
    # inpatient (i-D) time token, from 1 January of the year token. A malformed token moves nothing.
    is_time = (kind == TIME) | (kind == INPATIENT_TIME)
    elapsed = np.cumsum(np.where(is_time, np.nan_to_num(number_of[codes]), 0.0))
    before_sequence = np.concatenate(([0.0], elapsed))[starts]

    return SequenceFacts(
        count=count,
        lengths=lengths,
        problems=problems,
        valid=valid,
        visits=np.bincount(sequence_of(starts_at), minlength=count),
        visit_types=codes[after_start[~is_last[starts_at]]],
        days_between_visits=number_of[codes[time_at[depth_before[time_at] == 0]]],
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
        visit_sequence=sequence_of(starts_at),
        visit_days=elapsed[starts_at] - before_sequence[sequence_of(starts_at)],
    )

