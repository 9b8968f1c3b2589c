"""omop_pipeline.sh's decisions (cehrgpt_tutorials/pipeline/omop_pipeline_settings.py), without the converter
or Spark: the script only evaluates what plan() prints."""

from __future__ import annotations

from pathlib import Path

import pytest

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.pipeline import omop_pipeline_settings as settings


def folders(tmp_path: Path) -> tuple[Path, Path]:
    sequences, source = tmp_path / "generated_sequences", tmp_path / "omop"
    sequences.mkdir()
    (sequences / "part-0.parquet").write_bytes(b"")
    for table in ("concept", "concept_ancestor", "drug_strength"):
        (source / table).mkdir(parents=True)
    return sequences, source


def test_plan_resolves_the_folders_and_lists_the_vocabulary_to_copy(tmp_path):
    sequences, source = folders(tmp_path)
    (tmp_path / "link").symlink_to(sequences)
    plan = settings.plan(["-p", str(tmp_path / "link"), "--omop-folder=" + str(tmp_path / "new" / "restored/"),
                          "-s", str(source), "-c", "3"], {})
    assert plan["PATIENT_SEQUENCE_FOLDER"] == sequences.resolve()
    assert plan["OMOP_FOLDER"] == (tmp_path / "new").resolve() / "restored"
    assert (tmp_path / "new").is_dir() and not (tmp_path / "new" / "restored").exists()
    assert (plan["BUFFER_SIZE"], plan["CPU_CORES"]) == (1280, 3)
    assert plan["DOMAIN_TABLES"] == "condition_occurrence drug_exposure procedure_occurrence measurement"
    assert plan["VOCABULARY_TABLES"] == "concept concept_ancestor drug_strength"  # in the order they are copied
    assert settings.plan(["-p", "x", "--help"], {}) == {"SHOW_HELP": True}


@pytest.mark.parametrize(("change", "message"), [
    ({"-p": None}, "--patient-sequence-folder is required (see --help)"),
    ({"-b": "0"}, "--buffer-size must be a positive whole number, got '0'"),
    ({"-c": "two"}, "--cpu-cores must be a positive whole number, got 'two'"),
    ({"-p": "/nonexistent"}, "patient sequence folder '/nonexistent' does not exist (run generate_synthetic.sh first)"),
    ({"-d": "person observation"}, "--domain-tables: 'observation' is not a table the converter writes "
                                   "(person visit_occurrence condition_occurrence procedure_occurrence drug_exposure "
                                   "death measurement)"),
    ({"-o": "SOURCE"}, "--omop-folder must differ from --source-omop-folder: its tables are deleted and rewritten"),
    ({"--bogus=1": ""}, "unknown option '--bogus' (see --help)"),
])
def test_bad_command_lines_are_one_line_before_anything_is_written(tmp_path, change, message):
    sequences, source = folders(tmp_path)
    options = {"-p": str(sequences), "-o": str(tmp_path / "out"), "-s": str(source)}
    for option, value in change.items():
        options[option] = str(source) + "/" if value == "SOURCE" else value
    arguments = [word for option, value in options.items() if value is not None
                 for word in ((option,) if option.startswith("--") else (option, value))]
    with pytest.raises(PipelineError) as error:
        settings.plan(arguments, {})
    assert str(error.value) == message
    assert not (tmp_path / "out").exists()


def test_sequences_without_parquet_files_and_a_source_without_concept_are_refused(tmp_path):
    sequences, source = folders(tmp_path)
    (sequences / "part-0.parquet").rename(sequences / ".part-0.parquet")  # hidden: not the generator's output
    with pytest.raises(PipelineError, match="has no Parquet files"):
        settings.plan(["-p", str(sequences), "-o", str(tmp_path / "out"), "-s", str(source)], {})
    (sequences / "part-0.parquet").write_bytes(b"")
    with pytest.raises(PipelineError, match="has no concept/ table"):
        settings.plan(["-p", str(sequences), "-o", str(tmp_path / "out"), "-s", str(tmp_path)], {})


def test_usage_shows_the_defaults():
    text = settings.usage("omop_pipeline.sh", {"OMP_NUM_THREADS": "6"})
    assert "(default 1280)" in text and "this machine's 6 cores" in text and "\n3 no sequence could be converted" in text
