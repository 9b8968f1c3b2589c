"""Each cohort row's patient sequence, cut strictly before its index date: step 7's examples.

A cohort of a large CDM has hundreds of thousands of rows, so the examples are capped first: at most
`max_examples[split]` rows of each split are kept, drawn with a seed and stratified by outcome (the
same rows for every method). Only the kept persons' sequences are read, and they are cut with
column-wise Arrow and numpy work on the flattened token lists: no patient becomes Python objects,
so memory follows the caps, not the cohort.

The cut (history_end for one patient): at the first token dated on or after the index date, then
back to the last [VE] before it, so a history is whole visits, with nothing on or after the index date.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import parquet_files
from cehrgpt_tutorials.sequences.split import DEFAULT_TEST_FRACTION, is_test_person
from cehrgpt_tutorials.sequences.tokens import (
    SEQUENCE_TOKEN_COLUMN,
    VISIT_END_TOKEN,
    VISIT_START_TOKEN,
    is_list_type,
)

SPLITS = ("train", "test")
SECONDS_PER_DAY = 86_400
CAP_SEED = 0  # the draw of capped examples: fixed, so every method and every run gets the same rows


@dataclass
class Histories:
    """The labelled examples of each split, as pyarrow tables in cehrgpt's cohort input format."""

    train: object  # pyarrow.Table
    test: object
    no_sequence: int  # cohort rows whose person has no patient sequence
    no_history: int  # cohort rows with no complete visit before the index date
    split_source: str  # where the split came from, for the report
    # Per split, when a cap bound: {"cap": N, "cohort_rows": rows of that split before the draw}.
    capped: dict = field(default_factory=dict)
    # The cohort rows the caps kept, and those without a sequence (never drawn): what the report counts.
    considered_rows: np.ndarray = field(default_factory=lambda: np.arange(0))


def _new_column_types():
    import pyarrow as pa

    return {"person_id": pa.int64(), "index_date": pa.timestamp("us"), "label": pa.int64(), "age": pa.int64(),
            "num_of_concepts": pa.int64(), "num_of_visits": pa.int64()}


def index_seconds(day: datetime.date) -> float:
    """Midnight UTC of the index date in POSIX seconds, the clock of cehrbert_data's epoch_times."""
    return datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.timezone.utc).timestamp()


def history_end(tokens, epoch_times, index_seconds: float) -> int:
    """How many leading tokens of one sequence form its history strictly before the index time (0 = none)."""
    epoch_times = np.asarray(epoch_times)
    late = np.flatnonzero(epoch_times >= index_seconds)
    cut = int(late[0]) if len(late) else len(epoch_times)
    visit_ends = [i for i in range(cut) if tokens[i] == VISIT_END_TOKEN]
    return visit_ends[-1] + 1 if visit_ends else 0


# ---------------------------------------------------------------------------------------------
# Reading: which split each person is in, then only the kept persons' sequences
# ---------------------------------------------------------------------------------------------


def sequence_parts(folder: Path) -> tuple[list[tuple[str, list[Path]]], bool]:
    """[(split, its Parquet files)]: train/ and test/ when step 2 split the folder, else ("", all files)."""
    folder = Path(folder)
    parts = [(name, folder / name) for name in SPLITS if (folder / name).is_dir()]
    split_by_folders = len(parts) == 2
    if not split_by_folders:
        parts = [("", folder)]
    found = []
    for split, path in parts:
        files = parquet_files(path)
        if not files:
            raise PipelineError(f"no patient sequences (.parquet) under {path}: run step 2 or pass --patient-sequence-dir")
        found.append((split, files))
    return found, split_by_folders


def split_source_of(folder: Path, split_by_folders: bool, test_fraction: float) -> str:
    return (f"{folder}/train and /test (step 2's split)" if split_by_folders else
            f"is_test_person(person_id, {test_fraction}) on {folder} (no train/ and test/ there: the model "
            "may have been trained on every patient)")


def person_splits(folder: Path, test_fraction: float = DEFAULT_TEST_FRACTION) -> tuple[dict[int, str], str]:
    """{person_id: "train" | "test"} for every person with a sequence (only person_id is read), and
    where the split came from."""
    import pyarrow.dataset as ds

    parts, split_by_folders = sequence_parts(folder)
    splits: dict[int, str] = {}
    for split, files in parts:
        persons = ds.dataset([str(f) for f in files], format="parquet").to_table(columns=["person_id"])
        ids = persons.column("person_id").to_numpy().astype(np.int64)
        if split:
            splits.update(dict.fromkeys(ids.tolist(), split))
        else:
            test = is_test_person(ids, test_fraction)
            splits.update(zip(ids.tolist(), np.where(test, "test", "train").tolist(), strict=True))
    return splits, split_source_of(Path(folder), split_by_folders, test_fraction)


