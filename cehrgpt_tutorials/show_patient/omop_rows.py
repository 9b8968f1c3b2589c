"""The OMOP rows of one person, as the alignment needs them: table, concept, day."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import parquet_files

# OMOP tables whose rows tokens stand for: concept column, date column. Step 2 reads the first three
# (create_cehrgpt_pretraining_data.sh's DOMAIN_TABLES); the converter also writes measurements.
CLINICAL_TABLES = {
    "condition_occurrence": ("condition_concept_id", "condition_start_date"),
    "drug_exposure": ("drug_concept_id", "drug_exposure_start_date"),
    "procedure_occurrence": ("procedure_concept_id", "procedure_date"),
    "measurement": ("measurement_concept_id", "measurement_date"),
}


@dataclass
class Row:
    """One OMOP row of the person: what the alignment needs of it."""

    table: str
    concept: str  # the concept id as a token string; "[DEATH]" for the death table
    day: datetime.date | None
    end: datetime.date | None = None
    discharge: str | None = None  # visit_occurrence's discharged_to_concept_id
    used: bool = False


def _day(value) -> datetime.date | None:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, str) and value:
        return datetime.date.fromisoformat(value[:10])
    return value if isinstance(value, datetime.date) else None


def concept_token(value) -> str:
    return "0" if value is None else str(value)


def person_table(folder: Path, person_id: int | None, columns: list[str]) -> pa.Table | None:
    """The rows of one person (all rows: person_id None) of an OMOP table folder; None without one."""
    files = parquet_files(folder) if folder.is_dir() else []
    if not files:
        return None
    try:
        dataset = ds.dataset([str(path) for path in files], format="parquet")
        present = [name for name in columns if name in dataset.schema.names]
        condition = None if person_id is None else pc.field("person_id") == person_id
        return dataset.to_table(columns=present, filter=condition)
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot read {folder}: {error}") from None


def read_rows(omop: Path, person_id: int, tables) -> list[Row]:
    """The person's visits, rows of `tables` and death, in date order (visits first on a day)."""
    columns = ["visit_concept_id", "visit_start_date", "visit_end_date", "discharged_to_concept_id",
               "discharge_to_concept_id"]  # OMOP 5.3 spells it discharge_to
    visits = person_table(omop / "visit_occurrence", person_id, columns)
    rows = [
        Row("visit_occurrence", concept_token(record.get("visit_concept_id")), _day(record.get("visit_start_date")),
            _day(record.get("visit_end_date")),
            concept_token(record.get("discharged_to_concept_id", record.get("discharge_to_concept_id"))))
        for record in (visits.to_pylist() if visits is not None else [])
    ]
    for table in tables:
        concept_column, date_column = CLINICAL_TABLES[table]
        found = person_table(omop / table, person_id, [concept_column, date_column])
        rows += [Row(table, concept_token(record.get(concept_column)), _day(record.get(date_column)))
                 for record in (found.to_pylist() if found is not None else [])]
    deaths = person_table(omop / "death", person_id, ["death_date"])
    rows += [Row("death", "[DEATH]", _day(record.get("death_date")))
             for record in (deaths.to_pylist() if deaths is not None else [])]
    return sorted(rows, key=lambda row: (row.day or datetime.date.min, row.table != "visit_occurrence"))


def read_person(omop: Path, person_id: int) -> dict | None:
    found = person_table(omop / "person", person_id, ["gender_concept_id", "race_concept_id", "year_of_birth"])
    return found.to_pylist()[0] if found is not None and found.num_rows else None
