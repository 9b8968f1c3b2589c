"""Step 2's concept threshold, sized to the data, and the small-cell floor that holds for what reaches the model.

cehrbert_data keeps a concept when at least --min_num_of_patients persons have it. The official tutorial's
100 was chosen for its 1,000,000-patient Synthea set (0.01% of the persons); on a CDM of 1,130 persons it
is 8.8% of them, and the model never sees most of the CDM. So when no value is given, step 2 scales it
with the number of persons: 100 at 1,000,000 persons and above, proportionally fewer below, never under
SMALL_CELL_FLOOR: a concept held by a handful of persons identifies them (published health statistics
suppress cells under about 10 for that reason; bench/RESULTS.md measures what the floor costs).

cehrbert_data counts persons over every date and both splits, while the sequences start at --start_date
and training reads train/ only, so a concept the cut lets through can still be held by fewer persons in
the training sequences. `enforce_floor` counts them there and removes the concepts below the floor from
the sequences (train/ and test/, with their aligned values: sequences/cleaning.py) and from the concept
list. The floor is SMALL_CELL_FLOOR, or the threshold itself when you ask for a smaller one.

    python -m cehrgpt_tutorials.sequences.concept_floor choose OMOP_DIR/person [--threshold N]
    python -m cehrgpt_tutorials.sequences.concept_floor enforce OUT/patient_sequence \\
        --concept-list OUT/qualified_concept_list --floor 11 --concept-dir OMOP_DIR/concept
"""

from __future__ import annotations

import argparse
import collections
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from cehrgpt_tutorials.errors import PipelineError, describe_os_error, fail
from cehrgpt_tutorials.files import atomic_directory, parquet_files
from cehrgpt_tutorials.omop.concepts import read_concepts
from cehrgpt_tutorials.sequences.cleaning import CleanupReport, TokensToRemove, clean_file
from cehrgpt_tutorials.sequences.tokens import SEQUENCE_TOKEN_COLUMN

OFFICIAL_THRESHOLD = 100  # the official tutorial's --min_num_of_patients...
OFFICIAL_PERSONS = 1_000_000  # ...for its Synthea set of this many persons
SMALL_CELL_FLOOR = 11  # fewest training persons a concept the model sees may have (bench/RESULTS.md)
BELOW_FLOOR = "below the floor"
CONCEPT_LIST_COLUMN = "standard_concept_id"  # cehrbert_data's qualified_concept_list


def choose_threshold(persons: int, floor: int = SMALL_CELL_FLOOR) -> tuple[int, str]:
    """The threshold for a CDM of `persons` persons, and why."""
    proportional = math.ceil(OFFICIAL_THRESHOLD * persons / OFFICIAL_PERSONS)
    threshold = max(floor, min(OFFICIAL_THRESHOLD, proportional))
    return threshold, (f"{persons:,} persons (the official {OFFICIAL_THRESHOLD} is for >= {OFFICIAL_PERSONS:,} "
                       f"persons; floor {floor})")


def floor_for(threshold: int) -> int:
    """The small-cell floor, unless the threshold asked for is smaller (then that)."""
    return min(SMALL_CELL_FLOOR, threshold)


def count_persons(person_dir: Path) -> int:
    """Rows of an OMOP person table folder (one per person), from the Parquet metadata."""
    files = parquet_files(person_dir) if Path(person_dir).is_dir() else []
    if not files:
        raise PipelineError(f"no Parquet files in {person_dir}: expected the OMOP person table")
    try:
        return sum(pq.ParquetFile(path).metadata.num_rows for path in files)
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot count the persons of {person_dir}: {error}") from None


def read_concept_list(folder: Path) -> set[str]:
    """The concept ids of cehrbert_data's qualified_concept_list, as the tokens the sequences hold."""
    table = ds.dataset(parquet_files(folder), format="parquet").to_table(columns=[CONCEPT_LIST_COLUMN])
    return {str(concept) for concept in table.column(CONCEPT_LIST_COLUMN).to_pylist() if concept is not None}


