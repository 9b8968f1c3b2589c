"""python -m cehrgpt_tutorials.show_patient on hand-built OMOP tables and sequences: a real patient's
tokens beside the OMOP rows they came from (and the rows step 2 left out), a synthetic patient's
tokens beside the rows the converter restored, and the one-line errors."""

from __future__ import annotations

import datetime
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import error_line

from cehrgpt_tutorials.report.plots import TIMELINE_PATIENTS, _timeline_rows
from cehrgpt_tutorials.sequences.codes import sequences_from_lists
from cehrgpt_tutorials.sequences.facts import sequence_facts
from cehrgpt_tutorials.sequences.vocabulary import Vocabulary
from cehrgpt_tutorials.show_patient import command
from cehrgpt_tutorials.show_patient.render import SHOWN_VISITS

# cehrbert_data's patient_sequence columns and types (as Spark writes them in the demo), the ones
# show_patient reads and their neighbours: every list column is parallel to concept_ids.
SEQUENCE_SCHEMA = pa.schema([
    ("person_id", pa.int32()), ("cohort_member_id", pa.int32()), ("concept_ids", pa.list_(pa.string())),
    ("visit_segments", pa.list_(pa.int32())), ("orders", pa.list_(pa.int32())), ("dates", pa.list_(pa.int32())),
    ("ages", pa.list_(pa.int64())), ("visit_concept_orders", pa.list_(pa.int32())), ("num_of_visits", pa.int32()),
    ("num_of_concepts", pa.int64()), ("visit_concept_ids", pa.list_(pa.int32())),
    ("epoch_times", pa.list_(pa.int64())), ("split", pa.string()),
])  # fmt: skip
CONCEPTS = [
    (9202, "Outpatient Visit", "Visit"), (9203, "Emergency Room Visit", "Visit"), (9201, "Inpatient Visit", "Visit"),
    (1001, "Acute bronchitis", "Condition"), (1002, "Influenza vaccine", "Drug"), (1003, "Colonoscopy", "Procedure"),
    (4242, "Planted rare condition", "Condition"), (4243, "Rare drug of a dropped visit", "Drug"),
    (5005, "Tobacco use", "Observation"), (8532, "FEMALE", "Gender"), (8507, "MALE", "Gender"),
    (8527, "White", "Race"),
]  # fmt: skip
PROMPT = ["year:2015", "age:35", "8532", "8527"]
# Person 7's sequence and the date of each token: three visits 100 and 209 days apart (D100, D209).
VISITS = [
    ("2015-03-02", [], ["9202", "1001"]),
    ("2015-06-10", ["D100"], ["9203", "1002"]),
    ("2016-01-05", ["D209"], ["9202", "1003", "1004"]),  # 1004: a token no OMOP row has
]


def day(text: str) -> datetime.date:
    return datetime.date.fromisoformat(text)


