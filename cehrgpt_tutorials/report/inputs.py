"""The report's inputs, read and checked before any metric: the generated runs, the real sequences
(train/ and the held-out test/), concept names, and the OMOP folder cehrgpt's converter restored from a
run. A missing or empty input is a PipelineError naming it (the command line prints it on one line)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import parquet_files
from cehrgpt_tutorials.omop.concepts import read_concepts
from cehrgpt_tutorials.report.privacy import sample_rows
from cehrgpt_tutorials.sequences.codes import Sequences, read_sequences
from cehrgpt_tutorials.sequences.facts import SequenceFacts, sequence_facts
from cehrgpt_tutorials.sequences.vocabulary import Vocabulary

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
                pq.ParquetFile(path).metadata.num_rows for path in parquet_files(table_dir)
            )
        except (OSError, pa.ArrowException) as error:
            raise PipelineError(f"cannot read {table_dir}: {error}") from None
    return counts


def converted_share(folder: Path, person_ids: np.ndarray | None, count: int, persons: int) -> float:
    """Share of the sequences that became persons: by person_id when the sequences have distinct ones
    (the pipeline runs the converter with --use_original_person_id), else persons / sequences."""
    files = parquet_files(folder / "person")
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
            files = parquet_files(run.sequence_dir)
            return max((path.stat().st_mtime for path in files), default=run.folder.stat().st_mtime)

        return sorted(runs, key=newest, reverse=True)
    if parquet_files(folder):
        return [Run(folder.name, folder, folder)]
    raise PipelineError(
        f"no generated sequences in {folder}: expected top_*/generated_sequences/*.parquet "
        "(cehrgpt's generator output) or Parquet files"
    )


@dataclass
class RealData:
    train: Sequences
    train_facts: SequenceFacts
    heldout_facts: SequenceFacts
    reference_rows: np.ndarray  # rows of train used as the nearest-neighbour reference
    heldout_rows: np.ndarray  # rows of the held-out facts used as queries
    heldout_count: int  # real sequences the model never saw: test/, or the ones set aside
    heldout: Sequences  # test/, or train itself when there is no split
    heldout_candidates: np.ndarray  # rows of `heldout` the model never saw (all of test/, or the set-aside)
    split_note: str
    description: str


def load_real(real_dir: Path, vocabulary: Vocabulary, sample_size: int, seed: int) -> RealData:
    """The training sequences, and held-out ones: test/ when the folder has a split, else a sample set aside."""
    if not real_dir.is_dir():
        raise PipelineError(f"real patient sequences not found: {real_dir} (run step 2, or pass --real-dir)")
    train_dir, test_dir = real_dir / "train", real_dir / "test"
    has_split = train_dir.is_dir() and test_dir.is_dir() and parquet_files(test_dir)
    train_files = parquet_files(train_dir if has_split else real_dir)
    if not train_files:
        raise PipelineError(f"no Parquet files in {train_dir if has_split else real_dir}: is step 2 done?")
    train = read_sequences(train_files, vocabulary, "reading real sequences")
    if train.count == 0:
        raise PipelineError(f"no sequences in {real_dir}: its Parquet files have no rows")
    if has_split:
        heldout = read_sequences(parquet_files(test_dir), vocabulary, "reading held-out sequences")
        train_facts, heldout_facts = sequence_facts(train, vocabulary), sequence_facts(heldout, vocabulary)
        reference_rows = np.arange(train.count)
        heldout_rows = sample_rows(heldout.count, sample_size, seed, heldout_facts.concepts_per_patient > 0)
        note = f"train/ ({train.count:,}) vs test/ ({heldout.count:,}) split of {real_dir}"
    else:
        train_facts = sequence_facts(train, vocabulary)
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
    heldout_sequences = heldout if has_split else train
    candidates = np.arange(heldout.count) if has_split else heldout_rows
    return RealData(train, train_facts, heldout_facts, reference_rows, heldout_rows, heldout_count,
                    heldout_sequences, candidates, note, description)



@dataclass(frozen=True)
class Comparison:
    """What every section of one run's report compares: the run's synthetic sequences with the real ones."""

    synthetic: Sequences
    synthetic_facts: SequenceFacts
    real: RealData
    vocabulary: Vocabulary
    names: dict[str, tuple[str, str]]  # concept id -> (name, domain); empty without a concept table


def read_run(run: Run, real: RealData, vocabulary: Vocabulary, concept_dir: Path | None) -> Comparison:
    """The run's sequences and their facts beside the real ones, with the names of the vocabulary's
    concepts (one filtered read of the concept table)."""
    files = parquet_files(run.sequence_dir)
    if not files:
        raise PipelineError(f"no Parquet files in {run.sequence_dir}: did generation finish?")
    synthetic = read_sequences(files, vocabulary, f"reading {run.name}")
    if synthetic.count == 0:
        raise PipelineError(f"no sequences in {run.sequence_dir}: its Parquet files have no rows")
    numeric_ids = [int(token) for token in vocabulary.tokens if token.isdigit() and len(token) < 19]
    names = read_concepts(concept_dir, numeric_ids) if concept_dir else {}
    return Comparison(synthetic, sequence_facts(synthetic, vocabulary), real, vocabulary, names)
