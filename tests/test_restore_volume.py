"""Restore at volume: the real CDM's side of the plausibility checks is computed once per CDM and
reused (cehrgpt_tutorials.omop.plausibility --cache, which restore_synthetic.sh passes), keyed so a
changed real CDM is recomputed. On a real PostgreSQL server, on copies of the demo CDM with planted
implausible records (the demo itself has none, and zeros would not tell reused counts from others).
"""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import output_of, run_script, run_sh
from helpers import error_line, execute, query

from cehrgpt_tutorials.omop.plausibility import CHECKS

# Planted in the real copy: one visit dated 1900 (before birth, outside every observation period),
# one condition of a person who does not exist.
PLANTED = """
INSERT INTO {s}.visit_occurrence (visit_occurrence_id, person_id, visit_concept_id, visit_start_date, visit_end_date,
    visit_type_concept_id)
SELECT max(visit_occurrence_id) + 1, min(person_id), 9202, DATE '1900-01-02', DATE '1900-01-02', 32817
FROM {s}.visit_occurrence;
INSERT INTO {s}.condition_occurrence (condition_occurrence_id, person_id, condition_concept_id, condition_start_date,
    condition_type_concept_id)
SELECT max(condition_occurrence_id) + 1, -1, 0, DATE '2010-01-01', 32817 FROM {s}.condition_occurrence;
"""
REUSED = re.compile(r"^real CDM's plausibility side: reused \(key ([0-9a-f]{12})", re.M)
COMPUTED = re.compile(r"^real CDM's plausibility side: computed .*key ([0-9a-f]{12}) saved", re.M)


def copy_schema(uri: str, source: str, target: str) -> None:
    tables = [row[0] for row in query(uri, "SELECT table_name FROM information_schema.tables "
                                           "WHERE table_schema = %s AND table_type = 'BASE TABLE'", (source,))]
    execute(uri, f"DROP SCHEMA IF EXISTS {target} CASCADE; CREATE SCHEMA {target}; "
            + "".join(f"CREATE TABLE {target}.{table} AS TABLE {source}.{table};" for table in tables))


@pytest.fixture
def cdms(demo_cdm, request) -> dict:
    """A real CDM of this test's own (the demo copied, with PLANTED) and a synthetic one (the demo copied)."""
    uri = demo_cdm["uri"]
    name = re.sub(r"\W", "_", request.node.name)[:40]
    real, synthetic = f"real_{name}", f"synthetic_{name}"
    copy_schema(uri, "cdm", real)
    execute(uri, PLANTED.format(s=real))
    copy_schema(uri, "cdm", synthetic)
    yield {"uri": uri, "real": real, "synthetic": synthetic}
    execute(uri, f"DROP SCHEMA {real} CASCADE; DROP SCHEMA {synthetic} CASCADE")


def plausibility(cdms: dict, environment: dict, *options):
    return run_script(["-m", "cehrgpt_tutorials.omop.plausibility", "--schema", cdms["synthetic"],
                       "--source-schema", cdms["real"], "--dsn", cdms["uri"], *map(str, options)],
                      environment, timeout=120)


def counts_table(stdout: str) -> dict[str, list[str]]:
    """The printed table: check -> [synthetic count, real count]."""
    rows = {line.split()[0]: line.split()[1:] for line in stdout.splitlines()
            if line.startswith("  ") and len(line.split()) == 3 and line.split()[0] in CHECKS}
    assert set(rows) == set(CHECKS), stdout
    return rows


def real_counts(stdout: str) -> dict[str, int]:
    return {check: int(values[1].replace(",", "")) for check, values in counts_table(stdout).items()}


def test_a_second_run_takes_the_real_cdms_counts_from_the_cache_and_leaves_the_file_as_it_was(
        cdms, pipeline_env, tmp_path):
    cache = tmp_path / "real_cdm_plausibility.json"
    first = plausibility(cdms, pipeline_env, "--cache", cache)
    assert first.returncode == 0, output_of(first)
    [key] = COMPUTED.findall(first.stdout)
    written = (cache.read_bytes(), cache.stat().st_mtime_ns)

    second = plausibility(cdms, pipeline_env, "--cache", cache)
    assert second.returncode == 0, output_of(second)
    assert REUSED.findall(second.stdout) == [key] and not COMPUTED.search(second.stdout), second.stdout
    assert (cache.read_bytes(), cache.stat().st_mtime_ns) == written

    # The counts shown are the file's, not recomputed ones: a count edited in the file (same key) is
    # what the next run prints.
    entry = json.loads(cache.read_text())
    entry["counts"]["events_without_person"] = 999
    cache.write_text(json.dumps(entry))
    third = plausibility(cdms, pipeline_env, "--cache", cache)
    assert REUSED.findall(third.stdout) == [key], third.stdout
    assert real_counts(third.stdout)["events_without_person"] == 999


