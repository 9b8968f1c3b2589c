"""Fidelity against the source CDM, not only against the real sequences: step 2 keeps some concepts and
persons, so a concept it lost is missing from the training and the synthetic patients alike, which no
comparison with the sequences can see. Of the condition, drug and procedure concepts held (any row, any
date) by >= 5% of the CDM's persons, it gives the share whose synthetic prevalence is within +-25% of
the CDM's, the same for the real sequences (step 2's loss), and the concepts never generated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import parquet_files
from cehrgpt_tutorials.omop.concepts import read_concepts
from cehrgpt_tutorials.report.fidelity import PREVALENCE_TOLERANCE, WORST_SHOWN

CONCEPT_COLUMNS = {
    "condition_occurrence": "condition_concept_id",
    "drug_exposure": "drug_concept_id",
    "procedure_occurrence": "procedure_concept_id",
}
MIN_CDM_PREVALENCE = 0.05
COMPACT_ROWS = 1_000_000  # pending (person, concept) pairs merged into the kept ones past this many
PAIR_SCHEMA = pa.schema([("person_id", pa.int64()), ("concept_id", pa.int64())])


@dataclass(frozen=True)
class CdmPrevalence:
    """The source CDM's frequent concepts: the share of its persons holding each (largest first)."""

    omop_dir: Path
    persons: int = 0
    prevalence: dict[str, float] = field(default_factory=dict)  # concept id as its token -> share
    names: dict[str, tuple[str, str]] = field(default_factory=dict)  # token -> (name, domain)
    missing: str = ""  # why nothing was measured; empty when measured


def missing_tables(omop_dir: Path) -> list[str]:
    """The tables this comparison reads that have no Parquet files in omop_dir."""
    folders = [omop_dir / table for table in ("person", *CONCEPT_COLUMNS)]
    return [folder.name for folder in folders if not folder.is_dir() or not parquet_files(folder)]


def read_cdm_prevalence(omop_dir: Path, concept_dir: Path | None) -> CdmPrevalence:
    """Persons per concept over the three event tables; concepts under 5% of all persons are dropped."""
    missing = missing_tables(omop_dir)
    if missing:
        reason = f"no OMOP tables at {omop_dir} (missing: {', '.join(missing)})"
        return CdmPrevalence(omop_dir, missing=reason)
    try:
        persons = _dataset(omop_dir / "person").count_rows()
        if not persons:
            return CdmPrevalence(omop_dir, missing=f"{omop_dir / 'person'} has no rows")
        per_concept = distinct_pairs(_pair_tables(omop_dir)).group_by("concept_id").aggregate(
            [("person_id", "count")]
        )
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot read the OMOP tables in {omop_dir}: {error}") from None
    ids = per_concept.column("concept_id").to_numpy()
    shares = per_concept.column("person_id_count").to_numpy() / persons
    order = np.lexsort((ids, -shares))
    order = order[shares[order] >= MIN_CDM_PREVALENCE]
    prevalence = {str(ids[i]): float(shares[i]) for i in order}
    names = read_concepts(concept_dir, [int(token) for token in prevalence]) if concept_dir else {}
    return CdmPrevalence(omop_dir, persons, prevalence, names)


def _dataset(folder: Path) -> ds.Dataset:
    return ds.dataset([str(path) for path in parquet_files(folder)], format="parquet")


def _pair_tables(omop_dir: Path) -> Iterator[pa.Table]:
    """(person_id, concept_id) of every event row, batch by batch, as int64 whatever the tables use.
    Concept 0 is "No matching concept": not a concept anyone counts (step 2 drops it too)."""
    for table, column in CONCEPT_COLUMNS.items():
        events = _dataset(omop_dir / table)
        if column not in events.schema.names or "person_id" not in events.schema.names:
            raise PipelineError(f"{omop_dir / table} is not an OMOP {table} table: "
                                f"no person_id or {column} column")
        keep = pc.field("person_id").is_valid() & pc.field(column).is_valid() & (pc.field(column) != 0)
        for batch in events.to_batches(columns=["person_id", column], filter=keep):
            columns = [batch.column("person_id"), batch.column(column)]
            yield pa.table([array.cast(pa.int64()) for array in columns], schema=PAIR_SCHEMA)


