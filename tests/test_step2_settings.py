"""Step 2's decisions (cehrgpt_tutorials/pipeline/step2_settings.py) and the scripts' shared parsing
(shell_settings.py), without Spark: create_cehrgpt_pretraining_data.sh only evaluates what they print."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cehrgpt_tutorials import environment
from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.pipeline import step2_settings as step2
from cehrgpt_tutorials.pipeline.shell_settings import (
    CommandLine,
    positive_whole_number,
    shell_assignments,
    visible_cores,
)
from cehrgpt_tutorials.sequences.split import SPLIT_MARKER

REQUIRED = ["--input_folder", "in", "--output_folder", "out", "--start_date", "1985-01-01"]


def input_folder(folder: Path, tables=step2.REQUIRED_TABLES) -> Path:
    for table in tables:
        (folder / table).mkdir(parents=True)
    return folder


# --- the command line ------------------------------------------------------------------------------


def test_options_in_both_forms_and_defaults():
    options = step2.parse_options(["--input_folder=in", "--output_folder", "out", "--start_date", "1985-01-01",
                                   "--dry_run", "--test_fraction", ".2"])
    assert options == step2.Step2Options("in", "out", "1985-01-01", test_fraction=".2", dry_run=True)
    assert step2.parse_options([*REQUIRED, "--help", "--verbose"]) is None  # help stops the parsing
    with pytest.raises(PipelineError, match="^unknown option '--verbose'"):
        step2.parse_options(["--verbose", "--help"])


@pytest.mark.parametrize(("extra", "message"), [
    (["--start_date", "01/01/1985"], "--start_date must look like YYYY-MM-DD, got '01/01/1985'"),
    (["--min_num_of_patients", "ten"], "--min_num_of_patients must be a whole number, got 'ten'"),
    (["--test_fraction", "1.5"], "--test_fraction must be 0 (no split) or a number between 0 and 1 such as 0.15, "
                                 "got '1.5'"),
    (["--shuffle_partitions", "0"], "--shuffle_partitions must be a positive whole number, got '0'"),
    (["--shuffle_partitions", "-3"], "--shuffle_partitions must be a positive whole number, got '-3'"),
    (["--dry_run=1"], "unknown option '--dry_run' (see --help)"),
    (["extra"], "unexpected argument 'extra' (see --help)"),
    (["--shuffle_partitions"], "--shuffle_partitions needs a value (see --help)"),
])
def test_bad_options_are_one_line(extra, message):
    with pytest.raises(PipelineError) as error:
        step2.parse_options(REQUIRED + extra)
    assert str(error.value) == message


def test_required_options_are_named_in_order():
    with pytest.raises(PipelineError, match=r"^--input_folder is required \(see --help\)$"):
        step2.parse_options(["--output_folder", "out"])
    with pytest.raises(PipelineError, match="^--start_date is required"):
        step2.parse_options(REQUIRED[:4])


def test_omop_pipeline_style_command_line_with_short_options():
    command_line = CommandLine(valued={"-p": "folder", "--folder": "folder"}, flags={"-h": "help"})
    assert command_line.parse(["-p", "a"]) == {"folder": "a"}
    assert command_line.parse(["--folder=a=b"]) == {"folder": "a=b"}
    with pytest.raises(PipelineError, match="^unknown option 'stray'"):
        command_line.parse(["stray"])
    with pytest.raises(PipelineError, match="^unknown option '--other'"):
        command_line.parse(["--other=1"])


def test_positive_whole_number():
    assert positive_whole_number("--n", "007") == 7
    for bad in ("0", "00", "", "1.5", "x", "٣"):
        with pytest.raises(PipelineError, match="--n must be a positive whole number"):
            positive_whole_number("--n", bad)


def test_shell_assignments_survive_eval_whatever_the_value():
    values = {"A": "it's $HOME `x` \"q\"", "B": True, "C": None, "D": Path("/a b")}
    script = shell_assignments(values) + '\nprintf "%s|" "$A" "$B" "$C" "$D"'
    assert subprocess.run(["sh", "-c", script], capture_output=True, text=True).stdout == \
        "it's $HOME `x` \"q\"|1||/a b|"


def test_visible_cores_counts_as_nproc():
    affinity = len(os.sched_getaffinity(0))
    assert visible_cores({}) == affinity
    assert visible_cores({"OMP_NUM_THREADS": "3,2"}) == 3
    assert visible_cores({"OMP_NUM_THREADS": "8", "OMP_THREAD_LIMIT": "5"}) == 5
    assert visible_cores({"OMP_NUM_THREADS": "x"}) == affinity


# --- checks before Spark -----------------------------------------------------------------------------


def test_input_folder_is_resolved_and_must_hold_the_tables(tmp_path):
    with pytest.raises(PipelineError, match="does not exist"):
        step2.check_input_folder(str(tmp_path / "nowhere"))
    input_folder(tmp_path / "omop", ["person", "visit_occurrence", "drug_exposure"])
    with pytest.raises(PipelineError) as error:
        step2.check_input_folder(str(tmp_path / "omop"))
    assert "lacks the table folder(s): concept condition_occurrence procedure_occurrence (" in str(error.value)
    input_folder(tmp_path / "full")
    (tmp_path / "link").symlink_to(tmp_path / "full")
    assert step2.check_input_folder(str(tmp_path / "link")) == (tmp_path / "full").resolve()


def test_java_versions_spark_runs_on():
    assert environment.java_version_of('openjdk version "11.0.20" 2023-07-18\nOpenJDK Runtime') == "11.0.20"
    assert environment.java_version_of('Picked up JAVA_TOOL_OPTIONS: -Xmx1g\njava version "1.8.0_1"') == ""
    assert [environment.spark_runs_on_java(v) for v in ("1.8.0_292", "1.8", "8", "11", "11.0.2", "17.0.2", "110", "")] == \
        [True, True, True, True, True, False, False, False]


def test_java_17_is_refused_with_what_to_do(tmp_path):
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text('#!/bin/sh\necho \'openjdk version "17.0.2" 2022-01-18\' >&2\n')
    java.chmod(0o755)
    with pytest.raises(PipelineError) as error:
        step2.check_java({"JAVA_HOME": str(tmp_path)})
    assert str(error.value) == f"Spark 3.1.2 needs Java 8 or 11, but {java} is Java '17.0.2': run 'source setup_env.sh'"
    with pytest.raises(PipelineError, match="no Java found"):
        step2.check_java({"JAVA_HOME": str(tmp_path / "none")})


# --- Spark settings --------------------------------------------------------------------------------


def test_tables_megabytes_counts_the_tables_the_apps_read_through_links(tmp_path):
    folder = input_folder(tmp_path / "omop")
    with open(folder / "person" / "part-0.parquet", "wb") as part:
        part.truncate(3 * 1024 * 1024)
    (tmp_path / "elsewhere").mkdir()
    with open(tmp_path / "elsewhere" / "part-0.parquet", "wb") as part:
        part.truncate(2 * 1024 * 1024)
    (folder / "death").symlink_to(tmp_path / "elsewhere")
    (folder / "measurement").mkdir()  # not read by the apps
    (folder / "measurement" / "big").write_bytes(b"x" * (2 * 1024 * 1024))
    assert step2.tables_megabytes(folder) == 5


def test_partitions_follow_the_input_unless_set():
    assert step2.shuffle_partitions("", "", tables_mb=9000, cores=3) == ("18", "18 (9000 MB of input tables, 3 cores)")
    assert step2.shuffle_partitions("", "", tables_mb=60, cores=3) == ("6", "6 (60 MB of input tables, 3 cores)")
    assert step2.shuffle_partitions("", "", tables_mb=513, cores=0)[0] == "2"  # rounded up
    assert step2.shuffle_partitions("5", "set in SPARK_SUBMIT_OPTIONS", 9000, 3) == ("5", "5 (--shuffle_partitions)")
    assert step2.shuffle_partitions("", "set in SPARK_SUBMIT_OPTIONS", 9000, 3) == \
        ("", "yours (set in SPARK_SUBMIT_OPTIONS)")


def test_cores_come_from_the_last_local_master_else_the_machine():
    assert step2.spark_cores("--master local[3] --driver-memory 1g", {}) == 3
    assert step2.spark_cores("--master local[2,4] --master local[5]", {}) == 5
    assert step2.spark_cores("--master local[*]", {"OMP_NUM_THREADS": "7"}) == 7
    assert step2.spark_cores("--master spark://h:7077", {"OMP_NUM_THREADS": "4"}) == 4


def test_quick_jit_only_on_small_input_and_never_over_your_java_options():
    assert step2.quick_jit(16, users_java_options=False) and not step2.quick_jit(17, users_java_options=False)
    assert not step2.quick_jit(1, users_java_options=True)
    assert step2.user_java_options("--driver-java-options -Xss4m", [])
    assert step2.user_java_options("--conf spark.executor.extraJavaOptions=-Xss4m", [])
    assert step2.user_java_options("", ["  spark.driver.extraJavaOptions -Xss4m"])
    assert not step2.user_java_options("--master local[2]", ["# spark.driver.extraJavaOptions -Xss4m"])
    assert step2.tuning_options(True, "6") == \
        "--driver-java-options -XX:TieredStopAtLevel=1 --conf spark.sql.shuffle.partitions=6"
    assert step2.tuning_options(False, "") == ""


def test_spark_defaults_of_setup_env_are_not_the_users(tmp_path):
    environ = {"SPARK_HOME": str(tmp_path)}
    assert step2.spark_defaults_path(environ) == tmp_path / "conf" / "spark-defaults.conf"
    assert step2.spark_defaults_path({"SPARK_CONF_DIR": "/c", **environ}) == Path("/c/spark-defaults.conf")
    assert step2.read_spark_defaults(tmp_path / "none.conf") == []
    ours = ["# >>> cehrgpt-tutorial (setup_env.sh)", "spark.sql.shuffle.partitions 4", "# <<< cehrgpt-tutorial",
            "spark.driver.memory 2g"]
    assert environment.outside_tutorial_block(ours) == ["spark.driver.memory 2g"]
    assert step2.user_partitions("", ours, Path("d.conf")) == ""
    assert step2.user_partitions("", [*ours, "spark.sql.shuffle.partitions 9"], Path("d.conf")) == "set in d.conf"
    assert step2.user_partitions("--conf spark.sql.shuffle.partitions=7", [], Path("d.conf")) == \
        "set in SPARK_SUBMIT_OPTIONS"
    # A block never closed runs to the end of the file, as sed's range did.
    assert environment.outside_tutorial_block(["a", "# >>> cehrgpt-tutorial", "b"]) == ["a"]


# --- the split, the links, the whole plan --------------------------------------------------------------


def test_the_split_is_yours_ours_or_none(tmp_path, capsys):
    omop, out = input_folder(tmp_path / "omop"), tmp_path / "out"
    assert step2.plan_split(omop, out, "") == step2.SplitPlan(
        "ours", str(out / "patient_splits"), f"{out / 'patient_splits'} (patient_sequence/train and /test)")
    assert step2.plan_split(omop, out, "0").source == "none"
    (omop / "patient_splits").mkdir()
    (omop / "patient_splits" / SPLIT_MARKER).write_text("{}")  # ours, from a run with the same folder in and out
    assert step2.plan_split(omop, out, "0.2").source == "ours"
    (omop / "patient_splits" / SPLIT_MARKER).unlink()
    assert step2.plan_split(omop, out, "0.2") == step2.SplitPlan(
        "yours", str(omop / "patient_splits"), f"{omop / 'patient_splits'} (your own)")
    assert "warning: --test_fraction 0.2 is ignored" in capsys.readouterr().err
    with pytest.raises(PipelineError, match="--test_fraction 0, but .* would still split the patients"):
        step2.plan_split(omop, out, "0")


def test_stage_links_the_tables_the_split_and_the_concept_list(tmp_path):
    omop = input_folder(tmp_path / "omop", [*step2.REQUIRED_TABLES, "death"])
    out, staging = tmp_path / "out", tmp_path / "out" / ".staging"
    staging.mkdir(parents=True)
    step2.stage(omop, out, staging, "ours")
    links = {path.name: os.readlink(path) for path in (staging / "spark_input").iterdir()}
    assert links == {**{table: str(omop / table) for table in [*step2.REQUIRED_TABLES, "death"]},
                     "patient_splits": str(out / "patient_splits"), "qualified_concept_list": "../qualified_concept_list"}
    # No split: our earlier one goes, the user's folders stay.
    (out / "patient_splits").mkdir()
    (out / "patient_splits" / SPLIT_MARKER).write_text("{}")
    other = tmp_path / "other"
    other.mkdir()
    step2.stage(omop, out, other, "none")
    assert not (out / "patient_splits").exists()
    assert "patient_splits" not in {path.name for path in (other / "spark_input").iterdir()}
    with pytest.raises(PipelineError, match="cannot link the input tables"):
        step2.stage(omop, out, other, "none")  # spark_input exists already


def test_plan_prints_every_setting_the_script_reads(tmp_path, monkeypatch):
    omop = input_folder(tmp_path / "omop", [*step2.REQUIRED_TABLES, "death"])
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text('#!/bin/sh\necho \'openjdk version "11.0.2"\' >&2\n')
    java.chmod(0o755)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "spark-submit").symlink_to(java)
    environ = {"PATH": str(tmp_path / "bin"), "JAVA_HOME": str(tmp_path / "jdk"), "SPARK_HOME": str(tmp_path),
               "SPARK_SUBMIT_OPTIONS": "--master local[2]"}
    out = tmp_path / "it's out"
    settings = step2.plan(["--input_folder", str(omop), "--output_folder", str(out), "--start_date", "1985-01-01"],
                          environ)
    assert settings["TUNING_OPTIONS"] == \
        "--driver-java-options -XX:TieredStopAtLevel=1 --conf spark.sql.shuffle.partitions=4"
    assert settings["SPARK_OPTIONS_NOTE"] == settings["TUNING_OPTIONS"] + " --master local[2]"
    assert settings["PARTITIONS_NOTE"] == "4 (0 MB of input tables, 2 cores)"
    assert settings["JAVA_NOTE"] == f"{java} (11.0.2)"
    assert settings["DEATH_OPTION"] == "--include_death"
    assert settings["SEQUENCE_FOLDERS"] == "patient_sequence/train patient_sequence/test"
    assert settings["NEXT_STEP"] == \
        f"python cleanup_tokens.py --patient-sequence-dir '{tmp_path}/it'\\''s out/patient_sequence'"
    assert not out.exists()  # nothing is written before the dry run's exit
    assert step2.plan(["-h"], environ) == {"SHOW_HELP": True}
    with pytest.raises(PipelineError, match="spark-submit is not on PATH"):
        step2.plan(["--input_folder", str(omop), "--output_folder", str(out), "--start_date", "1985-01-01"],
                   dict(environ, PATH="/nonexistent"))


def test_usage_names_every_option_and_the_defaults():
    text = step2.usage("create_cehrgpt_pretraining_data.sh")
    for option in ("--input_folder", "--output_folder", "--start_date", "--min_num_of_patients", "--test_fraction F",
                   "--shuffle_partitions", "--dry_run", "(default 0.15)", "one per 512 MB"):
        assert option in text, option
