"""Step 2 (create_cehrgpt_pretraining_data.sh, run by dash) and step 3 (cleanup_tokens.py) on demo data.

One real run of both cehrbert_data Spark apps on a few hundred demo patients is shared by the slow
tests. Its input is a read-only copy of the demo export in which some inpatient records have a date
later than their datetime (the data problem behind `i-D-<n>` tokens), so the run produces the tokens
cehrgpt rejects: the tests show its tokenizer training failing on them, and passing after cleanup.
"""

from __future__ import annotations

import re
import shlex
import shutil
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import REPO_ROOT, output_of, run_script
from helpers import error_line

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.sequences.cleaning import write_hadoop_checksum
from cehrgpt_tutorials.sequences.concept_floor import choose_threshold, persons_per_concept, read_concept_list
from cehrgpt_tutorials.sequences.split import (
    DEFAULT_TEST_FRACTION,
    SPLIT_MARKER,
    is_test_person,
    split_of,
    split_position,
    write_patient_splits,
)
from cehrgpt_tutorials.sequences.tokens import malformed_time_tokens, parallel_list_columns

SCRIPT = REPO_ROOT / "cehrgpt_tutorials" / "scripts" / "create_cehrgpt_pretraining_data.sh"
REQUIRED_TABLES = ["person", "visit_occurrence", "concept", "condition_occurrence", "procedure_occurrence",
                   "drug_exposure"]