def persons_per_concept(folder: Path, concepts: set[str]) -> collections.Counter:
    """For each of `concepts`, the persons (rows: one per person) whose sequence holds it, over folder's files."""
    wanted = pa.array(sorted(concepts), pa.string())
    counts: collections.Counter = collections.Counter()
    for path in parquet_files(folder):
        for batch in pq.ParquetFile(path).iter_batches(columns=[SEQUENCE_TOKEN_COLUMN]):
            tokens = batch.column(0)
            flat = tokens.flatten().cast(pa.string())
            rows = pc.list_parent_indices(tokens)
            held = pc.is_in(flat, value_set=wanted)
            pairs = pa.table({"row": rows.filter(held), "token": flat.filter(held)})
            persons = pairs.group_by("token").aggregate([("row", "count_distinct")])
            counts.update(dict(zip(persons["token"].to_pylist(), persons["row_count_distinct"].to_pylist(), strict=True)))
    return counts


def enforce_floor(sequence_dir: Path, concept_list: Path, floor: int) -> dict[str, int]:
    """Remove from every sequence, and from the concept list, each listed concept held by fewer than
    `floor` persons in the training sequences (train/, or the whole folder without a split).
    Returns {concept: training persons} of the concepts removed."""
    sequence_dir, concept_list = Path(sequence_dir), Path(concept_list)
    concepts = read_concept_list(concept_list)
    train = sequence_dir / "train" if (sequence_dir / "train").is_dir() else sequence_dir
    counts = persons_per_concept(train, concepts)
    below = {concept: counts.get(concept, 0) for concept in sorted(concepts) if counts.get(concept, 0) < floor}
    if not below:
        return below
    oracle = TokensToRemove(dict.fromkeys(below, BELOW_FLOOR))
    for path in parquet_files(sequence_dir):
        clean_file(path, oracle, CleanupReport(), dry_run=False, fill_nulls=False)
    table = ds.dataset(parquet_files(concept_list), format="parquet").to_table()
    kept = pc.invert(pc.is_in(table.column(CONCEPT_LIST_COLUMN).cast(pa.string()),
                              value_set=pa.array(sorted(below), pa.string())))
    with atomic_directory(concept_list, "the concept list") as staging:
        pq.write_table(table.filter(kept), staging / "part-00000.parquet")
    return below


def describe_removed(below: dict[str, int], floor: int, kept: int, names: dict[str, str]) -> str:
    if not below:
        return f"floor {floor}: every concept the cut kept is held by at least {floor} training persons"
    shown = ", ".join(f"{names.get(concept) or concept} ({persons})"
                      for concept, persons in sorted(below.items(), key=lambda item: item[1])[:8])
    more = f", and {len(below) - 8} more" if len(below) > 8 else ""
    return (f"floor {floor}: {len(below)} of the {kept} concepts the cut kept are held by fewer than {floor} "
            f"persons in the training sequences (events before the start date and held-out persons count for "
            f"the cut, not here); removed from the sequences: {shown}{more}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    commands = parser.add_subparsers(dest="action", required=True)
    choose = commands.add_parser("choose", help="print the threshold, its floor and why, tab-separated")
    choose.add_argument("person_dir", type=Path, help="the OMOP person table (counted when no --threshold)")
    choose.add_argument("--threshold", type=int, default=None, help="the threshold asked for (--min_num_of_patients)")
    enforce = commands.add_parser("enforce", help="remove the concepts below the floor from the sequences")
    enforce.add_argument("sequence_dir", type=Path, help="the patient_sequence folder (train/ and test/)")
    enforce.add_argument("--concept-list", type=Path, required=True, help="cehrbert_data's qualified_concept_list")
    enforce.add_argument("--floor", type=int, required=True, help="fewest training persons a concept may have")
    enforce.add_argument("--concept-dir", type=Path, default=None, help="OMOP concept table, for the names shown")
    arguments = parser.parse_args(argv)
    try:
        if arguments.action == "choose":
            if arguments.threshold is None:
                threshold, reason = choose_threshold(count_persons(arguments.person_dir))
            else:
                threshold, reason = arguments.threshold, f"as asked (--min_num_of_patients); floor {floor_for(arguments.threshold)}"
            print(f"{threshold}\t{floor_for(threshold)}\t{reason}")
            return
        kept = len(read_concept_list(arguments.concept_list))
        below = enforce_floor(arguments.sequence_dir, arguments.concept_list, arguments.floor)
        names = {concept: name for concept, (name, _) in
                 read_concepts(arguments.concept_dir, [int(concept) for concept in below]).items()} if below else {}
        print(describe_removed(below, arguments.floor, kept, names))
    except PipelineError as error:
        fail(str(error))
    except OSError as error:
        fail(describe_os_error(error))


if __name__ == "__main__":
    main()
