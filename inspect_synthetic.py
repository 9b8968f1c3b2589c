"""Step 6 of the CEHR-XGPT tutorial: do the synthetic patients look like the real ones, are they
well formed, and did the model copy anyone? A fidelity, validity and privacy report with plots.

Reads:
  --synthetic-dir  cehrgpt's generator output: a run folder such as
                   $SYNTHETIC_DATA_OUTPUT_DIR/top_p9500 (its generated_sequences/*.parquet), or the
                   parent holding several top_* runs (each is inspected, newest first).
  --real-dir       the training sequences, cehrbert_data's patient_sequence (part files; train/ and
                   test/ subfolders when the OMOP folder had patient_splits).
  --concept-dir    the OMOP concept table (Parquet), for concept names and which ids are visit types.
  --restored-omop-dir (optional) the OMOP folder cehrgpt's converter restored from this run.
Writes, per run (default <run>/report, replaced atomically): report.json, report.md and PNG plots.

Prints the seed script's summary (number of sequences, min/max/mean length, the 5 most common tokens
after [VS], the first 50 tokens of one sequence), then one line per metric. Exit status 1 with a
one-line error when a folder is missing or empty, or when no run has a structurally valid sequence.

Example:
    python inspect_synthetic.py
    python inspect_synthetic.py --synthetic-dir omop_synthea/synthetic_data/top_p9500 \\
        --restored-omop-dir omop_synthea/synthetic_data/top_p9500/restored_omop
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from cehrgpt.models.special_tokens import VISIT_CONCEPT_IDS
from tqdm import tqdm

from cehrgpt_tutorials.common import (
    INPATIENT_VISIT_CONCEPT_IDS,
    SEQUENCE_TOKEN_COLUMN,
    PipelineError,
    atomic_directory,
    cehr_gpt_data_dir,
    check_patient_sequence_schema,
    fail,
    omop_dir,
    patient_sequence_files,
    synthetic_data_output_dir,
    time_token_problem,
)

# One line per metric: printed by --help and written into report.md, so the numbers explain themselves.
METRICS = {
    "valid_fraction": "share of synthetic sequences that pass every structural rule below "
    "(what cehrbert_data writes and cehrgpt's OMOP converter expects)",
    "prevalence_pearson_r": "Pearson r between real and synthetic concept prevalence (share of patients "
    "having each concept), over every concept seen in either set; 1 = same frequencies",
    "cooccurrence_pearson_r": "Pearson r between real and synthetic prevalence of the most frequent concept "
    "pairs (patients having both), pairs among the 50 most common concepts of each set",
    "distributions": "real vs synthetic: Kolmogorov-Smirnov statistic for numbers (sequence length, visits "
    "per patient, days between visits, age at first visit, start year, concepts per patient), "
    "Jensen-Shannon distance (base 2) for categories (visit types, gender, race); 0 = same, 1 = disjoint",
    "exact_copy_fraction": "share of synthetic sequences identical, token for token, to a real training "
    "sequence (clinical_exact_copy_fraction: the same for their clinical concepts only, in order)",
    "nn_distance_ratio": "mean Jaccard distance from a synthetic patient's concept set to its nearest real "
    "training patient, divided by the same for held-out real patients (sampled); ~1 = as far as a new "
    "real patient, near 0 = copies",
    "converted_fraction": "share of synthetic sequences that cehrgpt's converter turned into OMOP persons "
    "(from --restored-omop-dir, or the run's restored_omop/)",
}

# Structural rules: a sequence fails a rule when any of its tokens breaks it; reported per rule.
VALIDITY_RULES = {
    "demographic_prompt": "does not start with the 4 demographic tokens year:YYYY, age:N, gender, race",
    "nested_visit": "[VS] while a visit is still open",
    "unmatched_visit_end": "[VE] without an open visit",
    "missing_visit_type": "[VS] not followed by a visit type (a visit concept id or Visit/0) or [DEATH]",
    "time_token_not_between_visits": "a day/week/month/LT token inside a visit or before the first visit",
    "inpatient_time_token_outside_inpatient_visit": "an i-D/i-H token outside an inpatient visit "
    "(visit concepts 9201, 262, 8971, 8920)",
    "missing_discharge": "an inpatient visit whose [VE] is not preceded by a discharge token "
    "(Discharge/0 or a discharge concept)",
    "event_outside_visit": "a concept (or other token) between a [VE] and the next [VS]",
    "death_not_at_end": "[DEATH] anywhere but in a final [VS] [DEATH] [VE]",
    "not_ending_with_visit_end": "the last token is not [VE]",
    "malformed_time_token": "a time token cehrgpt's own parser rejects (e.g. i-D-3)",
}

DEMOGRAPHIC_PROMPT_SIZE = 4  # year, age, gender, race: the prompt cehrgpt's generator starts from
# Query sequences per side for the nearest-neighbour distances: the mean of 2,000 distances has a
# standard error well under 0.01, and they cost ~3 s of one core against 100k real references.
NN_SAMPLE_SIZE = 2_000
TOP_CONCEPTS_FOR_PAIRS = 50
TOP_PAIRS = 250
TOP_TABLE_SIZE = 20
# Concept ids cehrgpt's converter takes as "discharged to", besides any Visit-domain concept
# (cehrgpt.generation.omop_converter_batch.DISCHARGE_CONCEPT_LIST; importing it would load torch).
DISCHARGE_CONCEPT_IDS = frozenset({"4216643", "4021968", "4146681", "4161979"})
# Visit concept ids cehrgpt knows, for when the concept table is not at hand ("0" is written Visit/0).
KNOWN_VISIT_CONCEPT_IDS = frozenset(VISIT_CONCEPT_IDS) - {"0"}

# Token kinds (one small integer per distinct token, so every check is a numpy comparison).
OTHER, VISIT_START, VISIT_END, DEATH, START, YEAR, AGE, CONCEPT = range(8)
TIME, INPATIENT_TIME, MALFORMED_TIME = range(8, 11)
VISIT_PLACEHOLDER, DISCHARGE_PLACEHOLDER, GENDER_PLACEHOLDER, RACE_PLACEHOLDER = range(11, 15)
YEAR_PATTERN = re.compile(r"year:(\d{4})")
AGE_PATTERN = re.compile(r"age:(\d{1,3})")
INPATIENT_HOUR_PATTERN = re.compile(r"i-H(\d+)")
PLACEHOLDER_KINDS = {
    "Visit": VISIT_PLACEHOLDER,
    "Discharge": DISCHARGE_PLACEHOLDER,
    "Gender": GENDER_PLACEHOLDER,
    "Race": RACE_PLACEHOLDER,
}
# Between-visit D/W/M/Y<n> and LT, inpatient i-D<n>: days as cehrgpt.gpt_utils counts them.
SIMPLE_TIME_PATTERN = re.compile(r"(?:i-(?=D))?([DWMY])(\d+)|LT")
DAYS_PER_UNIT = {"D": 1, "W": 7, "M": 30, "Y": 365}


# ---------------------------------------------------------------------------------------------
# Tokens: one shared vocabulary (real and synthetic codes compare), classified once per token.
# ---------------------------------------------------------------------------------------------


class Vocabulary:
    """Every distinct token seen, numbered in order of appearance, with per-token facts as numpy arrays."""

    def __init__(self, visit_concept_ids: frozenset[str] = frozenset()):
        self.tokens: list[str] = []
        self.code_of: dict[str, int] = {}
        self.visit_concept_ids = KNOWN_VISIT_CONCEPT_IDS | visit_concept_ids
        self.discharge_concept_ids = DISCHARGE_CONCEPT_IDS | visit_concept_ids
        self._facts: dict[str, list] = {name: [] for name in self.FACTS}

    FACTS = ("kind", "number", "visit_type", "inpatient_visit", "discharge", "gender", "race")

    def __len__(self) -> int:
        return len(self.tokens)

    def codes(self, strings) -> np.ndarray:
        """The code of each string (new strings are added)."""
        codes = np.empty(len(strings), dtype=np.int32)
        for index, token in enumerate(strings):
            code = self.code_of.get(token)
            if code is None:
                code = self.code_of[token] = len(self.tokens)
                self.tokens.append(token)
                for name, value in zip(self.FACTS, self._classify(token), strict=True):
                    self._facts[name].append(value)
            codes[index] = code
        return codes

    def fact(self, name: str) -> np.ndarray:
        dtype = {"kind": np.int8, "number": np.float64}.get(name, bool)
        return np.asarray(self._facts[name], dtype=dtype)

    def _classify(self, token: str):
        """(kind, number, is visit type, is inpatient visit type, is discharge, gender-like, race-like)."""
        kind, number = OTHER, math.nan
        if token in ("[VS]", "VS"):
            kind = VISIT_START
        elif token in ("[VE]", "VE"):
            kind = VISIT_END
        elif token == "[DEATH]":
            kind = DEATH
        elif token == "[START]":
            kind = START
        elif match := YEAR_PATTERN.fullmatch(token):
            kind, number = YEAR, float(match.group(1))
        elif match := AGE_PATTERN.fullmatch(token):
            kind, number = AGE, float(match.group(1))
        elif token.isdigit():
            kind = CONCEPT
        elif token.startswith(("Visit/", "Discharge/", "Gender/", "Race/")):
            kind = PLACEHOLDER_KINDS[token.split("/", 1)[0]]
        elif token.startswith("i-H"):
            # Inpatient hour tokens: cehrgpt does not count them as time tokens, its converter reads i-H<n>.
            kind = INPATIENT_TIME if INPATIENT_HOUR_PATTERN.fullmatch(token) else MALFORMED_TIME
            number = 0.0
        elif match := SIMPLE_TIME_PATTERN.fullmatch(token):
            # The forms cehrbert_data writes, decided without importing cehrgpt (and torch, ~3 s);
            # tests/test_inspect_synthetic.py checks these verdicts against cehrgpt's parser.
            kind = INPATIENT_TIME if token.startswith("i-") else TIME
            number = 1095.0 if token == "LT" else float(int(match.group(2)) * DAYS_PER_UNIT[match.group(1)])
        elif time_token_problem(token) is not None:  # any other shape: cehrgpt's own parser decides
            kind = MALFORMED_TIME
        elif _is_time_token(token):
            kind = INPATIENT_TIME if token.startswith("i-") else TIME
            number = float(_days_of_time_token(token))
        is_concept = kind == CONCEPT
        return (
            kind,
            number,
            kind == VISIT_PLACEHOLDER or (is_concept and token in self.visit_concept_ids),
            is_concept and token in INPATIENT_VISIT_CONCEPT_IDS,
            kind == DISCHARGE_PLACEHOLDER or (is_concept and token in self.discharge_concept_ids),
            kind == GENDER_PLACEHOLDER or is_concept,
            kind == RACE_PLACEHOLDER or is_concept,
        )


def _is_time_token(token: str) -> bool:
    from cehrgpt.gpt_utils import is_att_token

    return is_att_token(token)


def _days_of_time_token(token: str) -> float:
    from cehrgpt.gpt_utils import extract_time_interval_in_days

    return extract_time_interval_in_days(token)


# ---------------------------------------------------------------------------------------------
# Reading patient sequences: concept_ids of every file as one int32 code array plus row offsets.
# ---------------------------------------------------------------------------------------------


@dataclass
class Sequences:
    """Many token sequences, flat: sequence i is codes[offsets[i]:offsets[i + 1]]."""

    codes: np.ndarray
    offsets: np.ndarray
    person_ids: np.ndarray | None = None

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def tokens(self, index: int, vocabulary: Vocabulary) -> list[str]:
        return [vocabulary.tokens[code] for code in self.codes[self.offsets[index] : self.offsets[index + 1]]]


def sequences_from_lists(token_lists: list[list[str]], vocabulary: Vocabulary) -> Sequences:
    """Sequences from Python lists of tokens (tests, small data)."""
    lengths = np.array([len(tokens) for tokens in token_lists], dtype=np.int64)
    codes = vocabulary.codes([token for tokens in token_lists for token in tokens])
    return _without_start_tokens(
        Sequences(codes, np.concatenate(([0], np.cumsum(lengths))), None), vocabulary
    )


def _token_leaf_path(parquet_file: pq.ParquetFile) -> str | None:
    for index in range(len(parquet_file.schema)):
        path = parquet_file.schema.column(index).path
        if path.startswith(SEQUENCE_TOKEN_COLUMN + "."):
            return path
    return None


def read_sequences(files: list[Path], vocabulary: Vocabulary, description: str) -> Sequences:
    """concept_ids (and person_id when present) of every file, in file order, as codes of `vocabulary`."""
    code_chunks, length_chunks, person_chunks = [], [], []
    for path in tqdm(
        files, desc=description, unit="file", leave=False, disable=True if len(files) < 5 else None
    ):
        try:
            parquet_file = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as error:
            raise PipelineError(f"cannot read {path} as Parquet: {error}") from None
        schema = parquet_file.schema_arrow
        check_patient_sequence_schema(schema, path)
        columns = [SEQUENCE_TOKEN_COLUMN] + (["person_id"] if "person_id" in schema.names else [])
        leaf = _token_leaf_path(parquet_file)
        # Spark writes concept_ids dictionary-encoded; reading it as a dictionary skips building
        # millions of Python-visible strings: we only map each file's few thousand distinct tokens.
        table = pq.read_table(path, columns=columns, read_dictionary=[leaf] if leaf else None)
        for chunk in table.column(SEQUENCE_TOKEN_COLUMN).chunks:
            lengths = pc.fill_null(pc.list_value_length(chunk), 0).to_numpy(zero_copy_only=False)
            values = pc.list_flatten(chunk)
            if not pa.types.is_dictionary(values.type) or values.null_count:
                values = pc.dictionary_encode(pc.fill_null(values.cast(pa.string()), ""))
            dictionary_codes = vocabulary.codes(values.dictionary.to_pylist())
            code_chunks.append(dictionary_codes[values.indices.to_numpy(zero_copy_only=False)])
            length_chunks.append(lengths.astype(np.int64))
        if "person_id" in columns:
            person_chunks.append(pc.fill_null(table.column("person_id"), -1).to_numpy())
    codes = np.concatenate(code_chunks) if code_chunks else np.empty(0, dtype=np.int32)
    lengths = np.concatenate(length_chunks) if length_chunks else np.empty(0, dtype=np.int64)
    persons = np.concatenate(person_chunks) if len(person_chunks) == len(files) and files else None
    sequences = Sequences(codes.astype(np.int32), np.concatenate(([0], np.cumsum(lengths))), persons)
    return _without_start_tokens(sequences, vocabulary)


def _without_start_tokens(sequences: Sequences, vocabulary: Vocabulary) -> Sequences:
    """Drop a leading [START] token, as cehrgpt's converter does, so the prompt starts at position 0."""
    code = vocabulary.code_of.get("[START]")
    lengths = sequences.lengths
    if code is None or not len(sequences.codes):
        return sequences
    non_empty = lengths > 0
    starts = sequences.offsets[:-1]
    leading = np.zeros(sequences.count, dtype=bool)
    leading[non_empty] = sequences.codes[starts[non_empty]] == code
    if not leading.any():
        return sequences
    keep = np.ones(len(sequences.codes), dtype=bool)
    keep[starts[leading]] = False
    lengths = lengths - leading
    return Sequences(sequences.codes[keep], np.concatenate(([0], np.cumsum(lengths))), sequences.person_ids)


