"""The report's comparison with the source CDM (cehrgpt_tutorials/report/cdm_fidelity.py): planted
answers on tiny OMOP Parquet tables and hand-built sequences, the report run in-process."""

from __future__ import annotations

import random
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import error_line
from synthetic_data import PROMPT, inspect, write_concepts, write_sequences

import inspect_synthetic
from cehrgpt_tutorials.report.cdm_fidelity import distinct_pairs

PERSONS = 40


def write_table(folder, columns: dict[str, pa.Array]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), folder / "part-00000.parquet")


def events(folder, column: str, rows: list[tuple[int, int]], id_type: pa.DataType) -> None:
    persons, concepts = zip(*rows, strict=True)
    write_table(folder, {"person_id": pa.array(persons, id_type), column: pa.array(concepts, id_type)})


def write_cdm(omop) -> None:
    """40 persons. 1001: persons 0-11 (30%), two rows each. 2001: drugs of 0-9 and procedures of 5-19,
    so 20 persons (50%), not 25. 3001: persons 20-29 (25%). 1009: one person (2.5%, not frequent).
    Concept 0 ("No matching concept"): everyone, never counted. Id types differ between tables."""
    write_table(omop / "person", {"person_id": pa.array(range(PERSONS), pa.int64())})
    conditions = [(p, 1001) for p in range(12)] * 2 + [(p, 0) for p in range(PERSONS)] + [(0, 1009)]
    events(omop / "condition_occurrence", "condition_concept_id", conditions, pa.int32())
    events(omop / "drug_exposure", "drug_concept_id", [(p, 2001) for p in range(10)], pa.int64())
    procedures = [(p, 2001) for p in range(5, 20)] + [(p, 3001) for p in range(20, 30)]
    events(omop / "procedure_occurrence", "procedure_concept_id", procedures, pa.int32())
    write_concepts(omop / "concept", [(1001, "Type 2 diabetes mellitus", "Condition"), (2001, "metformin", "Drug"),
                                      (3001, "Colonoscopy", "Procedure"), (9202, "Outpatient Visit", "Visit")])


def visit(*concepts: str) -> list[str]:
    return ["[VS]", "9202", *concepts, "[VE]"]


def test_planted_cdm_concepts_give_exact_shares_and_the_absent_list(tmp_path, capsys):
    omop = tmp_path / "omop"
    write_cdm(omop)
    # Real: 1001 in 3 of 10 (one holds it in two visits: counted once), 2001 in 5 of 10, 3001 in none.
    real = ([PROMPT + visit("1001") + ["D5"] + visit("1001", "2001")] + [PROMPT + visit("1001")] * 2
            + [PROMPT + visit("2001")] * 4 + [PROMPT + visit("4001")] * 3)
    # Synthetic: 1001 in 3 of 10 (as in the CDM), 2001 in all 10 (2x the CDM), 3001 never.
    synthetic = [PROMPT + visit("1001", "2001")] * 3 + [PROMPT + visit("2001")] * 7
    report = inspect(tmp_path, real, synthetic, "--omop-dir", str(omop), "--concept-dir", str(omop / "concept"))

    assert report["cdm_frequent_concepts"] == 3
    assert report["cdm_concepts_within_25pct"] == pytest.approx(1 / 3, abs=1e-6)
    assert report["cdm_concepts_within_25pct_real_sequences"] == pytest.approx(2 / 3, abs=1e-6)
    assert report["cdm_concepts_absent"] == ["3001"]
    section = report["cdm_fidelity"]
    assert section["persons"] == PERSONS
    shares = {row["concept_id"]: (row["cdm_prevalence"], row["real_prevalence"], row["synthetic_prevalence"])
              for row in section["per_concept"]}
    assert shares == {"2001": (0.5, 0.5, 1.0), "1001": (0.3, 0.3, 0.3), "3001": (0.25, 0.0, 0.0)}
    assert [row["name"] for row in section["absent"]] == ["Colonoscopy"]
    assert [(row["concept_id"], row["relative_error"]) for row in section["worst_generated"]] == [
        ("2001", 1.0), ("1001", 0.0)]
    output = capsys.readouterr().out
    assert ("vs the source CDM: 1 of 3 frequent concepts within +-25% (real sequences: 2 of 3); "
            "absent: Colonoscopy (3001)\n") in output
    markdown = (tmp_path / "synthetic" / "top_p9500" / "report" / "report.md").read_text()
    assert "### Against the source CDM" in markdown
    assert "| 3001 Colonoscopy | Procedure | 25.0% | 0.0% |" in markdown
    assert "| 2001 metformin | Drug | 50.0% | 50.0% | 100.0% | +100% |" in markdown


def test_without_omop_tables_the_keys_are_null_and_the_section_says_so(tmp_path, capsys):
    # OMOP_DIR points at an empty folder in the tests (conftest), as in a fresh clone.
    report = inspect(tmp_path, [PROMPT + visit("1001")] * 5, [PROMPT + visit("1001")] * 5)
    for key in ("cdm_frequent_concepts", "cdm_concepts_within_25pct", "cdm_concepts_within_25pct_real_sequences",
                "cdm_concepts_absent"):
        assert report[key] is None, key
    assert "no OMOP tables at" in report["cdm_fidelity"]["not_measured"]
    assert "the comparison with the source CDM is skipped" in capsys.readouterr().out
    markdown = (tmp_path / "synthetic" / "top_p9500" / "report" / "report.md").read_text()
    assert "### Against the source CDM\n\nNot measured: no OMOP tables at" in markdown


def test_an_omop_dir_given_without_its_tables_fails_with_one_line(tmp_path, capsys):
    omop = tmp_path / "omop"
    write_cdm(omop)
    for path in (omop / "drug_exposure").iterdir():
        path.unlink()
    real_dir, run = tmp_path / "patient_sequence", tmp_path / "synthetic" / "top_p9500"
    write_sequences(real_dir, [PROMPT + visit("1001")] * 5)
    write_sequences(run / "generated_sequences", [PROMPT + visit("1001")] * 5, parts=1)
    with pytest.raises(SystemExit) as exit_info:
        inspect_synthetic.main(["--synthetic-dir", str(run), "--real-dir", str(real_dir), "--omop-dir", str(omop)])
    captured = capsys.readouterr()
    assert error_line(subprocess.CompletedProcess([], exit_info.value.code, captured.out, captured.err),
                      alone=True) == f"error: no OMOP tables at {omop} (missing: drug_exposure)"


def test_distinct_pairs_merge_duplicates_across_batches(tmp_path):
    rng = random.Random(3)
    batches = [[(rng.randrange(6), rng.randrange(5)) for _ in range(8)] for _ in range(40)]
    tables = (pa.table({"person_id": pa.array([p for p, _ in batch], pa.int64()),
                        "concept_id": pa.array([c for _, c in batch], pa.int64())}) for batch in batches)
    pairs = distinct_pairs(tables, compact_rows=4)  # merged every few batches
    found = list(zip(pairs.column("person_id").to_pylist(), pairs.column("concept_id").to_pylist(), strict=True))
    assert sorted(found) == sorted({pair for batch in batches for pair in batch})
