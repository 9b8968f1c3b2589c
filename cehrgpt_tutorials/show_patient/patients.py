"""The patient to show: a real or synthetic sequence, the days its tokens stand for, and its OMOP rows."""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import parquet_files
from cehrgpt_tutorials.omop.concepts import read_concepts
from cehrgpt_tutorials.report.inputs import find_runs
from cehrgpt_tutorials.report.timeline import visit_dates
from cehrgpt_tutorials.sequences.codes import sequences_from_lists
from cehrgpt_tutorials.sequences.facts import sequence_facts
from cehrgpt_tutorials.sequences.tokens import SEQUENCE_TOKEN_COLUMN, check_patient_sequence_schema
from cehrgpt_tutorials.sequences.vocabulary import INPATIENT_TIME, VISIT_END, Vocabulary
from cehrgpt_tutorials.show_patient.omop_rows import (
    CLINICAL_TABLES,
    Row,
    person_table,
    read_person,
    read_rows,
)

MIN_VISITS = 3  # "a patient with a few visits": enough to show the time tokens between visits
EPOCH = datetime.date(1970, 1, 1)
STEP2_TABLES = ("condition_occurrence", "drug_exposure", "procedure_occurrence")
NOT_READ_BY_STEP2 = ("measurement", "observation", "device_exposure")


@dataclass
class Patient:
    """One sequence and the OMOP rows of the same person_id."""

    person_id: int
    tokens: list[str]
    windows: list[tuple[datetime.date, datetime.date] | None]  # the days each token may stand for
    rows: list[Row]
    person: dict | None  # the OMOP person row
    title: str
    synthetic: bool
    omop: Path  # the folder of `rows`: step 1's tables, or the restored ones
    kept_concepts: set[str] | None = None  # step 2's qualified_concept_list (real patients)
    unread_tables: dict[str, int] = field(default_factory=dict)  # rows of tables step 2 does not read


def _visit_counts(tokens: pa.ChunkedArray) -> np.ndarray:
    """[VS] tokens per row of a concept_ids column."""
    column = tokens.combine_chunks()
    starts = pc.fill_null(pc.equal(pc.list_flatten(column), "[VS]"), False).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(column).to_numpy()
    return np.bincount(parents[starts], minlength=len(column))


def pick_sequence(files: list[Path], person_id: int | None, seed: int | None, pick_random: bool,
                  eligible: np.ndarray | None = None) -> dict | None:
    """The sequence of person_id; else the first (or, pick_random, a seeded random) one with
    MIN_VISITS visits or more, among the `eligible` person ids when given. None: no such sequence."""
    columns = ["person_id", SEQUENCE_TOKEN_COLUMN, "epoch_times", "dates"]
    try:
        check_patient_sequence_schema(pq.read_schema(files[0]), files[0])
        if person_id is not None:
            dataset = ds.dataset([str(path) for path in files], format="parquet")
            found = dataset.to_table(columns=[c for c in columns if c in dataset.schema.names],
                                     filter=pc.field("person_id") == person_id)
            return found.slice(0, 1).to_pylist()[0] if found.num_rows else None
        candidates = []
        for path in files:
            table = pq.read_table(path, columns=["person_id", SEQUENCE_TOKEN_COLUMN])
            chosen = _visit_counts(table[SEQUENCE_TOKEN_COLUMN]) >= MIN_VISITS
            if eligible is not None:
                chosen &= np.isin(pc.fill_null(table["person_id"], -1).to_numpy(), eligible)
            candidates += [(path, int(row)) for row in np.flatnonzero(chosen)]
            if candidates and not pick_random:
                break
        if not candidates:
            return None
        path, row = candidates[int(np.random.default_rng(seed).integers(len(candidates))) if pick_random else 0]
        present = [c for c in columns if c in pq.read_schema(path).names]
        return pq.read_table(path, columns=present).slice(row, 1).to_pylist()[0]
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot read the sequences in {files[0].parent}: {error}") from None


