"""Patient sequences as cehrbert_data writes them (patient_sequence Parquet): the token column, its
parallel list columns, and the time tokens cehrgpt can parse."""

from __future__ import annotations

from cehrgpt_tutorials.errors import PipelineError

VISIT_START_TOKEN = "[VS]"
VISIT_END_TOKEN = "[VE]"
# Visit concepts cehrbert_data treats as inpatient (they carry i-D day tokens and a discharge token).
INPATIENT_VISIT_CONCEPT_IDS = frozenset({"9201", "262", "8971", "8920"})


def time_token_problem(token: str) -> str | None:
    """Why cehrgpt cannot use this time token, or None when it is fine or not a time token.

    cehrgpt's own parser (cehrgpt.gpt_utils) is the oracle: a token it classifies as a time
    (artificial time) token must parse to a non-negative number of days.
    """
    from cehrgpt.gpt_utils import extract_time_interval_in_days, is_att_token

    if not is_att_token(token):
        return None
    try:
        days = extract_time_interval_in_days(token)
    except (ValueError, KeyError, IndexError):
        return "unparseable"
    if days is None:
        return "unparseable"
    if days < 0:
        return "negative"
    return None


def malformed_time_tokens(tokens) -> dict[str, str]:
    """Map each malformed time token among `tokens` (any iterable, ideally unique) to its reason."""
    problems = {}
    for token in set(tokens):
        if token is None:
            continue
        reason = time_token_problem(token)
        if reason is not None:
            kind = "negative i-D" if token.startswith("i-D-") else reason
            problems[token] = kind
    return problems


SEQUENCE_TOKEN_COLUMN = "concept_ids"


def is_list_type(data_type) -> bool:
    import pyarrow as pa

    return pa.types.is_list(data_type) or pa.types.is_large_list(data_type)


def check_patient_sequence_schema(schema, path) -> None:
    """Raise PipelineError unless `schema` has the concept_ids list<string> column of a patient sequence."""
    import pyarrow as pa

    if SEQUENCE_TOKEN_COLUMN not in schema.names:
        raise PipelineError(
            f"{path} is not a patient sequence file: it has no {SEQUENCE_TOKEN_COLUMN} column "
            f"(columns: {', '.join(schema.names[:8])}{', ...' if len(schema.names) > 8 else ''})"
        )
    token_type = schema.field(SEQUENCE_TOKEN_COLUMN).type
    if not (is_list_type(token_type) and pa.types.is_string(token_type.value_type)):
        raise PipelineError(
            f"{path} is not a patient sequence file: {SEQUENCE_TOKEN_COLUMN} is {token_type}, not a list of strings"
        )


def aligned_rows(table, column: str, reference: str = SEQUENCE_TOKEN_COLUMN):
    """Per row, whether list column `column` has as many items as `reference` (a BooleanArray; null lists: False).

    Every list column that cehrbert_data writes beside concept_ids (dates, ages, visit_segments, ...)
    is a parallel array: item i describes token i. This tells, row by row, whether that still holds.
    """
    import pyarrow.compute as pc

    same_length = pc.fill_null(
        pc.equal(pc.list_value_length(table[column]), pc.list_value_length(table[reference])), False
    )
    return same_length.combine_chunks() if hasattr(same_length, "combine_chunks") else same_length


def parallel_list_columns(table, reference: str = SEQUENCE_TOKEN_COLUMN) -> dict[str, int]:
    """Every list column other than `reference`, mapped to the number of rows where it is aligned with it."""
    import pyarrow.compute as pc

    return {
        field.name: int(pc.sum(aligned_rows(table, field.name, reference)).as_py() or 0)
        for field in table.schema
        if field.name != reference and is_list_type(field.type)
    }
# <<< patient_sequence Parquet helpers <<<