def run_step2(arguments: list[str], env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    """The script as a learner runs it, under `sh` (dash here), never bash."""
    return subprocess.run(["sh", str(SCRIPT), *arguments], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def make_read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


def date_after_datetime(omop_folder: Path) -> int:
    """For one procedure and one condition of each multi-day inpatient visit: date = visit end,
    datetime = 12 h before the visit starts. Events are ordered by datetime, gaps taken between dates,
    so the next event's gap is negative. Returns how many records were changed."""
    visits = {
        visit["visit_occurrence_id"]: visit
        for visit in pq.read_table(omop_folder / "visit_occurrence").to_pylist()
        if visit["visit_concept_id"] == 9201 and visit["visit_end_date"] > visit["visit_start_date"]
    }
    changed = 0
    for table, date_column, datetime_column in [
        ("procedure_occurrence", "procedure_date", "procedure_datetime"),
        ("condition_occurrence", "condition_start_date", "condition_start_datetime"),
    ]:
        folder = omop_folder / table
        original = pq.read_table(folder)
        rows = original.to_pylist()
        seen = set()
        for row in rows:
            visit = visits.get(row["visit_occurrence_id"])
            if visit is not None and row["visit_occurrence_id"] not in seen:
                seen.add(row["visit_occurrence_id"])
                row[date_column] = visit["visit_end_date"]
                row[datetime_column] = visit["visit_start_datetime"] - timedelta(hours=12)
                changed += 1
        shutil.rmtree(folder)
        folder.mkdir()
        pq.write_table(pa.Table.from_pylist(rows, schema=original.schema), folder / "part-00000.parquet")
    return changed


def plant_rare_concept(omop_folder: Path) -> str:
    """A condition no one in the slice has, given to 3 training persons and 3 held-out persons after the
    start date and to 2 more training persons in 1970, before it: 8 persons, so the cut (>= 5 persons,
    every date, both splits) keeps it, but only 3 training persons hold it in the sequences. Returns it."""
    conditions = pq.read_table(omop_folder / "condition_occurrence")
    concepts = pq.read_table(omop_folder / "concept").to_pylist()
    used = set(conditions.column("condition_concept_id").to_pylist())
    planted = next(row["concept_id"] for row in concepts
                   if row["domain_id"] == "Condition" and row["standard_concept"] == "S" and row["concept_id"] not in used)
    rows = conditions.to_pylist()
    recent = {}  # person -> a condition row of theirs after 2000: the planted one goes on the same visit
    for row in rows:
        if row["condition_start_date"].year > 2000:
            recent.setdefault(row["person_id"], row)
    train = [person for person in sorted(recent) if not is_test_person(person)]
    test = [person for person in sorted(recent) if is_test_person(person)]
    new_rows = []
    next_id = max(conditions.column("condition_occurrence_id").to_pylist()) + 1
    for number, person in enumerate(train[:5] + test[:3]):
        row = dict(recent[person], condition_occurrence_id=next_id + number, condition_concept_id=planted)
        if number in (3, 4):  # before the start date, outside any visit
            row.update(condition_start_date=row["condition_start_date"].replace(year=1970), condition_start_datetime=None,
                       condition_end_date=None, condition_end_datetime=None, visit_occurrence_id=None)
        new_rows.append(row)
    shutil.rmtree(omop_folder / "condition_occurrence")
    (omop_folder / "condition_occurrence").mkdir()
    pq.write_table(pa.Table.from_pylist(rows + new_rows, schema=conditions.schema),
                   omop_folder / "condition_occurrence" / "part-00000.parquet")
    return str(planted)


@pytest.fixture(scope="module")
def step2_run(demo_omop_parquet, pipeline_env, tmp_path_factory):
    """Both Spark apps, once, on a read-only copy of the demo slice (input folder != output folder)."""
    work = tmp_path_factory.mktemp("step2")
    input_folder = work / "omop"
    shutil.copytree(demo_omop_parquet, input_folder, symlinks=False)
    make_writable(input_folder)
    assert date_after_datetime(input_folder) > 20
    planted = plant_rare_concept(input_folder)
    make_read_only(input_folder)
    listing_before = sorted(str(p.relative_to(input_folder)) for p in input_folder.rglob("*"))
    output_folder = work / "data"
    # A value with a space in SPARK_SUBMIT_OPTIONS must reach spark-submit as one word.
    environment = dict(pipeline_env, SPARK_SUBMIT_OPTIONS=pipeline_env["SPARK_SUBMIT_OPTIONS"]
                       + " --conf 'spark.executorEnv.CEHRGPT_TEST=two words'")
    result = run_step2(["--input_folder", str(input_folder), "--output_folder", str(output_folder),
                        "--start_date", "1985-01-01", "--min_num_of_patients", "5"], environment)
    yield {"result": result, "input": input_folder, "output": output_folder, "listing_before": listing_before,
           "planted": planted}
    make_writable(input_folder)


@pytest.mark.slow
def test_no_concept_held_by_fewer_training_persons_than_the_floor_reaches_the_sequences(step2_run):
    result, output, planted = step2_run["result"], step2_run["output"], step2_run["planted"]
    assert result.returncode == 0, output_of(result)
    assert "min_num_of_patients 5: as asked (--min_num_of_patients); floor 5" in result.stdout
    # The cut kept the planted concept (8 persons over every date and both splits)...
    assert re.search(r"floor 5: \d+ of the \d+ concepts the cut kept .* removed from the sequences: .*\(3\)", result.stdout)
    # ...and the floor took it out of both splits, and out of the concept list.
    sequences = output / "patient_sequence"
    for split in ("train", "test"):
        tokens = pc.list_flatten(pq.read_table(sequences / split, columns=["concept_ids"])["concept_ids"])
        assert not pc.any(pc.equal(tokens, planted)).as_py(), split
    kept = read_concept_list(output / "qualified_concept_list")
    assert planted not in kept
    counts = persons_per_concept(sequences / "train", kept)
    assert min(counts.get(concept, 0) for concept in kept) >= 5


def test_the_floor_removes_a_rare_concept_with_its_aligned_values_from_both_splits_and_the_concept_list(tmp_path):
    from cehrgpt_tutorials.sequences.concept_floor import enforce_floor

    prompt = ["year:2010", "age:40", "8507", "8527"]
    common, rare = "201826", "4329847"

    def rows(persons: range, with_rare: set[int]) -> pa.Table:
        tokens = [prompt + ["[VS]", "9202", common] + ([rare] if person in with_rare else []) + ["[VE]"]
                  for person in persons]
        return pa.table({"person_id": pa.array(list(persons), pa.int32()),
                         "concept_ids": pa.array(tokens, pa.list_(pa.string())),
                         "dates": pa.array([list(range(len(row))) for row in tokens], pa.list_(pa.int32())),
                         "num_of_concepts": pa.array([len(row) for row in tokens], pa.int64())})

    sequences = tmp_path / "patient_sequence"
    (sequences / "train").mkdir(parents=True)
    (sequences / "test").mkdir()
    pq.write_table(rows(range(10), with_rare={1, 2}), sequences / "train" / "part-0.parquet")
    pq.write_table(rows(range(10, 16), with_rare={10, 11, 12, 13}), sequences / "test" / "part-0.parquet")
    concept_list = tmp_path / "qualified_concept_list"
    concept_list.mkdir()
    pq.write_table(pa.table({"standard_concept_id": pa.array([int(common), int(rare)], pa.int32()),
                             "freq": pa.array([16, 6], pa.int64())}), concept_list / "part-0.parquet")

    assert enforce_floor(sequences, concept_list, floor=3) == {rare: 2}  # 2 training persons, 4 held-out
    for split in ("train", "test"):
        table = pq.read_table(sequences / split)
        assert all(rare not in tokens for tokens in table["concept_ids"].to_pylist())
        assert [len(dates) for dates in table["dates"].to_pylist()] == table["num_of_concepts"].to_pylist() == \
            [len(tokens) for tokens in table["concept_ids"].to_pylist()]
    assert read_concept_list(concept_list) == {common}
    assert enforce_floor(sequences, concept_list, floor=3) == {}  # nothing more to remove


def test_the_threshold_follows_the_number_of_persons_down_to_the_floor():
    assert choose_threshold(1_130) == (11, "1,130 persons (the official 100 is for >= 1,000,000 persons; floor 11)")
    assert [choose_threshold(persons)[0] for persons in (100, 11_300, 113_000, 500_000, 1_000_000, 5_000_000)] == \
        [11, 11, 12, 50, 100, 100]


@pytest.mark.slow
def test_step2_writes_patient_sequences_without_touching_the_input(step2_run, pipeline_env):
    result = step2_run["result"]
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    output = step2_run["output"]

    # Each spark-submit command is printed as it runs, with the concept list read from the output side.
    commands = [line for line in result.stdout.splitlines() if line.startswith("+ spark-submit ")]
    assert len(commands) == 2
    # The printed line is a command that can be pasted: the user's options after ours (so they win).
    words = shlex.split(commands[0][2:])
    user_words = shlex.split(pipeline_env["SPARK_SUBMIT_OPTIONS"]) + ["--conf", "spark.executorEnv.CEHRGPT_TEST=two words"]
    app = next(i for i, word in enumerate(words) if word.endswith("generate_included_concept_list.py"))
    assert words[app - len(user_words):app] == user_words
    assert words[:3] == ["spark-submit", "--driver-java-options", "-XX:TieredStopAtLevel=1"]  # small input
    assert "generate_included_concept_list.py" in commands[0] and "--min_num_of_patients 5" in commands[0]
    assert "generate_training_data.py" in commands[1]
    # App 2 reads the links and the new concept list from the run's staging folder (kept as spark_input/).
    assert re.search(rf"--input_folder {re.escape(str(output))}/\.patient_sequence\.tmp-\d+/spark_input ", commands[1])
    assert read_concept_list(output / "spark_input" / "qualified_concept_list")  # the link points to the kept list
    assert "--include_death" in commands[1]  # the demo export has a death table
    for option in ["--att_type day", "--inpatient_att_type day", "-iv", "-ip", "--include_concept_list",
                   "--gpt_patient_sequence", "--should_construct_artificial_visits",
                   "--disconnect_problem_list_records",
                   "--domain_table_list condition_occurrence procedure_occurrence drug_exposure"]:
        assert option in commands[1], option
    assert result.stdout.count(" took ") == 2
    # The demo slice is small: 2 x cores shuffle partitions, i.e. as many part files.
    partitions = int(next(line for line in result.stdout.splitlines() if line.startswith("Partitions:")).split()[1])
    assert f"--conf spark.sql.shuffle.partitions={partitions}" in commands[1]
    # Split output: each of train/ and test/ has at most that many part files (Spark drops empty ones).
    for split in ("train", "test"):
        assert 1 <= len(list((output / "patient_sequence" / split).glob("part-*.parquet"))) <= partitions

    # Nothing written into the (read-only) input folder; the concept list lives in the output folder.
    listing_after = sorted(str(p.relative_to(step2_run["input"])) for p in step2_run["input"].rglob("*"))
    assert listing_after == step2_run["listing_before"]
    assert pq.read_table(output / "qualified_concept_list").num_rows > 0

    sequences = pq.read_table(output / "patient_sequence")
    persons = pq.read_table(step2_run["input"] / "person").num_rows
    assert 0.8 * persons <= sequences.num_rows <= persons

    # The held-out split: written in the output folder, read by app 2, which wrote train/ and test/
    # (and nothing else at the top); each person where is_test_person puts them.
    assert "Held out:      " + str(output / "patient_splits") in result.stdout
    assert (output / "patient_splits" / SPLIT_MARKER).is_file()
    assert sorted(p.name for p in (output / "patient_sequence").iterdir() if not p.name.startswith((".", "_"))) == [
        "test", "train"]
    train_ids = set(pq.read_table(output / "patient_sequence" / "train", columns=["person_id"])["person_id"].to_pylist())
    test_ids = set(pq.read_table(output / "patient_sequence" / "test", columns=["person_id"])["person_id"].to_pylist())
    assert train_ids and test_ids and not train_ids & test_ids
    assert len(train_ids) + len(test_ids) == sequences.num_rows
    assert all(is_test_person(person) for person in test_ids)
    assert not any(is_test_person(person) for person in train_ids)
    assert pc.all(pc.equal(sequences["num_of_concepts"], pc.list_value_length(sequences["concept_ids"]))).as_py()
    # Every list column is a parallel array of concept_ids in every row.
    assert parallel_list_columns(sequences) == {
        name: sequences.num_rows for name in parallel_list_columns(sequences)
    }
    assert {"dates", "ages", "visit_segments", "epoch_times"} <= set(parallel_list_columns(sequences))
    # --include_death: patients in the death table end with cehrbert_data's death token.
    tokens = pc.list_flatten(sequences["concept_ids"])
    assert pc.sum(pc.equal(tokens, "[DEATH]")).as_py() > 0


@pytest.mark.slow
def test_cleanup_makes_the_sequences_trainable(step2_run, pipeline_env, tmp_path):
    assert step2_run["result"].returncode == 0
    raw = tmp_path / "raw"
    # The training split, what cehrgpt's runner reads (one folder of part files).
    shutil.copytree(step2_run["output"] / "patient_sequence" / "train", raw)
    raw_tokens = pc.unique(pc.list_flatten(pq.read_table(raw)["concept_ids"])).to_pylist()
    malformed = malformed_time_tokens(raw_tokens)
    assert malformed and all(token.startswith("i-D-") for token in malformed)

    # cehrgpt's tokenizer training, as its pre-training runner calls it, rejects the raw sequences...
    training = train_tokenizer(raw, pipeline_env, tmp_path / "hf_raw")
    assert training.returncode != 0
    assert "Invalid time token: i-D-" in training.stderr

    # ...and accepts them once cleaned.
    cleaned = tmp_path / "cleaned"
    shutil.copytree(raw, cleaned)
    # cleanup_tokens.py writes Spark's .crc files byte for byte as Spark does (checked on Spark's own).
    spark_parts = sorted(raw.glob("part-*.parquet"))
    for part in spark_parts:
        write_hadoop_checksum(part, tmp_path / "check.crc")
        assert (tmp_path / "check.crc").read_bytes() == (raw / f".{part.name}.crc").read_bytes()
    cleanup = run_script(["cleanup_tokens.py", "--patient-sequence-dir", str(cleaned)], pipeline_env)
    assert cleanup.returncode == 0, cleanup.stderr
    assert cleanup.stdout.strip().splitlines()[-1].startswith("Removed ")
    assert "negative i-D" in cleanup.stdout
    table = pq.read_table(cleaned)
    assert not malformed_time_tokens(pc.unique(pc.list_flatten(table["concept_ids"])).to_pylist())
    assert parallel_list_columns(table) == {name: table.num_rows for name in parallel_list_columns(table)}
    assert pc.all(pc.equal(table["num_of_concepts"], pc.list_value_length(table["concept_ids"]))).as_py()
    for part in sorted(cleaned.glob("part-*.parquet")):
        write_hadoop_checksum(part, tmp_path / "check.crc")
        assert (tmp_path / "check.crc").read_bytes() == (cleaned / f".{part.name}.crc").read_bytes()

    training = train_tokenizer(cleaned, pipeline_env, tmp_path / "hf_cleaned")
    assert training.returncode == 0, training.stderr[-3000:]
    assert "Invalid time token" not in training.stderr
    assert int(training.stdout.strip().splitlines()[-1].split()[-1]) > 50  # vocabulary size


TRAIN_TOKENIZER = """
import sys
from cehrbert.runners.hf_runner_argument_dataclass import DataTrainingArguments
from cehrbert.runners.runner_util import load_parquet_as_dataset
from cehrgpt.models.pretrained_embeddings import PretrainedEmbeddings
from cehrgpt.models.tokenization_hf_cehrgpt import CehrGptTokenizer

folder = sys.argv[1]
dataset = load_parquet_as_dataset(folder)
arguments = DataTrainingArguments(data_folder=folder, dataset_prepared_path=sys.argv[2],
                                  preprocessing_num_workers=1)
tokenizer = CehrGptTokenizer.train_tokenizer(dataset, {}, arguments, PretrainedEmbeddings(None))
print("vocabulary size", tokenizer.vocab_size)
"""


def train_tokenizer(folder: Path, env: dict[str, str], scratch: Path) -> subprocess.CompletedProcess:
    """cehrgpt's tokenizer training on one folder of part files, in its own process and HF cache."""
    scratch.mkdir()
    environment = dict(env, HF_HOME=str(scratch / "hf"), HF_DATASETS_CACHE=str(scratch / "hf" / "datasets"))
    return run_script(["-c", TRAIN_TOKENIZER, str(folder), str(scratch / "prepared")], environment, timeout=600)


@pytest.mark.slow
def test_a_failing_app_stops_the_script_with_its_log(pipeline_env, tmp_path, demo_omop_parquet):
    """A corrupt table file: the first app fails, the second never starts, the log's end is shown."""
    input_folder = tmp_path / "omop"
    for table in REQUIRED_TABLES:
        (input_folder / table).mkdir(parents=True)
        if table != "condition_occurrence":
            for part in (demo_omop_parquet / table).glob("*.parquet"):
                shutil.copy(part, input_folder / table / part.name)
    (input_folder / "condition_occurrence" / "part-00000.parquet").write_bytes(b"this is not parquet")
    output_folder = tmp_path / "data"
    result = run_step2(["--input_folder", str(input_folder), "--output_folder", str(output_folder),
                        "--start_date", "1985-01-01"], pipeline_env)
    assert result.returncode == 1
    log = output_folder / "logs" / "generate_included_concept_list.log"
    assert "error: generate_included_concept_list failed (exit" in result.stderr
    assert f"full log: {log}" in result.stderr
    assert "---- last 40 lines of" in result.stderr
    assert "== generate_training_data" not in result.stdout
    assert "Patient sequences written" not in result.stdout
    assert not (output_folder / "patient_sequence").exists()


def test_missing_tables_are_named_before_spark_starts(pipeline_env, tmp_path):
    input_folder = tmp_path / "omop"
    for table in ["person", "visit_occurrence", "drug_exposure"]:
        (input_folder / table).mkdir(parents=True)
    output_folder = tmp_path / "data"
    result = run_step2(["--input_folder", str(input_folder), "--output_folder", str(output_folder),
                        "--start_date", "1985-01-01"], pipeline_env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: input folder {input_folder} lacks the table folder(s): concept condition_occurrence "
        "procedure_occurrence (one Parquet folder per OMOP table, as export_omop.py writes them)"
    )
    assert "spark-submit" not in result.stdout
    assert not output_folder.exists()

    result = run_step2(["--input_folder", str(tmp_path / "nowhere"), "--output_folder", str(output_folder),
                        "--start_date", "1985-01-01"], pipeline_env, timeout=60)
    assert result.returncode == 1
    assert f"error: input folder '{tmp_path / 'nowhere'}' does not exist" in result.stderr


def test_java_17_is_refused_before_spark_starts(pipeline_env, tmp_path):
    input_folder = tmp_path / "omop"
    for table in REQUIRED_TABLES:
        (input_folder / table).mkdir(parents=True)
    java_home = tmp_path / "jdk17"
    (java_home / "bin").mkdir(parents=True)
    java = java_home / "bin" / "java"
    java.write_text('#!/bin/sh\necho \'openjdk version "17.0.2" 2022-01-18\' >&2\n')
    java.chmod(0o755)
    environment = dict(pipeline_env, JAVA_HOME=str(java_home))
    result = run_step2(["--input_folder", str(input_folder), "--output_folder", str(tmp_path / "data"),
                        "--start_date", "1985-01-01"], environment, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: Spark 3.1.2 needs Java 8 or 11, but {java} is Java '17.0.2': run 'source setup_env.sh'"
    )
    assert not (tmp_path / "data").exists()


def sparse_input_folder(folder: Path, megabytes_per_table: int) -> Path:
    """Step 2's input tables as sparse files of the given size (no disk used; Spark never reads them);
    the person table is a real one of 2,000 persons (the threshold is chosen from it) padded to the size."""
    for table in REQUIRED_TABLES:
        (folder / table).mkdir(parents=True)
        padding = folder / table / ("padding.bin" if table == "person" else "part-00000.parquet")
        if table == "person":
            pq.write_table(pa.table({"person_id": pa.array(range(2_000), pa.int64())}),
                           folder / table / "part-00000.parquet")
        with open(padding, "wb") as part:
            part.truncate(megabytes_per_table * 1024 * 1024 - sum(p.stat().st_size for p in (folder / table).iterdir()))
    return folder


def chosen_spark_options(result: subprocess.CompletedProcess) -> tuple[str, str]:
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    return (next(line for line in lines if line.startswith("Spark options:")),
            next(line for line in lines if line.startswith("Partitions:")))


def test_shuffle_partitions_follow_the_input_size_unless_set(pipeline_env, tmp_path):
    """--dry_run prints what it would run: one partition per 512 MB of input tables, 2 x cores at least."""
    environment = dict(pipeline_env, SPARK_SUBMIT_OPTIONS="--master local[3] --driver-memory 1g")
    big = sparse_input_folder(tmp_path / "big", 1500)  # 6 tables: 9000 MB -> 18 partitions
    arguments = ["--input_folder", str(big), "--output_folder", str(tmp_path / "data"), "--start_date", "1985-01-01",
                 "--dry_run"]
    options, partitions = chosen_spark_options(run_step2(arguments, environment, timeout=60))
    assert "--conf spark.sql.shuffle.partitions=18 " in options
    assert partitions == "Partitions:    18 (9000 MB of input tables, 3 cores)"
    assert not (tmp_path / "data").exists()

    small = sparse_input_folder(tmp_path / "small", 10)
    small_arguments = ["--input_folder", str(small), *arguments[2:]]
    options, partitions = chosen_spark_options(run_step2(small_arguments, environment, timeout=60))
    assert "--conf spark.sql.shuffle.partitions=6 " in options  # the floor: 2 x local[3]
    assert partitions == "Partitions:    6 (60 MB of input tables, 3 cores)"

    options, partitions = chosen_spark_options(run_step2([*arguments, "--shuffle_partitions", "5"], environment,
                                                         timeout=60))
    assert "--conf spark.sql.shuffle.partitions=5 " in options
    yours = dict(environment, SPARK_SUBMIT_OPTIONS=environment["SPARK_SUBMIT_OPTIONS"]
                 + " --conf spark.sql.shuffle.partitions=7")
    options, partitions = chosen_spark_options(run_step2(arguments, yours, timeout=60))
    assert options.count("spark.sql.shuffle.partitions") == 1 and options.endswith("spark.sql.shuffle.partitions=7")
    assert partitions == "Partitions:    yours (set in SPARK_SUBMIT_OPTIONS)"


def test_quick_jit_only_below_sixteen_megabytes_of_tables(pipeline_env, tmp_path):
    """C1 alone (-XX:TieredStopAtLevel=1) is faster on the demo, and 1.8x slower on 100x the demo (114 MB)."""
    environment = dict(pipeline_env, SPARK_SUBMIT_OPTIONS="--master local[2] --driver-memory 1g")

    def dry_run_options(megabytes_per_table: int, environment: dict) -> str:
        folder = tmp_path / f"in{megabytes_per_table}"
        if not folder.exists():
            sparse_input_folder(folder, megabytes_per_table)
        arguments = ["--input_folder", str(folder), "--output_folder", str(tmp_path / "data"),
                     "--start_date", "1985-01-01", "--dry_run"]
        return chosen_spark_options(run_step2(arguments, environment, timeout=60))[0]

    quick = "--driver-java-options -XX:TieredStopAtLevel=1"
    assert quick in dry_run_options(2, environment)  # 6 tables: 12 MB
    assert quick not in dry_run_options(3, environment)  # 18 MB
    yours = dict(environment, SPARK_SUBMIT_OPTIONS="--driver-java-options -Xss4m " + environment["SPARK_SUBMIT_OPTIONS"])
    options = dry_run_options(2, yours)
    assert "TieredStopAtLevel" not in options and "-Xss4m" in options


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--output_folder", "out", "--start_date", "1985-01-01"], "error: --input_folder is required"),
        (["--input_folder", "in", "--output_folder", "out", "--start_date", "01/01/1985"],
         "error: --start_date must look like YYYY-MM-DD, got '01/01/1985'"),
        (["--input_folder", "in", "--output_folder", "out", "--start_date", "1985-01-01",
          "--min_num_of_patients", "ten"], "error: --min_num_of_patients must be a whole number, got 'ten'"),
        (["--input_folder", "in", "--output_folder", "out", "--start_date", "1985-01-01", "--verbose"],
         "error: unknown option '--verbose'"),
        (["--input_folder"], "error: --input_folder needs a value"),
        (["--input_folder", "in", "--output_folder", "out", "--start_date", "1985-01-01", "--test_fraction", "1.5"],
         "error: --test_fraction must be 0 (no split) or a number between 0 and 1 such as 0.15, got '1.5'"),
        (["--input_folder", "in", "--output_folder", "out", "--start_date", "1985-01-01",
          "--shuffle_partitions", "0"], "error: --shuffle_partitions must be a positive whole number, got '0'"),
    ],
)
def test_bad_command_lines_get_one_clear_line(pipeline_env, arguments, message):
    result = run_step2(arguments, pipeline_env, timeout=60)
    assert error_line(result, alone=True).startswith(message), result.stderr