# ---------------------------------------------------------------------------------------------
# Per-sequence facts, vectorized over all tokens at once.
# ---------------------------------------------------------------------------------------------


@dataclass
class Facts:
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


def analyse(sequences: Sequences, vocabulary: Vocabulary) -> Facts:
    """Validity per rule and the distributions of every sequence, in a few whole-array numpy passes.

    Only the token kinds and the visit depth are computed for every token; the other checks look at
    the positions of the tokens they concern ([VS], [VE], time tokens, ...), found with searchsorted.
    """
    codes, offsets, count, lengths = sequences.codes, sequences.offsets, sequences.count, sequences.lengths
    starts, ends = offsets[:-1], offsets[1:]
    total = len(codes)
    non_empty = lengths > 0
    kind_of, number_of = vocabulary.fact("kind"), vocabulary.fact("number")
    visit_type_of, inpatient_of = vocabulary.fact("visit_type"), vocabulary.fact("inpatient_visit")
    discharge_of, gender_of, race_of = (
        vocabulary.fact("discharge"),
        vocabulary.fact("gender"),
        vocabulary.fact("race"),
    )

    sequence_index = np.repeat(np.arange(count, dtype=np.int32), lengths)  # of every token

    def sequence_of(positions: np.ndarray) -> np.ndarray:
        return sequence_index[positions]

    def sequences_with(positions: np.ndarray) -> np.ndarray:
        flags = np.zeros(count, dtype=bool)
        flags[sequence_of(positions)] = True
        return flags

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
    inpatient_time_at = np.flatnonzero(kind == INPATIENT_TIME)
    death_at = np.flatnonzero(kind == DEATH)

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

    problems = {}
    prompt_ok = lengths >= DEMOGRAPHIC_PROMPT_SIZE
    for offset, check in enumerate((kind_of == YEAR, kind_of == AGE, gender_of, race_of)):
        present = lengths > offset
        prompt_ok[present] &= check[codes[starts[present] + offset]]
    problems["demographic_prompt"] = ~prompt_ok
    problems["nested_visit"] = sequences_with(starts_at[depth_before[starts_at] >= 1])
    problems["unmatched_visit_end"] = sequences_with(ends_at[depth_before[ends_at] <= 0])
    after_start = np.minimum(starts_at + 1, total - 1)
    typed = ~is_last[starts_at] & (visit_type_of[codes[after_start]] | (kind[after_start] == DEATH))
    problems["missing_visit_type"] = sequences_with(starts_at[~typed])
    ends_before_time = np.searchsorted(ends_at, time_at) - np.searchsorted(
        ends_at, starts[sequence_of(time_at)]
    )
    problems["time_token_not_between_visits"] = sequences_with(
        time_at[(depth_before[time_at] != 0) | (ends_before_time == 0)]
    )
    problems["inpatient_time_token_outside_inpatient_visit"] = sequences_with(
        inpatient_time_at[~visit_of(inpatient_time_at)[1]]
    )
    _, inpatient_end = visit_of(ends_at)
    before_end = np.maximum(ends_at - 1, 0)
    discharged = ~is_first[ends_at] & discharge_of[codes[before_end]]
    problems["missing_discharge"] = sequences_with(ends_at[inpatient_end & ~discharged])
    allowed_outside = np.zeros(256, dtype=bool)
    allowed_outside[[VISIT_START, VISIT_END, TIME, INPATIENT_TIME, MALFORMED_TIME, DEATH]] = True
    outside = (depth_before <= 0) & ~in_prompt & ~allowed_outside[kind]
    problems["event_outside_visit"] = sequences_with(np.flatnonzero(outside))
    death_ok = (
        ~is_first[death_at]
        & ~is_last[death_at]
        & (kind[np.maximum(death_at - 1, 0)] == VISIT_START)
        & (kind[np.minimum(death_at + 1, total - 1)] == VISIT_END)
        & is_last[np.minimum(death_at + 1, total - 1)]
    )
    problems["death_not_at_end"] = sequences_with(death_at[~death_ok])
    last_kind = np.full(count, -1)
    last_kind[non_empty] = kind[ends[non_empty] - 1]
    problems["not_ending_with_visit_end"] = last_kind != VISIT_END
    problems["malformed_time_token"] = sequences_with(np.flatnonzero(kind == MALFORMED_TIME))
    problems = {rule: problems[rule] for rule in VALIDITY_RULES}
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

    return Facts(
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
    )