def read_patient_sequences(folder: Path, person_ids, test_fraction: float = DEFAULT_TEST_FRACTION):
    """The patient sequences of person_ids, with a 'split' column ("train"/"test"), and where the split came from.

    With step 2's held-out split the folder has train/ and test/ and those decide; a folder without
    them (made before the split existed) is split with the same function step 2 uses.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    wanted = pa.array(sorted({int(p) for p in person_ids}), pa.int64())
    parts, split_by_folders = sequence_parts(folder)
    tables = []
    for split, files in parts:
        dataset = ds.dataset([str(f) for f in files], format="parquet")
        if SEQUENCE_TOKEN_COLUMN not in dataset.schema.names or "epoch_times" not in dataset.schema.names:
            raise PipelineError(f"{files[0].parent} is not cehrbert_data's patient_sequence (no concept_ids/epoch_times "
                                "columns)")
        table = dataset.to_table(filter=pc.field("person_id").cast(pa.int64()).isin(wanted))
        if "split" in table.column_names:  # cehrbert_data writes the split into the rows too; ours decides
            table = table.drop_columns(["split"])
        if split:
            table = table.append_column("split", pa.array([split] * table.num_rows, pa.string()))
        else:
            test = is_test_person(table.column("person_id").to_numpy().astype(np.int64), test_fraction)
            table = table.append_column("split", pa.array(np.where(test, "test", "train"), pa.string()))
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default"), split_source_of(Path(folder), split_by_folders,
                                                                                test_fraction)


def capped_rows(labels: np.ndarray, cap: int, seed: int = CAP_SEED) -> np.ndarray:
    """Sorted row indices of at most `cap` rows, positives and negatives each kept at the same rate
    (the share of positives is kept, to one row); all rows when there are no more than `cap`."""
    labels = np.asarray(labels)
    if len(labels) <= cap:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels != 1)
    keep_positives = min(len(positives), round(cap * len(positives) / len(labels)))
    chosen = [rng.choice(positives, size=keep_positives, replace=False),
              rng.choice(negatives, size=cap - keep_positives, replace=False)]
    return np.sort(np.concatenate(chosen))


# ---------------------------------------------------------------------------------------------
# The cut, on flattened lists
# ---------------------------------------------------------------------------------------------


def flat_positions(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For lists of these lengths laid end to end: each item's row and its position in its row."""
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    return rows, np.arange(int(lengths.sum()), dtype=np.int64) - starts[rows]


def last_per_row(rows: np.ndarray, values: np.ndarray, count: int, default: int) -> np.ndarray:
    """values[i] of each row's last item (rows sorted ascending), default where a row has none."""
    out = np.full(count, default, dtype=np.int64)
    if len(rows):
        last = np.flatnonzero(np.append(rows[1:] != rows[:-1], True))
        out[rows[last]] = values[last]
    return out


def history_ends(tokens, epoch_times, index_times: np.ndarray) -> np.ndarray:
    """history_end of every row at once: tokens and epoch_times are parallel list arrays."""
    import pyarrow.compute as pc

    lengths = pc.list_value_length(tokens).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    time_lengths = pc.list_value_length(epoch_times).fill_null(0).to_numpy(zero_copy_only=False)
    if not np.array_equal(lengths, time_lengths):
        raise PipelineError("patient sequences whose epoch_times are not as long as their concept_ids: "
                            "not cehrbert_data's patient_sequence")
    rows, positions = flat_positions(lengths)
    flat_times = pc.list_flatten(epoch_times).to_numpy(zero_copy_only=False).astype(float)
    late = flat_times >= index_times[rows]
    # The first late position of each row (items are in row order: where the row number changes).
    cut = lengths.copy()
    late_rows, late_positions = rows[late], positions[late]
    if len(late_rows):
        first = np.flatnonzero(np.insert(late_rows[1:] != late_rows[:-1], 0, True))
        cut[late_rows[first]] = late_positions[first]
    visit_end = pc.equal(pc.list_flatten(tokens), VISIT_END_TOKEN).to_numpy(zero_copy_only=False)
    before_cut = visit_end & (positions < cut[rows])
    return last_per_row(rows[before_cut], positions[before_cut] + 1, len(lengths), 0)


def filled_ages(flat_ages, rows: np.ndarray) -> list:
    """Ages with gaps filled from the token before in the same row (else the first known after; -1 in a
    row with none). cehrbert_data writes no age for its artificial visits (Visit/0); one null makes
    pyarrow read a split's whole ages column as floats, and cehrgpt's feature script then cannot join its
    train and validation parts ("The features can't be aligned because the key ages ...")."""
    ages = pd.Series(flat_ages.to_numpy(zero_copy_only=False))
    by_row = ages.groupby(rows)
    filled = by_row.ffill().groupby(rows).bfill().fillna(-1)
    return filled.astype(np.int64).tolist()