def test_unbalanced_quotes_in_spark_submit_options_are_refused(pipeline_env, tmp_path):
    input_folder = tmp_path / "omop"
    for table in REQUIRED_TABLES:
        (input_folder / table).mkdir(parents=True)
    environment = dict(pipeline_env, SPARK_SUBMIT_OPTIONS="--master 'local[2]")
    result = run_step2(["--input_folder", str(input_folder), "--output_folder", str(tmp_path / "data"),
                        "--start_date", "1985-01-01"], environment, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: SPARK_SUBMIT_OPTIONS is not a valid list of shell words: --master 'local[2]"
    assert not (tmp_path / "data").exists()


def test_help_shows_the_official_command_line(pipeline_env):
    result = run_step2(["--help"], pipeline_env, timeout=60)
    assert result.returncode == 0
    for option in ["--input_folder", "--output_folder", "--start_date", "--min_num_of_patients"]:
        assert option in result.stdout
    assert "--test_fraction F" in result.stdout and f"(default {DEFAULT_TEST_FRACTION})" in result.stdout


# ---------------------------------------------------------------------------------------------
# The held-out split (cehrgpt_tutorials.sequences.split): one function of person_id, fast tests
# ---------------------------------------------------------------------------------------------


def test_split_holds_out_the_test_fraction_and_is_nested():
    import numpy as np

    ids = np.arange(1, 100_001, dtype=np.int64)
    for fraction in (0.1, DEFAULT_TEST_FRACTION, 0.5):
        assert abs(is_test_person(ids, fraction).mean() - fraction) < 0.005
    # Growing the fraction only moves train persons to test, never back.
    assert not (is_test_person(ids, 0.1) & ~is_test_person(ids, 0.15)).any()
    # Consecutive ids are not split in blocks: both halves of the id range hold out the same share.
    assert abs(is_test_person(ids[:50_000]).mean() - is_test_person(ids[50_000:]).mean()) < 0.01


def test_split_of_one_person_matches_the_array_form_and_survives_a_new_process(pipeline_env):
    import numpy as np

    ids = [1, 2, 3, 99, 123_456_789, -7, 2**62]
    array = is_test_person(np.array(ids, dtype=np.int64))
    assert [split_of(person) for person in ids] == ["test" if flag else "train" for flag in array]
    assert all(0.0 <= split_position(person) < 1.0 for person in ids)
    # Not Python's salted hash(): another interpreter gives the same verdicts.
    other = run_script(["-c", "from cehrgpt_tutorials.sequences.split import split_of; "
                        f"print(' '.join(split_of(p) for p in {ids}))"], pipeline_env, timeout=60)
    assert other.returncode == 0, other.stderr
    assert other.stdout.split() == [split_of(person) for person in ids]


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_split_refuses_a_fraction_outside_zero_to_one(fraction):
    with pytest.raises(PipelineError, match="between 0 and 1"):
        is_test_person(5, fraction)


def test_patient_splits_folder_lists_every_person_once_with_its_split(tmp_path, pipeline_env):
    person = tmp_path / "person"
    person.mkdir()
    ids = list(range(1, 401))
    pq.write_table(pa.table({"person_id": pa.array(ids + [7], pa.int64()), "year_of_birth": [1980] * 401}),
                   person / "part-0.parquet")
    counts = write_patient_splits(person, tmp_path / "patient_splits", test_fraction=0.2)
    table = pq.read_table(tmp_path / "patient_splits")
    assert table.schema.names == ["person_id", "split"]
    assert sorted(table["person_id"].to_pylist()) == ids
    assert dict(zip(table["person_id"].to_pylist(), table["split"].to_pylist(), strict=True)) == {
        person_id: split_of(person_id, 0.2) for person_id in ids}
    assert counts == {"test": sum(split_of(p, 0.2) == "test" for p in ids),
                      "train": sum(split_of(p, 0.2) == "train" for p in ids)}
    # The command step 2 runs; a person folder without person_id is one clear line.
    pq.write_table(pa.table({"id": [1]}), tmp_path / "bad.parquet")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad.parquet").rename(tmp_path / "bad" / "part-0.parquet")
    result = run_script(["-m", "cehrgpt_tutorials.sequences.split", str(tmp_path / "bad"),
                         str(tmp_path / "out")], pipeline_env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'bad'} has no person_id column: not an OMOP person table"
    assert not (tmp_path / "out").exists()