# ---------------------------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------------------------


def pearson_r(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation, or None when it is undefined (fewer than 2 points, or a constant side)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.clip(np.corrcoef(x, y)[0, 1], -1.0, 1.0))


def ks_statistic(real: np.ndarray, synthetic: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    real = np.sort(np.asarray(real, dtype=np.float64)[~np.isnan(real)])
    synthetic = np.sort(np.asarray(synthetic, dtype=np.float64)[~np.isnan(synthetic)])
    if not len(real) or not len(synthetic):
        return None
    grid = np.concatenate((real, synthetic))
    gap = np.searchsorted(real, grid, side="right") / len(real) - np.searchsorted(
        synthetic, grid, side="right"
    ) / len(synthetic)
    return float(np.abs(gap).max())


def category_shares(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Share of each category (sorted codes) among values; negative values (missing) are left out."""
    values = values[values >= 0]
    counts = np.bincount(np.searchsorted(categories, values), minlength=len(categories)).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def js_distance(
    real: np.ndarray, synthetic: np.ndarray
) -> tuple[float | None, np.ndarray, np.ndarray, np.ndarray]:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two categorical samples of codes.

    Returns the distance, the categories (most frequent in the real data first) and both share vectors.
    """
    real, synthetic = np.asarray(real), np.asarray(synthetic)
    categories, counts = np.unique(
        np.concatenate((real[real >= 0], synthetic[synthetic >= 0])), return_counts=True
    )
    real_shares = category_shares(real, categories)
    synthetic_shares = category_shares(synthetic, categories)
    order = np.lexsort((-counts, -real_shares))
    categories, real_shares, synthetic_shares = categories[order], real_shares[order], synthetic_shares[order]
    if not real_shares.sum() or not synthetic_shares.sum():
        return None, categories, real_shares, synthetic_shares
    middle = (real_shares + synthetic_shares) / 2

    def kl(p):
        present = p > 0
        return float(np.sum(p[present] * np.log2(p[present] / middle[present])))

    divergence = max(0.0, (kl(real_shares) + kl(synthetic_shares)) / 2)
    return math.sqrt(min(divergence, 1.0)), categories, real_shares, synthetic_shares


def prevalence(facts: Facts, vocabulary_size: int) -> np.ndarray:
    """Share of patients having each concept code."""
    counts = np.bincount(facts.concept_codes, minlength=vocabulary_size).astype(np.float64)
    return counts / max(facts.count, 1)


def concept_matrix(facts: Facts, vocabulary_size: int, rows: np.ndarray | None = None):
    """Binary patient x concept matrix (scipy CSR), optionally of some rows only."""
    import scipy.sparse

    indptr = np.concatenate(([0], np.cumsum(facts.concepts_per_patient)))
    matrix = scipy.sparse.csr_matrix(
        (np.ones(len(facts.concept_codes), dtype=np.float32), facts.concept_codes, indptr),
        shape=(facts.count, vocabulary_size),
    )
    return matrix if rows is None else matrix[rows]


def most_common(shares: np.ndarray, limit: int) -> np.ndarray:
    """Codes of the `limit` largest positive shares, largest first."""
    order = np.argsort(-shares, kind="stable")[:limit]
    return order[shares[order] > 0]


def cooccurrence_r(real: Facts, synthetic: Facts, vocabulary_size: int) -> tuple[float | None, int]:
    """Pearson r of pair prevalence over the most frequent pairs of either set; also the number of pairs."""
    real_prevalence, synthetic_prevalence = (
        prevalence(real, vocabulary_size),
        prevalence(synthetic, vocabulary_size),
    )
    top = np.union1d(
        most_common(real_prevalence, TOP_CONCEPTS_FOR_PAIRS),
        most_common(synthetic_prevalence, TOP_CONCEPTS_FOR_PAIRS),
    )
    if len(top) < 2:
        return None, 0

    def pair_prevalence(facts: Facts) -> np.ndarray:
        matrix = concept_matrix(facts, vocabulary_size)[:, top]
        together = (matrix.T @ matrix).toarray() / max(facts.count, 1)
        return together[np.triu_indices(len(top), k=1)]

    real_pairs, synthetic_pairs = pair_prevalence(real), pair_prevalence(synthetic)
    chosen = np.union1d(np.argsort(-real_pairs)[:TOP_PAIRS], np.argsort(-synthetic_pairs)[:TOP_PAIRS])
    chosen = chosen[(real_pairs[chosen] > 0) | (synthetic_pairs[chosen] > 0)]
    return pearson_r(real_pairs[chosen], synthetic_pairs[chosen]), len(chosen)


def nearest_neighbour_distances(queries, reference, block: int = 512) -> np.ndarray:
    """Jaccard distance from each query row to its nearest reference row (binary CSR matrices).

    |q & r| for a block of queries against all references is one sparse x dense product; the union
    follows from the row sizes. Memory stays at references x block floats.
    """
    reference_sizes = np.asarray(reference.sum(axis=1), dtype=np.float32).ravel()
    query_sizes = np.asarray(queries.sum(axis=1), dtype=np.float32).ravel()
    nearest = np.ones(queries.shape[0], dtype=np.float64)
    if not reference.shape[0]:
        return nearest
    blocks = range(0, queries.shape[0], block)
    # Progress only on a terminal (disable=None), and only when there is more than a moment of work.
    for begin in tqdm(
        blocks,
        desc="nearest neighbours",
        unit="block",
        leave=False,
        disable=True if len(blocks) < 3 else None,
    ):
        dense_queries = np.ascontiguousarray(queries[begin : begin + block].toarray().T)
        shared = reference @ dense_queries  # references x block
        union = np.add.outer(reference_sizes, query_sizes[begin : begin + block])
        union -= shared
        np.maximum(union, 1, out=union)
        np.divide(shared, union, out=shared)
        nearest[begin : begin + block] = 1.0 - shared.max(axis=0)
    return nearest


def sample_rows(count: int, size: int, seed: int, eligible: np.ndarray | None = None) -> np.ndarray:
    candidates = np.arange(count) if eligible is None else np.flatnonzero(eligible)
    if len(candidates) <= size:
        return candidates
    return np.sort(np.random.default_rng(seed).choice(candidates, size=size, replace=False))


def copied_rows(synthetic_hashes: np.ndarray, real_hashes: np.ndarray) -> np.ndarray:
    """Per synthetic sequence, whether its fingerprint is one of the real sequences'."""
    return np.isin(synthetic_hashes, real_hashes)


# ---------------------------------------------------------------------------------------------
# Concept names and the restored OMOP folder.
# ---------------------------------------------------------------------------------------------


def read_concepts(
    concept_dir: Path | None, concept_ids: list[int] | None = None, domain: str | None = None
) -> dict[str, tuple[str, str]]:
    """concept id (as a token string) -> (name, domain) from a concept table folder, for some ids or a domain."""
    if concept_dir is None or not concept_dir.exists():
        return {}
    files = patient_sequence_files(concept_dir)
    if not files:
        return {}
    try:
        dataset = ds.dataset([str(path) for path in files], format="parquet")
        names = dataset.schema.names
        if "concept_id" not in names:
            raise PipelineError(f"{concept_dir} is not an OMOP concept table: no concept_id column")
        columns = [name for name in ("concept_id", "concept_name", "domain_id") if name in names]
        condition = None
        if concept_ids is not None:
            id_type = dataset.schema.field("concept_id").type
            condition = pc.field("concept_id").isin(pa.array(concept_ids, type=pa.int64()).cast(id_type))
        if domain is not None and "domain_id" in names:
            condition = pc.field("domain_id") == domain
        table = dataset.to_table(columns=columns, filter=condition)
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot read the concept table {concept_dir}: {error}") from None
    ids = table.column("concept_id").to_pylist()
    names_column = table.column("concept_name").to_pylist() if "concept_name" in columns else [""] * len(ids)
    domains = table.column("domain_id").to_pylist() if "domain_id" in columns else [""] * len(ids)
    return {
        str(i): (n or "", d or "")
        for i, n, d in zip(ids, names_column, domains, strict=True)
        if i is not None
    }


CONVERTED_TABLES = (
    "person",
    "visit_occurrence",
    "condition_occurrence",
    "procedure_occurrence",
    "drug_exposure",
    "measurement",
    "death",
    "observation_period",
    "condition_era",
)


def restored_omop_counts(folder: Path) -> dict[str, int | None]:
    """Rows per table of the converter's output (None: table folder absent), from Parquet metadata."""
    counts = {}
    for table in CONVERTED_TABLES:
        table_dir = folder / table
        if not table_dir.is_dir():
            counts[table] = None
            continue
        try:
            counts[table] = sum(
                pq.ParquetFile(path).metadata.num_rows for path in patient_sequence_files(table_dir)
            )
        except (OSError, pa.ArrowException) as error:
            raise PipelineError(f"cannot read {table_dir}: {error}") from None
    return counts


def converted_share(folder: Path, person_ids: np.ndarray | None, count: int, persons: int) -> float:
    """Share of the sequences that became persons: by person_id when the sequences have distinct ones
    (the pipeline runs the converter with --use_original_person_id), else persons / sequences."""
    files = patient_sequence_files(folder / "person")
    if person_ids is not None and files and len(np.unique(person_ids)) == count:
        try:
            restored = ds.dataset([str(path) for path in files], format="parquet").to_table(
                columns=["person_id"]
            )
        except (OSError, pa.ArrowException, KeyError) as error:
            raise PipelineError(f"cannot read {folder / 'person'}: {error}") from None
        restored_ids = pc.drop_null(restored.column("person_id")).to_numpy()
        return float(np.isin(person_ids, restored_ids).mean())
    return min(1.0, persons / count) if count else 0.0


# ---------------------------------------------------------------------------------------------
# Finding the runs and the real data.
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    folder: Path
    sequence_dir: Path


def find_runs(folder: Path) -> list[Run]:
    """A run folder, a generated_sequences folder, or a parent of top_* runs (newest first)."""
    if not folder.is_dir():
        raise PipelineError(
            f"synthetic data folder not found: {folder} (generate patients first, or pass --synthetic-dir)"
        )
    if (folder / "generated_sequences").is_dir():
        return [Run(folder.name, folder, folder / "generated_sequences")]
    if folder.name == "generated_sequences":
        return [Run(folder.parent.name, folder.parent, folder)]
    runs = [
        Run(
            child.name,
            child,
            child / "generated_sequences" if (child / "generated_sequences").is_dir() else child,
        )
        for child in folder.iterdir()
        if child.is_dir() and child.name.startswith("top_")
    ]
    if runs:

        def newest(run: Run) -> float:
            files = patient_sequence_files(run.sequence_dir)
            return max((path.stat().st_mtime for path in files), default=run.folder.stat().st_mtime)

        return sorted(runs, key=newest, reverse=True)
    if patient_sequence_files(folder):
        return [Run(folder.name, folder, folder)]
    raise PipelineError(
        f"no generated sequences in {folder}: expected top_*/generated_sequences/*.parquet "
        "(cehrgpt's generator output) or Parquet files"
    )


@dataclass
class RealData:
    train: Sequences
    train_facts: Facts
    heldout_facts: Facts
    reference_rows: np.ndarray  # rows of train used as the nearest-neighbour reference
    heldout_rows: np.ndarray  # rows of the held-out facts used as queries
    heldout_count: int  # real sequences the model never saw: test/, or the ones set aside
    split_note: str
    description: str


def load_real(real_dir: Path, vocabulary: Vocabulary, sample_size: int, seed: int) -> RealData:
    """The training sequences, and held-out ones: test/ when the folder has a split, else a sample set aside."""
    if not real_dir.is_dir():
        raise PipelineError(f"real patient sequences not found: {real_dir} (run step 2, or pass --real-dir)")
    train_dir, test_dir = real_dir / "train", real_dir / "test"
    has_split = train_dir.is_dir() and test_dir.is_dir() and patient_sequence_files(test_dir)
    train_files = patient_sequence_files(train_dir if has_split else real_dir)
    if not train_files:
        raise PipelineError(f"no Parquet files in {train_dir if has_split else real_dir}: is step 2 done?")
    train = read_sequences(train_files, vocabulary, "reading real sequences")
    if train.count == 0:
        raise PipelineError(f"no sequences in {real_dir}: its Parquet files have no rows")
    if has_split:
        heldout = read_sequences(patient_sequence_files(test_dir), vocabulary, "reading held-out sequences")
        train_facts, heldout_facts = analyse(train, vocabulary), analyse(heldout, vocabulary)
        reference_rows = np.arange(train.count)
        heldout_rows = sample_rows(heldout.count, sample_size, seed, heldout_facts.concepts_per_patient > 0)
        note = f"train/ ({train.count:,}) vs test/ ({heldout.count:,}) split of {real_dir}"
    else:
        train_facts = analyse(train, vocabulary)
        # No test split: set a random fifth (at most the sample size) aside as "new" real patients; the
        # nearest-neighbour reference is the rest, for both the held-out and the synthetic queries.
        size = min(sample_size, train.count // 5) if train.count >= 2 else 0
        set_aside = sample_rows(train.count, size, seed, train_facts.concepts_per_patient > 0)
        heldout_facts = train_facts
        heldout_rows = set_aside
        reference_rows = np.setdiff1d(np.arange(train.count), set_aside)
        note = (
            f"no train/test split in {real_dir}: {len(set_aside):,} random real sequences set aside as held-out, "
            f"the other {len(reference_rows):,} are the reference"
        )
    description = f"{real_dir} ({train.count:,} training sequences)"
    heldout_count = heldout_facts.count if has_split else len(heldout_rows)
    return RealData(train, train_facts, heldout_facts, reference_rows, heldout_rows, heldout_count, note, description)


# ---------------------------------------------------------------------------------------------
# One run: metrics, plots, report.
# ---------------------------------------------------------------------------------------------


def token_label(token: str, names: dict[str, tuple[str, str]], width: int = 40) -> str:
    name = names.get(token, ("", ""))[0]
    label = f"{token} {name}" if name else token
    return label if len(label) <= width else label[: width - 1] + "…"


def distribution_metrics(real: Facts, synthetic: Facts) -> dict[str, dict]:
    numbers = {
        "sequence_length": (real.lengths, synthetic.lengths),
        "visits_per_patient": (real.visits, synthetic.visits),
        "days_between_visits": (real.days_between_visits, synthetic.days_between_visits),
        "age_at_first_visit": (real.age, synthetic.age),
        "start_year": (real.start_year, synthetic.start_year),
        "concepts_per_patient": (real.concepts_per_patient, synthetic.concepts_per_patient),
    }
    result = {}
    for name, (real_values, synthetic_values) in numbers.items():
        real_values = np.asarray(real_values, dtype=np.float64)
        synthetic_values = np.asarray(synthetic_values, dtype=np.float64)
        result[name] = {
            "test": "KS",
            "distance": ks_statistic(real_values, synthetic_values),
            "real_mean": float(np.nanmean(real_values)) if np.isfinite(real_values).any() else None,
            "synthetic_mean": float(np.nanmean(synthetic_values))
            if np.isfinite(synthetic_values).any()
            else None,
        }
    for name, (real_values, synthetic_values) in {
        "visit_types": (real.visit_types, synthetic.visit_types),
        "gender": (real.gender, synthetic.gender),
        "race": (real.race, synthetic.race),
    }.items():
        distance, categories, real_shares, synthetic_shares = js_distance(real_values, synthetic_values)
        result[name] = {
            "test": "JS",
            "distance": distance,
            "categories": categories,
            "real_shares": real_shares,
            "synthetic_shares": synthetic_shares,
        }
    return result


def inspect_run(
    run: Run, real: RealData, vocabulary: Vocabulary, arguments, report_dir: Path, restored_dir: Path | None
) -> dict:
    """Print the summary and the metrics of one run, write its report; returns report.json's content."""
    files = patient_sequence_files(run.sequence_dir)
    if not files:
        raise PipelineError(f"no Parquet files in {run.sequence_dir}: did generation finish?")
    synthetic = read_sequences(files, vocabulary, f"reading {run.name}")
    if synthetic.count == 0:
        raise PipelineError(f"no sequences in {run.sequence_dir}: its Parquet files have no rows")
    facts = analyse(synthetic, vocabulary)
    tokens = vocabulary.tokens
    size = len(vocabulary)

    # Concept names and domains for every concept id in the vocabulary (one filtered read).
    numeric_ids = [int(token) for token in tokens if token.isdigit() and len(token) < 19]
    names = read_concepts(arguments.concept_dir, numeric_ids) if arguments.concept_dir else {}

    # The seed's summary.
    lengths = synthetic.lengths
    print(f"\n== {run.name}: {run.sequence_dir}")
    print(f"Number of sequences: {synthetic.count:,}")
    print(f"Sequence length: min {lengths.min()}, max {lengths.max()}, mean {lengths.mean():.1f}")
    after_start, after_counts = np.unique(facts.visit_types, return_counts=True)
    common = [
        (tokens[code], int(n))
        for code, n in sorted(zip(after_start, after_counts, strict=True), key=lambda item: -item[1])[:5]
    ]
    print(
        "Most common tokens after [VS]: "
        + (", ".join(f"{token_label(t, names)} ({n:,})" for t, n in common) or "none")
    )
    print("First 50 tokens of sequence 0: " + " ".join(synthetic.tokens(0, vocabulary)[:50]))

    # 1. Validity.
    valid_count = int(facts.valid.sum())
    invalid_reasons = {rule: int(flags.sum()) for rule, flags in facts.problems.items()}
    real_invalid = {rule: int(flags.sum()) for rule, flags in real.train_facts.problems.items()}

    # 2. Prevalence.
    real_prevalence, synthetic_prevalence = prevalence(real.train_facts, size), prevalence(facts, size)
    seen = (real_prevalence > 0) | (synthetic_prevalence > 0)
    prevalence_r = pearson_r(real_prevalence[seen], synthetic_prevalence[seen])
    top = [
        code
        for code in np.argsort(-real_prevalence, kind="stable")[:TOP_TABLE_SIZE]
        if real_prevalence[code] > 0
    ]
    top_concepts = [
        {
            "concept_id": tokens[code],
            "name": names.get(tokens[code], ("", ""))[0],
            "real_prevalence": float(real_prevalence[code]),
            "synthetic_prevalence": float(synthetic_prevalence[code]),
        }
        for code in top
    ]

    # 3. Distributions. 4. Co-occurrence.
    distributions = distribution_metrics(real.train_facts, facts)
    pairs_r, pair_count = cooccurrence_r(real.train_facts, facts, size)

    # 5. Memorization: exact copies over everything, nearest neighbours on samples.
    copies = copied_rows(facts.whole_hashes, real.train_facts.whole_hashes)
    has_clinical = facts.clinical_lengths > 0
    clinical_copies = (
        copied_rows(
            facts.clinical_hashes, real.train_facts.clinical_hashes[real.train_facts.clinical_lengths > 0]
        )
        & has_clinical
    )
    reference = concept_matrix(real.train_facts, size, real.reference_rows)
    synthetic_rows = sample_rows(
        synthetic.count, arguments.nn_sample, arguments.seed, facts.concepts_per_patient > 0
    )
    synthetic_distances = nearest_neighbour_distances(concept_matrix(facts, size, synthetic_rows), reference)
    heldout_distances = nearest_neighbour_distances(
        concept_matrix(real.heldout_facts, size, real.heldout_rows), reference
    )
    nn_ratio = None
    if len(synthetic_distances) and len(heldout_distances) and heldout_distances.mean() > 0:
        nn_ratio = float(synthetic_distances.mean() / heldout_distances.mean())

    # 6. Conversion to OMOP.
    restored = restored_omop_counts(restored_dir) if restored_dir else None
    converted_fraction = None
    if restored is not None:
        converted_fraction = converted_share(
            restored_dir, synthetic.person_ids, synthetic.count, restored["person"] or 0
        )

    report = {
        "run": run.name,
        "synthetic_dir": str(run.sequence_dir),
        "real_dir": str(arguments.real_dir),
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "num_sequences": synthetic.count,
        "heldout_real_sequences": real.heldout_count,
        "num_valid": valid_count,
        "valid_fraction": valid_count / synthetic.count,
        "invalid_reasons": invalid_reasons,
        "prevalence_pearson_r": prevalence_r,
        "cooccurrence_pearson_r": pairs_r,
        "cooccurrence_pairs": pair_count,
        "length_ks": distributions["sequence_length"]["distance"],
        "visit_type_js": distributions["visit_types"]["distance"],
        "distributions": {
            name: {
                key: value
                for key, value in metric.items()
                if key in ("test", "distance", "real_mean", "synthetic_mean")
            }
            for name, metric in distributions.items()
        },
        "exact_copy_fraction": float(copies.mean()),
        "exact_copies": int(copies.sum()),
        "clinical_exact_copy_fraction": float(clinical_copies.mean()),
        "nn_distance_ratio": nn_ratio,
        "nn": {
            "metric": "Jaccard distance on binary clinical-concept vectors",
            "synthetic_queries": len(synthetic_distances),
            "heldout_queries": len(heldout_distances),
            "reference_sequences": int(reference.shape[0]),
            "synthetic_mean_distance": float(synthetic_distances.mean())
            if len(synthetic_distances)
            else None,
            "heldout_mean_distance": float(heldout_distances.mean()) if len(heldout_distances) else None,
            "synthetic_median_distance": float(np.median(synthetic_distances))
            if len(synthetic_distances)
            else None,
            "heldout_median_distance": float(np.median(heldout_distances))
            if len(heldout_distances)
            else None,
            "synthetic_zero_distance_fraction": float((synthetic_distances == 0).mean())
            if len(synthetic_distances)
            else None,
            "heldout_zero_distance_fraction": float((heldout_distances == 0).mean())
            if len(heldout_distances)
            else None,
            "split": real.split_note,
        },
        "converted_fraction": converted_fraction,
        "restored_omop": None if restored is None else {"dir": str(restored_dir), "rows": restored},
        "top_concepts": top_concepts,
        "real": {
            "num_sequences": real.train.count,
            "valid_fraction": float(real.train_facts.valid.mean()),
            "invalid_reasons": real_invalid,
        },
        "metric_explanations": METRICS,
        "validity_rules": VALIDITY_RULES,
    }

    print_metrics(report, distributions)
    with atomic_directory(report_dir) as staging:
        plots = write_plots(
            staging,
            real_prevalence,
            synthetic_prevalence,
            seen,
            prevalence_r,
            real.train_facts,
            facts,
            distributions,
            report,
            tokens,
            names,
        )
        (staging / "report.json").write_text(json.dumps(json_ready(report), indent=2) + "\n")
        (staging / "report.md").write_text(markdown_report(report, distributions, plots, tokens, names))
    print(f"Report: {report_dir / 'report.md'}")
    return report


def json_ready(value):
    """NaN/inf -> None, numpy scalars -> Python, floats rounded to 6 digits."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_metrics(report: dict, distributions: dict) -> None:
    problems = ", ".join(
        f"{rule} {n:,}"
        for rule, n in sorted(report["invalid_reasons"].items(), key=lambda item: -item[1])
        if n
    )
    print(
        f"Structurally valid: {percent(report['valid_fraction'])} ({report['num_valid']:,} of {report['num_sequences']:,})"
        + (f"; problems: {problems}" if problems else "")
        + f" [real data: {percent(report['real']['valid_fraction'])} valid]"
    )
    print(f"Concept prevalence Pearson r: {number(report['prevalence_pearson_r'])}")
    print(
        f"Co-occurrence Pearson r ({report['cooccurrence_pairs']} frequent pairs): {number(report['cooccurrence_pearson_r'])}"
    )
    print(
        "Real vs synthetic distances: "
        + ", ".join(
            f"{name} {metric['test']} {number(metric['distance'])}" for name, metric in distributions.items()
        )
    )
    print(
        f"Exact copies of training sequences: {percent(report['exact_copy_fraction'])} "
        f"(clinical tokens only: {percent(report['clinical_exact_copy_fraction'])})"
    )
    nn = report["nn"]
    print(
        f"Nearest-neighbour distance ratio: {number(report['nn_distance_ratio'], 2)} (Jaccard, synthetic->real "
        f"{number(nn['synthetic_mean_distance'])} vs held-out->real {number(nn['heldout_mean_distance'])}; "
        f"{nn['synthetic_queries']:,} and {nn['heldout_queries']:,} sampled queries against {nn['reference_sequences']:,} real)"
    )
    if report["converted_fraction"] is not None:
        persons = report["restored_omop"]["rows"]["person"] or 0
        print(
            f"Converted to OMOP: {percent(report['converted_fraction'])} ({persons:,} persons from {report['num_sequences']:,} sequences)"
        )


# ---------------------------------------------------------------------------------------------
# Plots (matplotlib, no display) and report.md.
# ---------------------------------------------------------------------------------------------

REAL_COLOUR, SYNTHETIC_COLOUR = "#1f77b4", "#ff7f0e"


def write_plots(
    folder,
    real_prevalence,
    synthetic_prevalence,
    seen,
    prevalence_r,
    real: Facts,
    synthetic: Facts,
    distributions,
    report,
    tokens,
    names,
) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = {}

    # Prevalence scatter.
    figure, axis = plt.subplots(figsize=(6, 6))
    x, y = real_prevalence[seen], synthetic_prevalence[seen]
    axis.scatter(x, y, s=16, alpha=0.6, color=SYNTHETIC_COLOUR, edgecolors="none")
    limit = max(float(x.max(initial=0)), float(y.max(initial=0)), 0.01) * 1.05
    axis.plot([0, limit], [0, limit], color="grey", linewidth=1, linestyle="--", label="same prevalence")
    codes = np.flatnonzero(seen)
    # Name the concepts the model gets most wrong (when anything is visibly off the diagonal).
    for index in np.argsort(-np.abs(x - y))[:5]:
        if abs(x[index] - y[index]) > 0.02:
            axis.annotate(
                token_label(tokens[codes[index]], names, 28),
                (x[index], y[index]),
                fontsize=7,
                alpha=0.8,
                xytext=(4, 3),
                textcoords="offset points",
            )
    axis.set(
        xlim=(0, limit),
        ylim=(0, limit),
        xlabel="real: share of patients",
        ylabel="synthetic: share of patients",
    )
    axis.set_title(f"Concept prevalence, {seen.sum():,} concepts (Pearson r = {number(prevalence_r)})")
    axis.legend(loc="upper left")
    plots["prevalence"] = _save(figure, folder, "prevalence_scatter.png")

    # Overlaid histograms.
    numeric = [name for name, metric in distributions.items() if metric["test"] == "KS"]
    values = {
        "sequence_length": (real.lengths, synthetic.lengths),
        "visits_per_patient": (real.visits, synthetic.visits),
        "days_between_visits": (real.days_between_visits, synthetic.days_between_visits),
        "age_at_first_visit": (real.age, synthetic.age),
        "start_year": (real.start_year, synthetic.start_year),
        "concepts_per_patient": (real.concepts_per_patient, synthetic.concepts_per_patient),
    }
    figure, axes = plt.subplots(2, 3, figsize=(13, 7))
    for axis, name in zip(axes.ravel(), numeric, strict=False):
        real_values, synthetic_values = (np.asarray(v, dtype=np.float64) for v in values[name])
        real_values, synthetic_values = (
            real_values[np.isfinite(real_values)],
            synthetic_values[np.isfinite(synthetic_values)],
        )
        both = np.concatenate((real_values, synthetic_values))
        if len(both):
            low, high = np.percentile(both, [0.5, 99.5])
            high = max(high, low + 1)
            if np.all(both == np.round(both)):  # whole numbers: bins of whole widths, centred on them
                width = max(1, math.ceil((high - low) / 40))
                bins = np.arange(math.floor(low), math.ceil(high) + width + 1, width) - 0.5
            else:
                bins = np.linspace(low, high, 41)
            # Real filled, synthetic as an outline on top: both stay visible where they agree.
            # (np.histogram + stairs: one artist per histogram instead of one per bar.)
            for data, style in (
                (real_values, dict(fill=True, alpha=0.5, color=REAL_COLOUR, label="real")),
                (synthetic_values, dict(linewidth=1.6, color=SYNTHETIC_COLOUR, label="synthetic")),
            ):
                if len(data):
                    density, _ = np.histogram(np.clip(data, bins[0], bins[-1]), bins=bins, density=True)
                    axis.stairs(density, bins, **style)
        axis.set_title(
            f"{name.replace('_', ' ')} (KS {number(distributions[name]['distance'], 2)})", fontsize=10
        )
        axis.set_ylabel("density", fontsize=8)
        axis.tick_params(labelsize=8)
    axes.ravel()[0].legend(fontsize=8)
    figure.suptitle("Real vs synthetic distributions (0.5-99.5 percentile range)")
    plots["distributions"] = _save(figure, folder, "distributions.png")

    # Categorical bars: visit types; gender and race.
    def bars(axis, metric, title, limit=12):
        categories = metric["categories"][:limit]
        labels = [token_label(tokens[code], names, 30) for code in categories]
        positions = np.arange(len(categories))
        axis.barh(positions - 0.2, metric["real_shares"][:limit], height=0.4, color=REAL_COLOUR, label="real")
        axis.barh(
            positions + 0.2,
            metric["synthetic_shares"][:limit],
            height=0.4,
            color=SYNTHETIC_COLOUR,
            label="synthetic",
        )
        axis.set_yticks(positions, labels, fontsize=8)
        axis.invert_yaxis()
        axis.set_xlabel("share")
        axis.set_title(f"{title} (JS {number(metric['distance'], 2)})", fontsize=10)
        axis.legend(fontsize=8)

    figure, axis = plt.subplots(figsize=(8, 4.5))
    bars(axis, distributions["visit_types"], "Token after [VS]: visit types")
    plots["visit_types"] = _save(figure, folder, "visit_types.png")

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bars(left, distributions["gender"], "Gender (3rd token)")
    bars(right, distributions["race"], "Race (4th token)")
    plots["demographics"] = _save(figure, folder, "demographics.png")

    # Validity: share of sequences failing each rule, synthetic vs real.
    figure, axis = plt.subplots(figsize=(9, 5))
    rules = list(VALIDITY_RULES)
    positions = np.arange(len(rules))
    synthetic_share = [report["invalid_reasons"][rule] / report["num_sequences"] for rule in rules]
    real_share = [report["real"]["invalid_reasons"][rule] / report["real"]["num_sequences"] for rule in rules]
    axis.barh(positions - 0.2, real_share, height=0.4, color=REAL_COLOUR, label="real")
    axis.barh(positions + 0.2, synthetic_share, height=0.4, color=SYNTHETIC_COLOUR, label="synthetic")
    for position, rule in zip(positions, rules, strict=True):
        failing = report["invalid_reasons"][rule]
        if failing:
            axis.annotate(
                f" {failing:,}", (synthetic_share[position], position + 0.2), va="center", fontsize=7
            )
    axis.set_yticks(positions, [rule.replace("_", " ") for rule in rules], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlim(0, max(max(synthetic_share + real_share), 0.01) * 1.1)
    axis.set_xlabel("share of sequences failing the rule")
    axis.set_title(
        f"Structural validity: {percent(report['valid_fraction'])} of synthetic sequences pass every rule",
        fontsize=10,
    )
    axis.legend(fontsize=8)
    plots["validity"] = _save(figure, folder, "validity.png")
    return plots


def _save(figure, folder: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(folder / name, dpi=110)
    plt.close(figure)
    return name


def markdown_report(report: dict, distributions: dict, plots: dict[str, str], tokens, names) -> str:
    nn = report["nn"]
    lines = [
        f"# Synthetic patients: {report['run']}",
        "",
        f"Made by `inspect_synthetic.py` on {report['created']}. Synthetic: `{report['synthetic_dir']}` "
        f"({report['num_sequences']:,} sequences). Real: `{report['real_dir']}` ({report['real']['num_sequences']:,} "
        "training sequences). Every metric uses all synthetic sequences, valid or not, unless it says otherwise.",
        "",
        "## Summary",
        "",
        "| metric | value | what it measures |",
        "|---|---|---|",
        f"| valid_fraction | {percent(report['valid_fraction'])} | {METRICS['valid_fraction']} |",
        f"| prevalence_pearson_r | {number(report['prevalence_pearson_r'])} | {METRICS['prevalence_pearson_r']} |",
        f"| cooccurrence_pearson_r | {number(report['cooccurrence_pearson_r'])} | {METRICS['cooccurrence_pearson_r']} |",
        f"| length_ks | {number(report['length_ks'])} | KS statistic of sequence lengths (0 = same distribution) |",
        f"| visit_type_js | {number(report['visit_type_js'])} | Jensen-Shannon distance of visit types (0 = same) |",
        f"| exact_copy_fraction | {percent(report['exact_copy_fraction'])} | {METRICS['exact_copy_fraction']} |",
        f"| clinical_exact_copy_fraction | {percent(report['clinical_exact_copy_fraction'])} | the same, clinical concepts only |",
        f"| nn_distance_ratio | {number(report['nn_distance_ratio'], 2)} | {METRICS['nn_distance_ratio']} |",
        f"| converted_fraction | {percent(report['converted_fraction'])} | {METRICS['converted_fraction']} |",
        "",
        "## 1. Structural validity",
        "",
        f"{percent(report['valid_fraction'])} of the synthetic sequences ({report['num_valid']:,} of "
        f"{report['num_sequences']:,}) pass every rule; the real training sequences: "
        f"{percent(report['real']['valid_fraction'])}. A sequence can fail several rules.",
        "",
        "| rule | synthetic sequences failing | real sequences failing | the rule is broken by |",
        "|---|---|---|---|",
    ]
    for rule, explanation in VALIDITY_RULES.items():
        lines.append(
            f"| {rule} | {report['invalid_reasons'][rule]:,} | {report['real']['invalid_reasons'][rule]:,} | {explanation} |"
        )
    lines += [
        "",
        f"![Share of sequences failing each rule]({plots['validity']})",
        "",
        "## 2. Concept prevalence",
        "",
        f"Pearson r = {number(report['prevalence_pearson_r'])}. {METRICS['prevalence_pearson_r']}. Clinical concepts "
        "are concept ids after the demographic prompt, without the visit type after [VS] and the discharge token "
        "of inpatient visits.",
        "",
        f"![Concept prevalence, real vs synthetic]({plots['prevalence']})",
        "",
        f"The {len(report['top_concepts'])} most common concepts in the real data:",
        "",
        "| concept_id | name | real | synthetic |",
        "|---|---|---|---|",
    ]
    for row in report["top_concepts"]:
        lines.append(
            f"| {row['concept_id']} | {row['name'] or '(name unknown)'} | {percent(row['real_prevalence'])} | "
            f"{percent(row['synthetic_prevalence'])} |"
        )
    lines += [
        "",
        "## 3. Distributions",
        "",
        METRICS["distributions"] + ".",
        "",
        "| distribution | test | distance | real mean | synthetic mean |",
        "|---|---|---|---|---|",
    ]
    for name, metric in distributions.items():
        lines.append(
            f"| {name.replace('_', ' ')} | {metric['test']} | {number(metric['distance'])} | "
            f"{number(metric.get('real_mean'), 1)} | {number(metric.get('synthetic_mean'), 1)} |"
        )
    lines += [
        "",
        f"![Real vs synthetic distributions]({plots['distributions']})",
        "",
        f"![Visit types]({plots['visit_types']})",
        "",
        f"![Gender and race]({plots['demographics']})",
        "",
        "## 4. Co-occurrence",
        "",
        f"Pearson r = {number(report['cooccurrence_pearson_r'])} over {report['cooccurrence_pairs']} pairs. "
        f"{METRICS['cooccurrence_pearson_r']}; the {TOP_PAIRS} most frequent pairs of each set are compared.",
        "",
        "## 5. Memorization",
        "",
        f"- Exact copies: {report['exact_copies']:,} synthetic sequences ({percent(report['exact_copy_fraction'])}) "
        f"are identical to a real training sequence; {percent(report['clinical_exact_copy_fraction'])} repeat the "
        "clinical concepts of one, in order. Every synthetic sequence is compared with every training sequence, through a 64-bit fingerprint of each sequence.",
        f"- Nearest neighbours: ratio {number(report['nn_distance_ratio'], 2)}. Mean Jaccard distance to the nearest "
        f"real patient: synthetic {number(nn['synthetic_mean_distance'])} (median {number(nn['synthetic_median_distance'])}, "
        f"{percent(nn['synthetic_zero_distance_fraction'])} at distance 0), held-out real "
        f"{number(nn['heldout_mean_distance'])} (median {number(nn['heldout_median_distance'])}, "
        f"{percent(nn['heldout_zero_distance_fraction'])} at distance 0). To stay fast at 100k x 100k it uses samples: "
        f"{nn['synthetic_queries']:,} synthetic and {nn['heldout_queries']:,} held-out query sequences (patients with "
        f"at least one concept) against {nn['reference_sequences']:,} real reference sequences, as sparse matrix "
        f"products. Split: {nn['split']}.",
        "",
        "## 6. Conversion to OMOP",
        "",
    ]
    if report["restored_omop"] is None:
        lines.append(
            "Not measured: no restored OMOP folder (the run's restored_omop/ or `--restored-omop-dir`, the folder cehrgpt's converter wrote)."
        )
    else:
        rows = report["restored_omop"]["rows"]
        lines += [
            f"{percent(report['converted_fraction'])} of the sequences became persons in `{report['restored_omop']['dir']}`.",
            "",
            "| table | rows |",
            "|---|---|",
        ]
        lines += [
            f"| {table} | {'(no folder)' if count is None else f'{count:,}'} |"
            for table, count in rows.items()
        ]
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def parse_arguments(argv=None):
    epilog = "Metrics:\n" + "\n".join(f"  {name}: {text}" for name, text in METRICS.items())
    epilog += "\n\nValidity rules (a sequence is valid when it breaks none):\n"
    epilog += "\n".join(f"  {rule}: {text}" for rule, text in VALIDITY_RULES.items())
    parser = argparse.ArgumentParser(
        description="Fidelity, validity and privacy report on cehrgpt's synthetic patient sequences.",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--synthetic-dir",
        type=Path,
        default=None,
        help="a run folder (top_p9500), its generated_sequences folder, or the parent of several top_* runs "
        "(default: $SYNTHETIC_DATA_OUTPUT_DIR)",
    )
    parser.add_argument(
        "--run",
        default=None,
        help="inspect only the run with this name (e.g. top_p9500) under --synthetic-dir",
    )
    parser.add_argument(
        "--real-dir",
        type=Path,
        default=None,
        help="real patient_sequence folder (default: $CEHR_GPT_DATA_DIR/patient_sequence)",
    )
    parser.add_argument(
        "--concept-dir",
        type=Path,
        default=None,
        help="OMOP concept table folder, for names (default: $OMOP_DIR/concept)",
    )
    parser.add_argument(
        "--restored-omop-dir",
        type=Path,
        default=None,
        help="OMOP folder cehrgpt's converter restored from the run (default: <run>/restored_omop when it exists)",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=None,
        help="where to write the report (default: <run>/report; with several runs, <report-dir>/<run>)",
    )
    parser.add_argument(
        "--nn-sample",
        type=int,
        default=NN_SAMPLE_SIZE,
        help="query sequences per side for the nearest-neighbour distances (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the samples (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    arguments = parse_arguments(argv)
    concept_dir_given = arguments.concept_dir is not None
    arguments.synthetic_dir = arguments.synthetic_dir or synthetic_data_output_dir()
    arguments.real_dir = arguments.real_dir or cehr_gpt_data_dir() / "patient_sequence"
    arguments.concept_dir = arguments.concept_dir or omop_dir() / "concept"
    if arguments.nn_sample < 1:
        fail("--nn-sample must be at least 1")
    try:
        if not arguments.concept_dir.is_dir() or not patient_sequence_files(arguments.concept_dir):
            if concept_dir_given:
                raise PipelineError(
                    f"concept table not found: {arguments.concept_dir} (no Parquet files there)"
                )
            print(f"note: no concept table at {arguments.concept_dir}: concepts are shown by id only")
            arguments.concept_dir = None
        if arguments.restored_omop_dir is not None and not arguments.restored_omop_dir.is_dir():
            raise PipelineError(f"restored OMOP folder not found: {arguments.restored_omop_dir}")
        runs = find_runs(arguments.synthetic_dir)
        if arguments.run is not None:
            named = [run for run in runs if run.name == arguments.run]
            if not named:
                raise PipelineError(
                    f"no run named {arguments.run} in {arguments.synthetic_dir} (runs: {', '.join(r.name for r in runs)})"
                )
            runs = named
        visit_concepts = read_concepts(arguments.concept_dir, domain="Visit") if arguments.concept_dir else {}
        vocabulary = Vocabulary(
            frozenset(concept for concept, (_, domain) in visit_concepts.items() if domain == "Visit")
        )
        real = load_real(arguments.real_dir, vocabulary, arguments.nn_sample, arguments.seed)
        print(
            f"Real sequences: {real.description}; {percent(float(real.train_facts.valid.mean()))} structurally valid"
        )
    except PipelineError as error:
        fail(str(error))

    failures, reports = [], []
    for index, run in enumerate(runs):
        if arguments.report_dir is None:
            report_dir = run.folder / "report"
        else:
            report_dir = arguments.report_dir if len(runs) == 1 else arguments.report_dir / run.name
        # A restored folder belongs to one run: the one named applies to the newest run; otherwise a
        # run's own restored_omop/ (where the tutorial's omop_pipeline.sh step writes it) is used.
        restored = arguments.restored_omop_dir if index == 0 else None
        if arguments.restored_omop_dir is None and (run.folder / "restored_omop" / "person").is_dir():
            restored = run.folder / "restored_omop"
        try:
            report = inspect_run(run, real, vocabulary, arguments, report_dir, restored)
        except PipelineError as error:
            failures.append(f"{run.name}: {error}")
            print(f"\n== {run.name}: skipped: {error}")
            continue
        reports.append(report)
        if report["num_valid"] == 0:
            worst = max(report["invalid_reasons"].items(), key=lambda item: item[1])
            failures.append(
                f"{run.name}: no structurally valid sequence (0 of {report['num_sequences']:,}; most common problem: "
                f"{worst[0]}, {worst[1]:,} sequences; report in {report_dir})"
            )
    if len(runs) > 1:
        print(
            f"\nInspected {len(reports)} of {len(runs)} runs (newest first): {', '.join(run.name for run in runs)}"
        )
    usable = [report for report in reports if report["num_valid"] > 0]
    if not usable:
        fail("; ".join(failures) if failures else "nothing to inspect")
    for failure in failures:
        print(f"warning: {failure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