def cut_lists(table, column: str, ends: np.ndarray):
    """column's lists cut to their first `ends` items (rows already known to be parallel and non-null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    lists = table.column(column).combine_chunks()
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    rows, positions = flat_positions(lengths)
    keep = positions < ends[rows]
    values = pc.list_flatten(lists).filter(pa.array(keep))
    if column == "ages" and values.null_count:
        values = pa.array(filled_ages(values, rows[keep]), lists.type.value_type)
    offsets = np.concatenate([[0], np.cumsum(ends)])
    list_class = pa.LargeListArray if pa.types.is_large_list(lists.type) else pa.ListArray
    offset_type = pa.int64() if pa.types.is_large_list(lists.type) else pa.int32()
    return list_class.from_arrays(pa.array(offsets, offset_type), values).cast(lists.type)


def parallel_columns(table, list_columns: list[str], lengths: np.ndarray) -> list[str]:
    """The list columns whose every row is non-null and as long as concept_ids: cut at the same place.
    Others are left out, since nothing tells which of their items are early."""
    import pyarrow.compute as pc

    kept = []
    for name in list_columns:
        column_lengths = pc.list_value_length(table.column(name))
        if column_lengths.null_count == 0 and np.array_equal(
                column_lengths.to_numpy(zero_copy_only=False).astype(np.int64), lengths):
            kept.append(name)
    return kept


def examples_of(sequences, examples: pd.DataFrame, ends: np.ndarray):
    """One split's example table: person_id, index_date, label, age, the parallel list columns cut at
    `ends`, num_of_concepts, num_of_visits, with the types step 2 wrote."""
    import pyarrow as pa
    import pyarrow.compute as pc

    types = _new_column_types()
    list_columns = [f.name for f in sequences.schema if is_list_type(f.type)]
    lengths = pc.list_value_length(sequences.column(SEQUENCE_TOKEN_COLUMN)).to_numpy(zero_copy_only=False)
    shared = parallel_columns(sequences, list_columns, lengths.astype(np.int64))
    columns = {
        "person_id": pa.array(examples["subject_id"].astype(np.int64), types["person_id"]),
        "index_date": pa.array([datetime.datetime.combine(day, datetime.time()) for day in examples["cohort_start_date"]],
                               types["index_date"]),
        "label": pa.array(examples["label"].astype(np.int64), types["label"]),
        "age": pa.array(examples["age_at_index"].astype(np.int64), types["age"]),
    }
    for name in shared:
        columns[name] = cut_lists(sequences, name, ends)
    columns["num_of_concepts"] = pa.array(ends, types["num_of_concepts"])
    tokens = sequences.column(SEQUENCE_TOKEN_COLUMN).combine_chunks()
    rows, positions = flat_positions(lengths.astype(np.int64))
    visit_starts = pc.equal(pc.list_flatten(tokens), VISIT_START_TOKEN).to_numpy(zero_copy_only=False)
    counted = visit_starts & (positions < ends[rows])
    columns["num_of_visits"] = pa.array(np.bincount(rows[counted], minlength=len(ends)).astype(np.int64),
                                        types["num_of_visits"])
    schema = pa.schema([sequences.schema.field(name) if name in shared else pa.field(name, types[name])
                        for name in columns])
    return pa.table(list(columns.values()), schema=schema)


def build_histories(cohort: pd.DataFrame, patient_sequence_dir: Path,
                    test_fraction: float = DEFAULT_TEST_FRACTION,
                    max_examples: dict[str, int] | None = None) -> Histories:
    """One example per cohort row, in the cohort's order within each split: its person, index date,
    label, age and every list column parallel to concept_ids cut before the index date.

    max_examples: {"train": N, "test": M}: at most that many cohort rows of a split are kept (capped_rows:
    seeded, stratified by outcome), before any sequence is read; rows without a history are then left
    out, so a split can end with fewer."""
    import pyarrow as pa

    splits, split_source = person_splits(patient_sequence_dir, test_fraction)
    split_of_row = np.array([splits.get(int(person), "") for person in cohort["subject_id"]], dtype=object)
    no_sequence = int(np.sum(split_of_row == ""))
    chosen, capped = {}, {}
    for split in SPLITS:
        rows = np.flatnonzero(split_of_row == split)
        cap = (max_examples or {}).get(split)
        if cap is not None and len(rows) > cap:
            capped[split] = {"cap": int(cap), "cohort_rows": int(len(rows))}
            rows = rows[capped_rows(cohort["label"].to_numpy()[rows], cap)]
        chosen[split] = rows
    kept_rows = np.sort(np.concatenate(list(chosen.values())))
    sequences, _ = read_patient_sequences(patient_sequence_dir, cohort["subject_id"].to_numpy()[kept_rows],
                                          test_fraction)
    row_of_person = {int(person): row for row, person in enumerate(sequences.column("person_id").to_pylist())}
    tables, no_history = {}, 0
    for split in SPLITS:
        examples = cohort.iloc[chosen[split]]
        taken = sequences.take(pa.array([row_of_person[int(person)] for person in examples["subject_id"]], pa.int64()))
        index_times = np.array([index_seconds(day) for day in examples["cohort_start_date"]], dtype=float)
        ends = history_ends(taken.column(SEQUENCE_TOKEN_COLUMN).combine_chunks(),
                            taken.column("epoch_times").combine_chunks(), index_times)
        with_history = ends > 0
        no_history += int(np.sum(~with_history))
        if not with_history.any():
            raise PipelineError(f"no cohort example with a history falls in the {split} split "
                                f"({len(cohort)} cohort rows, {no_sequence} without a sequence, {no_history} without "
                                "a visit before the index date)")
        tables[split] = examples_of(taken.filter(pa.array(with_history)), examples[with_history],
                                    ends[with_history])
    considered = np.sort(np.concatenate([kept_rows, np.flatnonzero(split_of_row == "")]))
    return Histories(train=tables["train"], test=tables["test"], no_sequence=no_sequence, no_history=no_history,
                     split_source=split_source, capped=capped, considered_rows=considered)


def examples_fingerprint(histories: Histories) -> str:
    """A digest of the examples without their labels: equal for two tasks with the same persons, index
    dates and histories (their features are the same). Hashes Arrow's IPC bytes of each column."""
    import hashlib

    import pyarrow as pa

    digest = hashlib.sha256()
    for table in (histories.train, histories.test):
        unlabelled = table.drop_columns([name for name in ("label", "time_to_event") if name in table.column_names])
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, unlabelled.schema) as writer:
            writer.write_table(unlabelled.combine_chunks())
        digest.update(sink.getvalue().to_pybytes())
        digest.update(b"|")
    return digest.hexdigest()


