"""Calendar time of patient sequences: the date cehrgpt's OMOP converter gives each visit, how many
visits fall after the source data's last date (or after today), and censoring of generated sequences
at a date, so that synthetic_cdm does not reach into a future the real data never saw.

The converter dates a sequence from 1 January of its year token and moves the date by every time
token (D/W/M<n>, LT = 3 years between visits, i-D<n> inside inpatient visits): the model picks the
year of the first visit and the gaps, and nothing stops it from writing visits past the source's end.

Command line (the restore step runs it before the converter):
    python -m cehrgpt_tutorials.report.timeline censor SEQUENCES OUTPUT --source-visits OMOP/visit_occurrence
    python -m cehrgpt_tutorials.report.timeline censor SEQUENCES OUTPUT --censor-date 2019-01-09
writes OUTPUT/*.parquet: each sequence cut after the last visit that starts on or before the date
(every parallel list column cut with it); a sequence whose first visit is after the date is left out.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cehrgpt_tutorials.errors import PipelineError, describe_os_error, fail
from cehrgpt_tutorials.files import atomic_directory, parquet_files
from cehrgpt_tutorials.sequences.codes import read_sequences
from cehrgpt_tutorials.sequences.facts import SequenceFacts, sequence_facts
from cehrgpt_tutorials.sequences.tokens import SEQUENCE_TOKEN_COLUMN
from cehrgpt_tutorials.sequences.vocabulary import VISIT_END, Vocabulary


def visit_dates(facts: SequenceFacts) -> np.ndarray:
    """The converter's start date of every [VS] (datetime64[D]; NaT when the sequence has no year token)."""
    years = facts.start_year[facts.visit_sequence]
    known = np.isfinite(years)
    dates = np.full(len(years), np.datetime64("NaT"), dtype="datetime64[D]")
    first_of_year = (years[known].astype(np.int64) - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    dates[known] = first_of_year + facts.visit_days[known].astype(np.int64)
    return dates


def source_end_date(visit_dir: Path) -> datetime.date | None:
    """The last visit_start_date of an OMOP visit_occurrence folder (Parquet), or None without one."""
    files = parquet_files(visit_dir) if Path(visit_dir).is_dir() else []
    if not files:
        return None
    try:
        dataset = ds.dataset([str(path) for path in files], format="parquet")
        if "visit_start_date" not in dataset.schema.names:
            raise PipelineError(f"{visit_dir} has no visit_start_date column: not an OMOP visit_occurrence table")
        latest = pc.max(dataset.to_table(columns=["visit_start_date"]).column(0)).as_py()
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot read {visit_dir}: {error}") from None
    return latest.date() if isinstance(latest, datetime.datetime) else latest


def calendar_time(real: SequenceFacts, synthetic: SequenceFacts, source_end: datetime.date, run_date: datetime.date) -> dict:
    """Shares of real and synthetic visits after the source's last date and after the run date,
    and visits per calendar year of both (for the plot)."""
    end, today = np.datetime64(source_end, "D"), np.datetime64(run_date, "D")
    result = {"source_end_date": source_end.isoformat(), "run_date": run_date.isoformat()}
    years = {}
    for side, facts in (("real", real), ("synthetic", synthetic)):
        dates = visit_dates(facts)
        dated = dates[~np.isnat(dates)]
        prefix = "" if side == "synthetic" else "real_"
        result[f"{prefix}dated_visits"] = len(dated)
        result[f"{prefix}visits_after_source_end_fraction"] = float((dated > end).mean()) if len(dated) else None
        result[f"{prefix}visits_after_run_date_fraction"] = float((dated > today).mean()) if len(dated) else None
        result[f"{prefix}last_visit_date"] = str(dated.max()) if len(dated) else None
        late = facts.visit_sequence[~np.isnat(dates)][dated > end]
        result[f"{prefix}patients_with_visits_after_source_end_fraction"] = (
            len(np.unique(late)) / facts.count if facts.count else None
        )
        years[side] = dated.astype("datetime64[Y]").astype(np.int64) + 1970
    if len(years["real"]) or len(years["synthetic"]):
        all_years = np.concatenate((years["real"], years["synthetic"]))
        span = np.arange(all_years.min(), all_years.max() + 1)
        result["visits_per_year"] = {
            "years": span.tolist(),
            "real": np.bincount(years["real"] - span[0], minlength=len(span)).tolist(),
            "synthetic": np.bincount(years["synthetic"] - span[0], minlength=len(span)).tolist(),
        }
    return result


def censored_lengths(facts: SequenceFacts, kinds: np.ndarray, offsets: np.ndarray, censor_date: datetime.date) -> np.ndarray:
    """New length of each sequence when cut after the [VE] of its last visit starting on or before the
    date: unchanged without a later visit, 0 when even its first visit is later."""
    late = visit_dates(facts) > np.datetime64(censor_date, "D")  # NaT compares False: undated visits stay
    lengths = np.diff(offsets).astype(np.int64)
    if not late.any():
        return lengths
    # The first late visit of each sequence that has one (visits are in token order).
    late_visits = np.flatnonzero(late)
    sequences, first = np.unique(facts.visit_sequence[late_visits], return_index=True)
    first_late = late_visits[first]
    ends_at = np.flatnonzero(kinds == VISIT_END)
    new_lengths = lengths.copy()
    previous = first_late - 1
    has_kept = (first_late > 0) & (facts.visit_sequence[np.maximum(previous, 0)] == sequences)
    # The kept visit ends at the last [VE] before the late [VS] (which also drops the time token between).
    closing = np.searchsorted(ends_at, facts.visit_positions[first_late]) - 1
    end_position = np.full(len(first_late), -1, dtype=np.int64)
    if len(ends_at):  # a batch of sequences may hold no [VE] at all (an untrained model's)
        end_position = np.where(closing >= 0, ends_at[np.maximum(closing, 0)], -1)
    valid_end = has_kept & (end_position >= facts.visit_positions[np.maximum(previous, 0)])
    new_lengths[sequences] = np.where(valid_end, end_position + 1 - offsets[sequences], 0)
    return new_lengths


def _cut_list_column(column: pa.ChunkedArray | pa.Array, lengths: np.ndarray) -> pa.Array:
    """The first lengths[i] items of each row's list."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    starts = array.offsets.to_numpy()[:-1].astype(np.int64)
    keep = np.concatenate([np.arange(start, start + length) for start, length in zip(starts, lengths, strict=True)]) \
        if len(lengths) else np.empty(0, dtype=np.int64)
    values = array.values.take(pa.array(keep, pa.int64()))
    return pa.ListArray.from_arrays(pa.array(np.concatenate(([0], np.cumsum(lengths))), pa.int32()), values)


def censor_folder(sequence_dir: Path, output_dir: Path, censor_date: datetime.date) -> dict[str, int]:
    """Write censored copies of every Parquet file of sequence_dir into output_dir (atomically)."""
    files = parquet_files(sequence_dir)
    if not files:
        raise PipelineError(f"no Parquet files in {sequence_dir}: expected generated sequences")
    totals = {"sequences": 0, "cut": 0, "dropped": 0, "visits_removed": 0}
    with atomic_directory(output_dir) as staging:
        for path in files:
            table = pq.read_table(path)
            vocabulary = Vocabulary()
            sequences = read_sequences([path], vocabulary, "censoring")
            facts = sequence_facts(sequences, vocabulary)
            kinds = vocabulary.fact("kind")[sequences.codes]
            new_lengths = censored_lengths(facts, kinds, sequences.offsets, censor_date)
            # read_sequences drops a leading [START]; the file keeps it.
            file_lengths = pc.fill_null(pc.list_value_length(table[SEQUENCE_TOKEN_COLUMN]), 0).to_numpy(
                zero_copy_only=False
            ).astype(np.int64)
            leading = file_lengths - sequences.lengths
            cut = new_lengths < sequences.lengths
            new_file_lengths = np.where(new_lengths > 0, new_lengths + leading, 0)
            kept_visits = np.bincount(facts.visit_sequence[facts.visit_positions < np.repeat(
                sequences.offsets[:-1] + new_lengths, facts.visits)], minlength=facts.count)
            totals["visits_removed"] += int(facts.visits.sum() - kept_visits.sum())
            columns = {}
            for name in table.column_names:
                column = table[name]
                aligned = pa.types.is_list(column.type) and bool(
                    (pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False) == file_lengths).all()
                )
                columns[name] = _cut_list_column(column, np.minimum(new_file_lengths, file_lengths)) if aligned else column
            censored = pa.table(columns).filter(pa.array(new_lengths > 0))
            pq.write_table(censored, staging / path.name)
            totals["sequences"] += sequences.count
            totals["cut"] += int((cut & (new_lengths > 0)).sum())
            totals["dropped"] += int((new_lengths == 0).sum())
    return totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="action", required=True)
    censor = commands.add_parser("censor", help="cut generated sequences at a date")
    censor.add_argument("sequences", type=Path, help="generated_sequences folder (Parquet)")
    censor.add_argument("output", type=Path, help="folder for the censored copies (replaced atomically)")
    when = censor.add_mutually_exclusive_group(required=True)
    when.add_argument("--censor-date", type=datetime.date.fromisoformat, help="YYYY-MM-DD")
    when.add_argument("--source-visits", type=Path,
                      help="the source CDM's visit_occurrence folder: censor at its last visit_start_date")
    arguments = parser.parse_args(argv)
    try:
        censor_date = arguments.censor_date
        if censor_date is None:
            censor_date = source_end_date(arguments.source_visits)
            if censor_date is None:
                raise PipelineError(f"no visit_occurrence Parquet files in {arguments.source_visits} to take the censor date from "
                                    "(pass --censor-date, or restore with --no-censor)")
        totals = censor_folder(arguments.sequences, arguments.output, censor_date)
    except PipelineError as error:
        fail(str(error))
    except OSError as error:  # e.g. a full disk: the previous censored copies are as they were
        fail(f"cannot write the censored sequences to {arguments.output}: {describe_os_error(error)}")
    print(f"Censored at {censor_date}: {totals['cut']:,} of {totals['sequences']:,} sequences cut after their last visit "
          f"on or before it, {totals['dropped']:,} left out (first visit later), {totals['visits_removed']:,} visits removed "
          f"-> {arguments.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
