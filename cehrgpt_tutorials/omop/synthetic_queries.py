"""Two example queries that put the real CDM (schema cdm) beside the synthetic one (synthetic_cdm).

Printed by restore_synthetic.sh after loading, as psql commands you can paste, and run once so you
see their answers. Read-only: it only runs SELECTs.

Example:
    python -m cehrgpt_tutorials.omop.synthetic_queries --source-schema cdm --schema synthetic_cdm
"""

from __future__ import annotations

import argparse

from cehrgpt_tutorials.db import connect, connection_uri
from cehrgpt_tutorials.errors import PipelineError, fail


def example_queries(real: str, synthetic: str) -> list[tuple[str, str]]:
    """(title, SQL) pairs; schema names are checked identifiers, so plain formatting is safe."""
    counts = " UNION ALL ".join(
        f"SELECT '{schema}' AS schema, (SELECT count(*) FROM {schema}.person) AS persons, "
        f"(SELECT count(*) FROM {schema}.visit_occurrence) AS visits, "
        f"(SELECT count(*) FROM {schema}.condition_occurrence) AS conditions, "
        f"(SELECT count(*) FROM {schema}.drug_exposure) AS drugs"
        for schema in (real, synthetic)
    )
    prevalence = (
        "SELECT c.concept_name AS condition, "
        f"round(100.0 * r.persons / greatest((SELECT count(*) FROM {real}.person), 1), 1) AS real_pct, "
        f"round(100.0 * coalesce(s.persons, 0) / greatest((SELECT count(*) FROM {synthetic}.person), 1), 1) AS synthetic_pct "
        f"FROM (SELECT condition_concept_id, count(DISTINCT person_id) AS persons FROM {real}.condition_occurrence "
        "WHERE condition_concept_id <> 0 GROUP BY 1) r "
        f"LEFT JOIN (SELECT condition_concept_id, count(DISTINCT person_id) AS persons FROM {synthetic}.condition_occurrence GROUP BY 1) s "
        "USING (condition_concept_id) "
        f"JOIN {real}.concept c ON c.concept_id = r.condition_concept_id "
        "ORDER BY r.persons DESC LIMIT 10"
    )
    return [
        ("How big is each CDM?", counts),
        ("The 10 most common real conditions: share of persons with each, real vs synthetic", prevalence),
    ]


def print_rows(cursor) -> None:
    names = [column.name for column in cursor.description]
    rows = [[("" if value is None else str(value)) for value in row] for row in cursor.fetchall()]
    widths = [max(len(name), *(len(row[i]) for row in rows)) if rows else len(name) for i, name in enumerate(names)]
    print("  " + "  ".join(name.ljust(width) for name, width in zip(names, widths, strict=True)))
    for row in rows:
        print("  " + "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source-schema", default="cdm", help="the real CDM's schema (default cdm)")
    parser.add_argument("--schema", default="synthetic_cdm", help="the synthetic CDM's schema (default synthetic_cdm)")
    parser.add_argument("--dsn", default=None, help="libpq connection string or URI (default: like psql)")
    arguments = parser.parse_args()
    for schema in (arguments.source_schema, arguments.schema):
        if not schema.isidentifier() or schema.lower() != schema:
            fail(f"schema name {schema!r}: use a lower-case name of letters, digits and _")

    try:
        connection = connect(arguments.dsn, quiet=True)
    except PipelineError as error:
        fail(str(error))
    uri = connection_uri(connection)
    print(f"\nOpen both CDMs with:  psql \"{uri}\"")
    try:
        with connection.cursor() as cursor:
            for title, query in example_queries(arguments.source_schema, arguments.schema):
                print(f"\n-- {title}\npsql \"{uri}\" -c \"{query};\"")
                cursor.execute(query)
                print_rows(cursor)
    except Exception as error:  # psycopg2.Error: a missing table, say; the queries are only examples
        fail(f"example query failed: {' '.join(str(error).split())}")
    finally:
        connection.close()


if __name__ == "__main__":
    main()
