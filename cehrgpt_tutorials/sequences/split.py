"""The held-out patients: one deterministic function of person_id decides train or test.

Step 2 writes its verdict for every person into the patient_splits folder cehrbert_data reads
(person_id, split), so it writes patient_sequence/train and patient_sequence/test. Training and the
prompts of generation read train only; everything that needs real patients the model never saw
(inspect_synthetic.py's held-out reference, privacy attacks, utility, zero-shot evaluations) reads
test, or calls is_test_person / split_of on its own person ids: same person, same answer, on any
machine, with no file to carry around. The split is nested: a test person at fraction 0.1 is a test
person at 0.15 too.
"""

from __future__ import annotations

from pathlib import Path

from cehrgpt_tutorials.errors import PipelineError, fail
from cehrgpt_tutorials.files import atomic_directory, parquet_files

DEFAULT_TEST_FRACTION = 0.15
PATIENT_SPLITS_FOLDER = "patient_splits"
# Written beside the split's Parquet file (Spark and pyarrow skip names starting with '_'): marks a
# patient_splits folder as this module's, so step 2 may rewrite it; a folder without it is the user's.
SPLIT_MARKER = "_cehrgpt_tutorial_split.json"
_MASK_64 = (1 << 64) - 1


def _check_test_fraction(test_fraction: float) -> float:
    test_fraction = float(test_fraction)
    if not 0.0 < test_fraction < 1.0:
        raise PipelineError(f"the test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    return test_fraction


def split_position(person_ids):
    """Each person's place in [0, 1): splitmix64 of the person_id (as unsigned 64 bits), top 53 bits.

    A fixed integer mix, not Python's hash() (salted per process) nor a random generator (whose
    stream may change between numpy versions). Takes an int or an array of ints; returns the same shape.
    """
    import numpy as np

    scalar = np.ndim(person_ids) == 0
    with np.errstate(over="ignore"):
        z = np.asarray(person_ids, dtype=np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    position = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return float(position) if scalar else position


def is_test_person(person_ids, test_fraction: float = DEFAULT_TEST_FRACTION):
    """Whether each person is held out (True) or trained on (False). An int gives a bool, an array an array.

    The same function step 2 used to write patient_splits, so calling it on the person ids of any
    OMOP table (a cohort, a feature table) selects the patients the model never saw.
    """
    return split_position(person_ids) < _check_test_fraction(test_fraction)


def split_of(person_id: int, test_fraction: float = DEFAULT_TEST_FRACTION) -> str:
    """"train" or "test" for one person_id (the value of cehrbert_data's patient_splits.split column)."""
    return "test" if is_test_person(int(person_id), test_fraction) else "train"


def write_patient_splits(person_dir: Path, target: Path, test_fraction: float = DEFAULT_TEST_FRACTION) -> dict[str, int]:
    """Write target/ (person_id int64, split "train"/"test") for every person of an OMOP person table
    folder, atomically, with the marker file. Returns the number of persons per split.
    """
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    test_fraction = _check_test_fraction(test_fraction)
    files = parquet_files(Path(person_dir))
    if not files:
        raise PipelineError(f"no Parquet files in {person_dir}: expected the OMOP person table")
    try:
        dataset = ds.dataset([str(path) for path in files], format="parquet")
        if "person_id" not in dataset.schema.names:
            raise PipelineError(f"{person_dir} has no person_id column: not an OMOP person table")
        person_ids = dataset.to_table(columns=["person_id"]).column("person_id")
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot read the person table {person_dir}: {error}") from None
    if person_ids.null_count:
        raise PipelineError(f"{person_dir} has {person_ids.null_count} rows without a person_id")
    ids = pc.unique(person_ids).cast(pa.int64()).to_numpy()
    test = is_test_person(ids, test_fraction)
    table = pa.table({"person_id": pa.array(ids, pa.int64()),
                      "split": pa.array(np.where(test, "test", "train"), pa.string())})
    counts = {"train": int((~test).sum()), "test": int(test.sum())}
    with atomic_directory(Path(target)) as staging:
        pq.write_table(table, staging / "part-00000.parquet")
        (staging / SPLIT_MARKER).write_text(json.dumps(
            {"written_by": "cehrgpt_tutorials.sequences.split.write_patient_splits", "function": "is_test_person",
             "test_fraction": test_fraction, "persons": counts}, indent=2) + "\n")
    return counts


def main(argv=None) -> None:
    """`python -m cehrgpt_tutorials.sequences.split PERSON_DIR TARGET [--test-fraction F]` (step 2)."""
    import argparse

    parser = argparse.ArgumentParser(
        description="Write the train/test split of an OMOP person table (cehrbert_data's patient_splits)."
    )
    parser.add_argument("person_dir", type=Path, help="the OMOP person table folder (Parquet)")
    parser.add_argument("target", type=Path, help="the patient_splits folder to write (replaced atomically)")
    parser.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION,
                        help="share of persons held out as test (default: %(default)s)")
    arguments = parser.parse_args(argv)
    try:
        counts = write_patient_splits(arguments.person_dir, arguments.target, arguments.test_fraction)
    except PipelineError as error:
        fail(str(error))
    total = counts["train"] + counts["test"]
    print(f"Patient split:  {counts['train']:,} train, {counts['test']:,} test "
          f"({counts['test'] / max(total, 1):.1%} held out, test fraction {arguments.test_fraction}) "
          f"-> {arguments.target}")


if __name__ == "__main__":
    main()