def sequence_row(person_id: int, visits=VISITS, prompt=PROMPT) -> dict:
    """One patient_sequence row: tokens, and their parallel columns (dates in weeks, epoch_times in seconds)."""
    tokens, days, segments = list(prompt), [day(visits[0][0])] * len(prompt), [0] * len(prompt)
    for number, (date, gap, inside) in enumerate(visits):
        tokens += gap + ["[VS]", *inside, "[VE]"]
        days += [day(date)] * (len(gap) + len(inside) + 2)
        segments += [number % 2 + 1] * (len(gap) + len(inside) + 2)
    epoch = [(d - datetime.date(1970, 1, 1)).days * 86400 for d in days]
    return {
        "person_id": person_id, "cohort_member_id": person_id, "concept_ids": tokens, "visit_segments": segments,
        "orders": list(range(1, len(tokens) + 1)), "dates": [e // (86400 * 7) for e in epoch],
        "ages": [35] * len(tokens), "visit_concept_orders": [0] * len(tokens), "num_of_visits": len(visits),
        "num_of_concepts": len(tokens), "visit_concept_ids": [9202] * len(tokens), "epoch_times": epoch,
        "split": "train",
    }  # fmt: skip


def write_parquet(folder, rows: list[dict], schema: pa.Schema | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / "part-00000.parquet")


def write_omop(folder) -> None:
    """Person 7's OMOP rows: the ones behind the sequence, and the ones step 2 left out of it."""
    write_parquet(folder / "person", [
        {"person_id": 7, "gender_concept_id": 8532, "race_concept_id": 8527, "year_of_birth": 1980},
        {"person_id": 8, "gender_concept_id": 8507, "race_concept_id": 8527, "year_of_birth": 1990},
    ])  # fmt: skip
    write_parquet(folder / "visit_occurrence", [
        {"person_id": 7, "visit_concept_id": concept, "visit_start_date": day(start), "visit_end_date": day(start)}
        for concept, start in ((9202, "2015-03-02"), (9202, "2015-04-01"), (9203, "2015-06-10"), (9202, "2016-01-05"))
    ])  # fmt: skip
    write_parquet(folder / "condition_occurrence", [
        {"person_id": 7, "condition_concept_id": 1001, "condition_start_date": day("2015-03-02")},
        {"person_id": 7, "condition_concept_id": 4242, "condition_start_date": day("2015-03-02")},  # planted
    ])  # fmt: skip
    write_parquet(folder / "drug_exposure", [
        {"person_id": 7, "drug_concept_id": 1002, "drug_exposure_start_date": day("2015-06-10")},
        {"person_id": 7, "drug_concept_id": 4243, "drug_exposure_start_date": day("2015-04-01")},
        {"person_id": 7, "drug_concept_id": 0, "drug_exposure_start_date": day("2016-01-05")},
    ])  # fmt: skip
    write_parquet(folder / "procedure_occurrence", [
        {"person_id": 7, "procedure_concept_id": 1003, "procedure_date": day("2016-01-05")},
    ])  # fmt: skip
    write_parquet(folder / "measurement", [{"person_id": 7, "measurement_concept_id": 3000,
                                            "measurement_date": day("2015-03-02")}])
    write_parquet(folder / "concept", [{"concept_id": i, "concept_name": n, "domain_id": d} for i, n, d in CONCEPTS])


@pytest.fixture
def real_data(tmp_path):
    """OMOP tables, step 2's sequences (train/: a one-visit patient first, then person 7; test/:
    person 9) and its qualified_concept_list (1001, 1002, 1003: 4242 and 4243 are rare)."""
    write_omop(tmp_path / "omop")
    sequences = tmp_path / "data" / "patient_sequence"
    write_parquet(sequences / "train", [sequence_row(8, VISITS[:1]), sequence_row(7)], SEQUENCE_SCHEMA)
    write_parquet(sequences / "test", [sequence_row(9, VISITS[:2])], SEQUENCE_SCHEMA)
    write_parquet(tmp_path / "data" / "qualified_concept_list",
                  [{"standard_concept_id": c, "freq": 150} for c in (1001, 1002, 1003)])
    return tmp_path


def show(capsys, *arguments) -> list[str]:
    assert command.main(list(arguments)) == 0
    return capsys.readouterr().out.splitlines()


def show_real(capsys, root, *arguments) -> list[str]:
    return show(capsys, "--sequence-dir", str(root / "data" / "patient_sequence"), "--omop-dir", str(root / "omop"),
                *arguments)


def exit_error(stopped, capsys) -> str:
    """The one error line of a command.main that stopped (pytest.raises(SystemExit)), held to helpers.error_line's
    rule: exit code 1, one `error:` line and nothing else on stderr."""
    captured = capsys.readouterr()
    return error_line(subprocess.CompletedProcess([], stopped.value.code, captured.out, captured.err), alone=True)


def line_with(lines: list[str], *parts: str) -> int:
    """The index of the first line holding every part, in order."""
    for index, line in enumerate(lines):
        position = 0
        for part in parts:
            position = line.find(part, position)
            if position < 0:
                break
            position += len(part)
        else:
            return index
    raise AssertionError(f"no line with {parts} in:\n" + "\n".join(lines))


def test_real_tokens_stand_beside_their_omop_rows_with_names_and_dates(real_data, capsys):
    lines = show_real(capsys, real_data)
    assert lines[0].startswith("Real patient 7: training sequence in")  # person 8 has one visit only
    line_with(lines, "OMOP person 7: born 1980", "8532 FEMALE", "8527 White")
    line_with(lines, "1001", "Acute bronchitis", "condition_occurrence", "2015-03-02")
    line_with(lines, "9203", "Emergency Room Visit", "visit_occurrence", "2015-06-10")
    line_with(lines, "1002", "Influenza vaccine", "drug_exposure", "2015-06-10")
    line_with(lines, "1003", "Colonoscopy", "procedure_occurrence", "2016-01-05")
    assert "after D100 (100 days)" in lines[line_with(lines, "-- visit 2 of 3: 2015-06-10, Emergency Room Visit")]


def test_a_row_step_2_left_out_shows_as_in_omop_not_in_the_sequence(real_data, capsys):
    lines = show_real(capsys, real_data)
    visit_1, visit_2 = line_with(lines, "-- visit 1 of 3"), line_with(lines, "-- visit 2 of 3")
    heading = line_with(lines, "in OMOP, not in the sequence:")
    planted = line_with(lines, "4242", "Planted rare condition", "condition_occurrence", "2015-03-02", "rare concept")
    assert visit_1 < heading < planted < visit_2  # on visit 1's date, under visit 1
    # The visit between visits 1 and 2 that step 2 dropped, with its rare drug.
    before = line_with(lines, "in OMOP, not in the sequence, before visit 2:")
    dropped = line_with(lines, "9202", "Outpatient Visit", "visit_occurrence", "2015-04-01", "nothing kept")
    assert planted < before < dropped < line_with(lines, "4243", "drug_exposure", "2015-04-01", "rare concept") < visit_2
    line_with(lines, "0 ", "drug_exposure", "2016-01-05", "concept 0")
    line_with(lines, "1004", "-- not in OMOP on 2016-01-05")  # the other way round: a token without a row
    summary = "\n".join(lines[line_with(lines, "Step 2 kept"):])
    assert "3 of 4 visit_occurrence" in summary and "1 of 2 condition_occurrence" in summary
    assert "Not read by step 2: measurement (1 row)." in summary


def test_person_id_finds_a_held_out_patient_and_unknown_ids_fail_in_one_line(real_data, capsys):
    lines = show_real(capsys, real_data, "--person-id", "9")
    assert lines[0].startswith("Real patient 9: held-out sequence in")
    with pytest.raises(SystemExit) as stopped:
        command.main(["--sequence-dir", str(real_data / "data" / "patient_sequence"),
                           "--omop-dir", str(real_data / "omop"), "--person-id", "99"])
    assert exit_error(stopped, capsys).startswith("error: person 99 is not among the sequences in ")


@pytest.mark.parametrize("missing", ["sequences", "omop", "synthetic", "restored"])
def test_a_missing_folder_fails_with_one_line(real_data, capsys, missing):
    run = real_data / "synthetic" / "top_p10000"
    write_parquet(run / "generated_sequences", [{"person_id": 1, "concept_ids": PROMPT}])
    arguments = {
        "sequences": ["--sequence-dir", str(real_data / "nowhere"), "--omop-dir", str(real_data / "omop")],
        "omop": ["--sequence-dir", str(real_data / "data" / "patient_sequence"), "--omop-dir", str(real_data / "x")],
        "synthetic": ["--synthetic", "--synthetic-dir", str(real_data / "nowhere")],
        "restored": ["--synthetic", "--synthetic-dir", str(run)],
    }[missing]
    with pytest.raises(SystemExit) as stopped:
        command.main(arguments)
    error = exit_error(stopped, capsys)
    expected = {"sequences": "patient sequences not found", "omop": "OMOP tables not found",
                "synthetic": "synthetic data folder not found", "restored": "no restored OMOP in"}[missing]
    assert expected in error


def test_defaults_come_from_the_environment_and_random_is_seeded(real_data, capsys, monkeypatch):
    monkeypatch.setenv("CEHR_GPT_DATA_DIR", str(real_data / "data"))
    monkeypatch.setenv("OMOP_DIR", str(real_data / "omop"))
    write_parquet(real_data / "data" / "patient_sequence" / "train",
                  [sequence_row(person, VISITS) for person in (7, 10, 11, 12)], SEQUENCE_SCHEMA)
    first = show(capsys, "--random", "--seed", "3")
    assert first == show(capsys, "--random", "--seed", "3")
    person = first[0].split()[2].rstrip(":")
    assert first[-1] == f"(--random --seed 3 chose person {person}: --person-id {person} shows it again)"
    assert {show(capsys, "--random", "--seed", str(seed))[0] for seed in range(8)} != {first[0]}


def test_long_sequences_are_cut_unless_all(real_data, capsys):
    visits = [(str(day("2015-01-01") + datetime.timedelta(days=10 * n)), ["D10"] if n else [], ["9202", "1001"])
              for n in range(SHOWN_VISITS + 2)]
    write_parquet(real_data / "data" / "patient_sequence" / "train", [sequence_row(7, visits)], SEQUENCE_SCHEMA)
    lines = show_real(capsys, real_data)
    line_with(lines, "... 2 more visits (10 tokens;", "--all shows them")
    assert not any(line.startswith("-- visit 11 of 12") for line in lines)
    assert any(line.startswith("-- visit 12 of 12") for line in show_real(capsys, real_data, "--all"))
    assert max(len(line) for line in lines) <= 110  # readable in a terminal


# --------------------------------------------------------------------------------------------
# Synthetic: the tokens beside the OMOP rows cehrgpt's converter restored from them.
# --------------------------------------------------------------------------------------------

# Dated as the converter dates it: 1 January 2010, +30 days, +2 inpatient days, +10 days.
SYNTHETIC = ["year:2010", "age:40", "8507", "Race/0", "[VS]", "9202", "1001", "5005", "[VE]", "D30", "[VS]", "9201",
             "1002", "i-D2", "Discharge/0", "[VE]", "D10", "[VS]", "[DEATH]", "[VE]"]  # fmt: skip


def write_synthetic_run(run) -> None:
    """Generated sequences (person 2: three visits but not restored; person 3) and person 3's restored OMOP."""
    other = ["year:2011", "age:20", "8532", "Race/0"] + ["[VS]", "9202", "1001", "[VE]", "D7"] * 3
    write_parquet(run / "generated_sequences",
                  [{"person_id": 2, "concept_ids": other[:-1]}, {"person_id": 3, "concept_ids": SYNTHETIC}])
    restored = run / "restored_omop"
    write_parquet(restored / "person", [{"person_id": 3, "gender_concept_id": 8507, "race_concept_id": 0,
                                         "year_of_birth": 1970}])
    write_parquet(restored / "visit_occurrence", [
        {"person_id": 3, "visit_concept_id": 9202, "visit_start_date": day("2010-01-01"),
         "visit_end_date": day("2010-01-01"), "discharged_to_concept_id": 0},
        {"person_id": 3, "visit_concept_id": 9201, "visit_start_date": day("2010-01-31"),
         "visit_end_date": day("2010-02-02"), "discharged_to_concept_id": 0},
    ])  # fmt: skip
    write_parquet(restored / "condition_occurrence", [{"person_id": 3, "condition_concept_id": 1001,
                                                       "condition_start_date": day("2010-01-01")}])
    write_parquet(restored / "drug_exposure", [{"person_id": 3, "drug_concept_id": 1002,
                                                "drug_exposure_start_date": day("2010-01-31")}])
    write_parquet(restored / "death", [{"person_id": 3, "death_date": day("2010-02-12")}])


def test_synthetic_tokens_stand_beside_the_restored_rows_dated_as_the_converter_does(real_data, capsys):
    run = real_data / "synthetic" / "top_p10000_constrained"
    write_synthetic_run(run)
    lines = show(capsys, "--synthetic", "--synthetic-dir", str(run), "--omop-dir", str(real_data / "omop"))
    assert lines[0].startswith("Synthetic patient 3: sequence in")  # person 2 was not restored
    line_with(lines, "OMOP person 3: born 1970", "8507 MALE")
    line_with(lines, "-- visit 1 of 3: 2010-01-01, Outpatient Visit")
    line_with(lines, "1001", "Acute bronchitis", "condition_occurrence", "2010-01-01")
    line_with(lines, "5005", "Tobacco use", "the converter writes no Observation rows")
    line_with(lines, "-- visit 2 of 3: 2010-01-31, Inpatient Visit, after D30 (30 days)")
    line_with(lines, "1002", "Influenza vaccine", "drug_exposure", "2010-01-31")
    line_with(lines, "i-D2", "+2 days (inside the stay)", "2010-02-02")
    line_with(lines, "Discharge/0", "visit_occurrence", "2010-02-02", "discharged_to_concept_id")
    line_with(lines, "-- visit 3 of 3: 2010-02-12, death, after D10")
    line_with(lines, "[DEATH]", "death", "death", "2010-02-12")
    assert not any("not from these tokens" in line for line in lines)


def test_synthetic_censored_copies_are_preferred_and_a_skipped_patient_says_so(real_data, capsys):
    run = real_data / "synthetic" / "top_p10000_constrained"
    write_synthetic_run(run)
    write_parquet(run / "censored_sequences", [{"person_id": 2, "concept_ids": SYNTHETIC[:9]}])
    lines = show(capsys, "--synthetic", "--synthetic-dir", str(run), "--person-id", "2")
    assert "censored_sequences" in " ".join(lines[:3])
    line_with(lines, "OMOP person 2: none (not restored)")
    line_with(lines, "1001", "-- not restored: the converter skipped this patient")
    with pytest.raises(SystemExit) as stopped:  # in generated_sequences, not in the censored copies
        command.main(["--synthetic", "--synthetic-dir", str(run), "--person-id", "3"])
    assert "censoring left it out" in exit_error(stopped, capsys)


def test_timelines_pick_patients_with_three_or_more_visits_by_seed():
    vocabulary = Vocabulary()
    short = ["year:2010", "age:40", "8507", "Race/0", "[VS]", "9202", "1001", "[VE]"]
    token_lists = [SYNTHETIC if index % 3 else short for index in range(30)]
    facts = sequence_facts(sequences_from_lists(token_lists, vocabulary), vocabulary)
    chosen = _timeline_rows(facts, np.arange(30), seed=1)
    assert len(chosen) == TIMELINE_PATIENTS and all(index % 3 for index in chosen)
    assert list(chosen) == list(_timeline_rows(facts, np.arange(30), seed=1))
    assert len(_timeline_rows(facts, np.arange(0, 30, 3), seed=1)) == 0  # nobody with 3 visits