def write_histories(histories: Histories, folder: Path) -> dict[str, Path]:
    """Write train/ and test/ Parquet folders (what cehrgpt's feature and zero-shot tools read)."""
    import pyarrow.parquet as pq

    paths = {}
    for split in SPLITS:
        path = Path(folder) / split
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(getattr(histories, split), path / "part-00000.parquet")
        paths[split] = path
    return paths


def outcome_seen_in_future(cohort: pd.DataFrame, patient_sequence_dir: Path, outcome_tokens: list[str],
                           test_fraction: float = DEFAULT_TEST_FRACTION) -> tuple[int, int]:
    """(positives, positives whose outcome token appears in their sequence inside the time at risk), over
    the cohort rows given (step 7 gives those the caps kept: Histories.considered_rows).

    For the report only, never a model input: how many outcomes the sequences (and so the model's
    training data) show at all. cehrbert_data keeps a visit only with a concept of its concept list,
    so an outcome the SQL finds can be missing from the sequences.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    positives = cohort[cohort["label"] == 1]
    sequences, _ = read_patient_sequences(patient_sequence_dir, positives["subject_id"], test_fraction)
    row_of_person = {int(person): row for row, person in enumerate(sequences.column("person_id").to_pylist())}
    found = [row_of_person.get(int(person)) for person in positives["subject_id"]]
    with_sequence = np.array([row is not None for row in found], dtype=bool)
    if not with_sequence.any():
        return len(positives), 0
    taken = sequences.select([SEQUENCE_TOKEN_COLUMN, "epoch_times"]).take(
        pa.array([row for row in found if row is not None], pa.int64()))
    tokens = taken.column(SEQUENCE_TOKEN_COLUMN).combine_chunks()
    lengths = pc.list_value_length(tokens).to_numpy(zero_copy_only=False).astype(np.int64)
    rows, _ = flat_positions(lengths)
    kept = positives[with_sequence]
    low = np.array([index_seconds(day) for day in kept["cohort_start_date"]], dtype=float)
    high = np.array([index_seconds(day) + SECONDS_PER_DAY for day in kept["cohort_end_date"]], dtype=float)
    when = pc.list_flatten(taken.column("epoch_times").combine_chunks()).to_numpy(zero_copy_only=False).astype(float)
    wanted = pc.is_in(pc.list_flatten(tokens), value_set=pa.array([str(t) for t in outcome_tokens], pa.string()))
    hit = wanted.to_numpy(zero_copy_only=False) & (when >= low[rows]) & (when < high[rows])
    return len(positives), int(len(np.unique(rows[hit])))