def sequence_windows(record: dict) -> list[tuple[datetime.date, datetime.date] | None]:
    """Each token's day from epoch_times (seconds since 1970, one per token), else its week from dates
    (cehrbert_data's date_in_week: weeks since 1970-01-01)."""
    count = len(record[SEQUENCE_TOKEN_COLUMN])
    # Step 2 runs Spark in UTC (setup_env.sh's spark.sql.session.timeZone), so a day is 86,400 s from midnight.
    if record.get("epoch_times") and len(record["epoch_times"]) == count:
        days = [None if s is None else EPOCH + datetime.timedelta(days=s // 86400) for s in record["epoch_times"]]
        return [None if day is None else (day, day) for day in days]
    if record.get("dates") and len(record["dates"]) == count:
        starts = [None if w is None else EPOCH + datetime.timedelta(weeks=w) for w in record["dates"]]
        return [None if start is None else (start, start + datetime.timedelta(days=6)) for start in starts]
    return [None] * count


def converter_windows(tokens: list[str]) -> list[tuple[datetime.date, datetime.date] | None]:
    """The day cehrgpt's converter gives each token of a visit: the visit's start (timeline.visit_dates)
    moved by the inpatient day tokens before it."""
    vocabulary = Vocabulary()
    sequences = sequences_from_lists([tokens], vocabulary)
    facts = sequence_facts(sequences, vocabulary)
    starts = visit_dates(facts)
    shift = len(tokens) - int(sequences.lengths[0])  # a leading [START] is not in `sequences`
    kind, number = vocabulary.fact("kind"), vocabulary.fact("number")
    codes = vocabulary.codes(tokens)
    windows: list = [None] * len(tokens)
    for start, position in zip(starts, facts.visit_positions, strict=True):
        if np.isnat(start):
            continue
        day = start.astype(datetime.date)
        for index in range(int(position) + shift, len(tokens)):
            if kind[codes[index]] == INPATIENT_TIME:
                day += datetime.timedelta(days=int(number[codes[index]]))
            windows[index] = (day, day)
            if kind[codes[index]] == VISIT_END:
                break
    return windows


def _chosen(files: list[Path], options: argparse.Namespace, where: str, eligible=None, uncensored=()) -> dict:
    """The sequence the options ask for, or a one-line error (naming censoring when it left the person out)."""
    record = pick_sequence(files, options.person_id, options.seed, options.random, eligible)
    if record is None and options.person_id is not None:
        if uncensored and pick_sequence(list(uncensored), options.person_id, None, False) is not None:
            raise PipelineError(f"person {options.person_id} is not in {where}: censoring left it out (its first "
                                "visit is after the censor date); generated_sequences has it")
        raise PipelineError(f"person {options.person_id} is not among the sequences in {where}")
    if record is None:
        raise PipelineError(f"no sequence with {MIN_VISITS} or more visits in {where}: pass --person-id")
    return record


def load_real(options: argparse.Namespace) -> Patient:
    sequence_dir, omop = options.sequence_dir, options.omop_dir
    if not sequence_dir.is_dir():
        raise PipelineError(f"patient sequences not found: {sequence_dir} (run step 2, or pass --sequence-dir)")
    if not (omop / "visit_occurrence").is_dir():
        raise PipelineError(f"OMOP tables not found: {omop}/visit_occurrence (run step 1, or pass --omop-dir)")
    train = sequence_dir / "train" if (sequence_dir / "train").is_dir() else sequence_dir
    # A chosen person may be held out (test/); the default and --random pick training patients.
    files = parquet_files(sequence_dir if options.person_id is not None else train)
    if not files:
        raise PipelineError(f"no Parquet files in {train}: is step 2 done?")
    record = _chosen(files, options, str(sequence_dir if options.person_id is not None else train))
    person_id = int(record["person_id"])
    held_out = (sequence_dir / "test").is_dir() and _in_folder(sequence_dir / "test", person_id)
    split, folder = ("held-out", sequence_dir / "test") if held_out else ("training", train)
    tokens = [token or "" for token in record[SEQUENCE_TOKEN_COLUMN]]
    # Step 2 writes its concept list beside patient_sequence.
    kept = person_table(sequence_dir.parent / "qualified_concept_list", None, ["standard_concept_id"])
    unread = {table: found.num_rows for table in NOT_READ_BY_STEP2
              if (found := person_table(omop / table, person_id, ["person_id"])) is not None and found.num_rows}
    dating = "epoch_times" if record.get("epoch_times") else "dates (weeks)"
    title = (f"Real patient {person_id}: {split} sequence in {folder} ({len(tokens)} tokens), beside the OMOP rows "
             f"of person {person_id} in {omop} (step 1). Token dates: the sequence's {dating} column.")
    return Patient(person_id, tokens, sequence_windows(record), read_rows(omop, person_id, STEP2_TABLES),
                   read_person(omop, person_id), title, synthetic=False, omop=omop,
                   kept_concepts=None if kept is None else {str(c) for c in kept.column(0).to_pylist()},
                   unread_tables=unread)


def _in_folder(folder: Path, person_id: int) -> bool:
    found = person_table(folder, person_id, ["person_id"])
    return found is not None and found.num_rows > 0


def load_synthetic(options: argparse.Namespace) -> Patient:
    run = find_runs(options.synthetic_dir)[0]
    censored = run.folder / "censored_sequences"
    sequence_dir = censored if parquet_files(censored) else run.sequence_dir
    restored = run.folder / "restored_omop"
    if not (restored / "person").is_dir():
        raise PipelineError(f"no restored OMOP in {restored} (run restore_synthetic.sh first)")
    files = parquet_files(sequence_dir)
    if not files:
        raise PipelineError(f"no Parquet files in {sequence_dir}: did generation finish?")
    persons = person_table(restored / "person", None, ["person_id"])
    eligible = None if persons is None or not persons.num_rows else pc.drop_null(persons["person_id"]).to_numpy()
    if options.person_id is None and eligible is not None:
        if pick_sequence(files, None, options.seed, False, eligible) is None:
            eligible = None  # no restored patient with a few visits: show an unrestored one
    uncensored = parquet_files(run.sequence_dir) if sequence_dir == censored else []
    record = _chosen(files, options, str(sequence_dir), eligible, uncensored)
    person_id = int(record["person_id"])
    tokens = [token or "" for token in record[SEQUENCE_TOKEN_COLUMN]]
    title = (f"Synthetic patient {person_id}: sequence in {sequence_dir} ({len(tokens)} tokens), beside the OMOP "
             f"rows cehrgpt's converter restored from it in {restored}. Token dates: as the converter dates "
             "them (1 January of the year token, moved by each time token).")
    return Patient(person_id, tokens, converter_windows(tokens), read_rows(restored, person_id, CLINICAL_TABLES),
                   read_person(restored, person_id), title, synthetic=True, omop=restored)


def concept_names(patient: Patient, concept_dirs: list[Path]) -> dict[str, tuple[str, str]]:
    ids = {int(token) for token in patient.tokens if token.isdigit() and len(token) < 19}
    ids |= {int(row.concept) for row in patient.rows if row.concept.isdigit() and len(row.concept) < 19}
    if patient.person:
        ids |= {int(patient.person[c]) for c in ("gender_concept_id", "race_concept_id") if patient.person.get(c)}
    concept_dir = next((folder for folder in concept_dirs if folder.is_dir()), None)
    return read_concepts(concept_dir, sorted(ids)) if concept_dir else {}