def test_a_row_added_to_the_real_cdm_gets_a_new_key_and_recomputed_counts(cdms, pipeline_env, tmp_path):
    cache = tmp_path / "real_cdm_plausibility.json"
    first = plausibility(cdms, pipeline_env, "--cache", cache)
    [old_key] = COMPUTED.findall(first.stdout)
    # One more visit dated 1900: one more before birth and outside any observation period.
    execute(cdms["uri"], f"INSERT INTO {cdms['real']}.visit_occurrence (visit_occurrence_id, person_id, "
            f"visit_concept_id, visit_start_date, visit_end_date, visit_type_concept_id) SELECT "
            f"max(visit_occurrence_id) + 1, min(person_id), 9202, DATE '1900-01-03', DATE '1900-01-03', 32817 "
            f"FROM {cdms['real']}.visit_occurrence")

    second = plausibility(cdms, pipeline_env, "--cache", cache)
    assert second.returncode == 0, output_of(second)
    [new_key] = COMPUTED.findall(second.stdout)
    assert new_key != old_key and not REUSED.search(second.stdout)
    assert f"changed since key {old_key}" in second.stdout
    assert json.loads(cache.read_text())["key"].startswith(new_key)
    before, after = real_counts(first.stdout), real_counts(second.stdout)
    assert after["visits_outside_observation_period"] == before["visits_outside_observation_period"] + 1
    assert after["events_before_birth"] == before["events_before_birth"] + 1


def test_a_date_changed_in_place_in_the_real_cdm_gets_recomputed_counts(cdms, pipeline_env, tmp_path):
    # Same row counts, same ids: a key of counts and max ids would reuse stale numbers here.
    cache = tmp_path / "real_cdm_plausibility.json"
    first = plausibility(cdms, pipeline_env, "--cache", cache)
    [old_key] = COMPUTED.findall(first.stdout)
    execute(cdms["uri"], f"UPDATE {cdms['real']}.condition_occurrence SET condition_start_date = DATE '1900-01-01' "
            f"WHERE condition_occurrence_id = (SELECT min(condition_occurrence_id) FROM {cdms['real']}.condition_occurrence "
            f"WHERE person_id > 0)")

    second = plausibility(cdms, pipeline_env, "--cache", cache)
    [new_key] = COMPUTED.findall(second.stdout)
    assert new_key != old_key
    assert real_counts(second.stdout)["events_before_birth"] == real_counts(first.stdout)["events_before_birth"] + 1


def test_the_printed_counts_are_the_same_without_the_cache_computed_and_reused(cdms, pipeline_env, tmp_path):
    cache = tmp_path / "real_cdm_plausibility.json"
    runs = [plausibility(cdms, pipeline_env), plausibility(cdms, pipeline_env, "--cache", cache),
            plausibility(cdms, pipeline_env, "--cache", cache)]
    assert [bool(REUSED.search(run.stdout)) for run in runs] == [False, False, True]
    tables = [counts_table(run.stdout) for run in runs]
    assert tables[0] == tables[1] == tables[2]
    # The planted records, so the comparison is not of zeros.
    assert real_counts(runs[0].stdout)["events_without_person"] == 1
    assert real_counts(runs[0].stdout)["visits_outside_observation_period"] >= 1


def test_a_cache_file_that_is_not_ours_is_refused_and_left_as_it_was(cdms, pipeline_env, tmp_path):
    cache = tmp_path / "notes.json"
    cache.write_text('{"my": "notes"}\n')
    result = plausibility(cdms, pipeline_env, "--cache", cache)
    assert error_line(result) == (f"error: --cache {cache} is not a plausibility cache written by this tutorial; "
                                  "name another file (it is left as it is)")
    assert cache.read_text() == '{"my": "notes"}\n'


@pytest.mark.slow
def test_a_second_restore_reuses_the_real_cdms_counts_from_the_synthetic_data_folder(
        cdms, demo_patient_sequence, demo_omop_parquet, pipeline_env, tmp_path):
    # Real sequences as the "generated" input (no model: they all convert, the same way every run).
    sample = tmp_path / "synthetic" / "top_p10000_constrained"
    (sample / "generated_sequences").mkdir(parents=True)
    real = ds.dataset(demo_patient_sequence, format="parquet").to_table(columns=["concept_ids"]).slice(0, 30)
    real = real.append_column("person_id", pa.array(range(1, real.num_rows + 1), pa.int64()))
    pq.write_table(real, sample / "generated_sequences" / "real.parquet")
    arguments = ["--sample-folder", sample, "--source-omop-folder", demo_omop_parquet, "--dsn", cdms["uri"],
                 "--source-schema", cdms["real"], "--schema", cdms["synthetic"], "--cpu-cores", 1]
    cache = tmp_path / "synthetic" / "real_cdm_plausibility.json"

    first = run_sh("restore_synthetic.sh", arguments, pipeline_env)
    assert first.returncode == 0, output_of(first)
    [key] = COMPUTED.findall(first.stdout)
    written = (cache.read_bytes(), cache.stat().st_mtime_ns)
    second = run_sh("restore_synthetic.sh", arguments, pipeline_env)
    assert second.returncode == 0, output_of(second)
    assert REUSED.findall(second.stdout) == [key] and not COMPUTED.search(second.stdout), second.stdout
    assert (cache.read_bytes(), cache.stat().st_mtime_ns) == written
    assert counts_table(second.stdout) == counts_table(first.stdout)
    assert real_counts(first.stdout)["events_without_person"] == 1