def distinct_pairs(tables: Iterable[pa.Table], compact_rows: int = COMPACT_ROWS) -> pa.Table:
    """The distinct rows of a stream of (person_id, concept_id) tables.

    Each batch is deduplicated at once, and the pending batches are merged into the kept pairs when they
    outgrow them (and compact_rows), so memory stays within about twice the distinct pairs plus
    compact_rows pairs and one batch, whatever the number of rows."""
    kept, pending, pending_rows = PAIR_SCHEMA.empty_table(), [], 0
    for table in tables:
        pending.append(_distinct(table))
        pending_rows += pending[-1].num_rows
        if pending_rows > max(kept.num_rows, compact_rows):
            kept, pending, pending_rows = _distinct(pa.concat_tables([kept, *pending])), [], 0
    return _distinct(pa.concat_tables([kept, *pending]))


def _distinct(table: pa.Table) -> pa.Table:
    return table.group_by(["person_id", "concept_id"]).aggregate([]).select(PAIR_SCHEMA.names)


def cdm_fidelity(cdm: CdmPrevalence | None, real_prevalence: np.ndarray, synthetic_prevalence: np.ndarray,
                 code_of: dict[str, int]) -> dict:
    """Each frequent CDM concept's prevalence among the real training sequences and the synthetic ones
    (per-sequence concept sets, as the other prevalence metrics), with the shares within +-25%."""
    if cdm is None or cdm.missing:
        return {"omop_dir": None if cdm is None else str(cdm.omop_dir),
                "not_measured": "no OMOP folder given" if cdm is None else cdm.missing}

    def share(prevalence: np.ndarray, token: str) -> float:
        code = code_of.get(token)
        return float(prevalence[code]) if code is not None and code < len(prevalence) else 0.0

    rows = [_row(token, cdm, share(real_prevalence, token), share(synthetic_prevalence, token))
            for token in cdm.prevalence]
    synthetic_within = sum(abs(row["relative_error"]) <= PREVALENCE_TOLERANCE for row in rows)
    real_within = sum(abs(row["real_relative_error"]) <= PREVALENCE_TOLERANCE for row in rows)
    return {
        "omop_dir": str(cdm.omop_dir),
        "persons": cdm.persons,
        "tables": {"person": "person_id", **CONCEPT_COLUMNS},
        "min_cdm_prevalence": MIN_CDM_PREVALENCE,
        "concepts": len(rows),
        "within_25pct_count": synthetic_within,
        "within_25pct": synthetic_within / len(rows) if rows else None,
        "real_within_25pct_count": real_within,
        "real_within_25pct": real_within / len(rows) if rows else None,
        "absent": [row for row in rows if row["synthetic_prevalence"] == 0],
        # The absent ones are all at -100% and listed above: the worst of the others say more.
        "worst_generated": sorted((row for row in rows if row["synthetic_prevalence"] > 0),
                                  key=lambda row: -abs(row["relative_error"]))[:WORST_SHOWN],
        "per_concept": rows,
    }


def _row(token: str, cdm: CdmPrevalence, real: float, synthetic: float) -> dict:
    name, domain = cdm.names.get(token, ("", ""))
    cdm_share = cdm.prevalence[token]
    return {"concept_id": token, "name": name, "domain": domain, "cdm_prevalence": cdm_share,
            "real_prevalence": real, "synthetic_prevalence": synthetic,
            "relative_error": (synthetic - cdm_share) / cdm_share,
            "real_relative_error": (real - cdm_share) / cdm_share}


def report_keys(section: dict) -> dict:
    """report.json's top-level numbers of the comparison (null when the CDM was not read)."""
    measured = "not_measured" not in section
    return {
        "cdm_frequent_concepts": section["concepts"] if measured else None,
        "cdm_concepts_within_25pct": section["within_25pct"] if measured else None,
        "cdm_concepts_within_25pct_real_sequences": section["real_within_25pct"] if measured else None,
        "cdm_concepts_absent": [row["concept_id"] for row in section["absent"]] if measured else None,
    }
