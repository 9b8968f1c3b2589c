"""Concept names and domains from the exported OMOP concept table (step 1's `concept/` folder)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from cehrgpt_tutorials.errors import PipelineError
from cehrgpt_tutorials.files import parquet_files


def read_concepts(
    concept_dir: Path | None, concept_ids: list[int] | None = None, domain: str | None = None
) -> dict[str, tuple[str, str]]:
    """concept id (as a token string) -> (name, domain) from a concept table folder, for some ids or a domain."""
    if concept_dir is None or not concept_dir.exists():
        return {}
    files = parquet_files(concept_dir)
    if not files:
        return {}
    try:
        dataset = ds.dataset([str(path) for path in files], format="parquet")
        names = dataset.schema.names
        if "concept_id" not in names:
            raise PipelineError(f"{concept_dir} is not an OMOP concept table: no concept_id column")
        columns = [name for name in ("concept_id", "concept_name", "domain_id") if name in names]
        condition = None
        if concept_ids is not None:
            id_type = dataset.schema.field("concept_id").type
            condition = pc.field("concept_id").isin(pa.array(concept_ids, type=pa.int64()).cast(id_type))
        if domain is not None and "domain_id" in names:
            condition = pc.field("domain_id") == domain
        table = dataset.to_table(columns=columns, filter=condition)
    except (OSError, pa.ArrowException) as error:
        raise PipelineError(f"cannot read the concept table {concept_dir}: {error}") from None
    ids = table.column("concept_id").to_pylist()
    names_column = table.column("concept_name").to_pylist() if "concept_name" in columns else [""] * len(ids)
    domains = table.column("domain_id").to_pylist() if "domain_id" in columns else [""] * len(ids)
    return {
        str(i): (n or "", d or "")
        for i, n, d in zip(ids, names_column, domains, strict=True)
        if i is not None
    }


def visit_concept_ids(concept_dir: Path | None) -> frozenset[str]:
    """The Visit-domain concept ids of a concept table (none without one).

    Both sides of "valid" read them from here: the constrained sampler (generate.py) and the report
    (inspect_synthetic.py). cehrgpt's converter takes any Visit-domain concept before an inpatient
    [VE] as its discharge, so the grammar counts them as visit types and discharges; two sides that
    read different concept tables would disagree on which inpatient visits are discharged.
    """
    return frozenset(concept for concept, (_, domain) in read_concepts(concept_dir, domain="Visit").items()
                     if domain == "Visit")
