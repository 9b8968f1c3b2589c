"""Data builders that several test modules share: hand-built patient sequences (one valid base, one
broken case per validity rule), seeded populations of plausible sequences, the report's input files
(patient_sequence Parquet and a concept table), and `inspect`, which writes a real and a synthetic set
and runs inspect_synthetic in-process.

Test modules import these from here, never from each other: a test module is something pytest runs,
and a constant or builder it shares belongs to neither user.
"""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq

import inspect_synthetic

PROMPT = ["year:2011", "age:37", "8507", "8527"]
# Outpatient visit, inpatient visit (i-D day token, discharge token), ER visit.
BASE = PROMPT + [
    "[VS]", "9202", "1001", "[VE]",
    "D10", "[VS]", "9201", "1002", "i-D2", "1003", "Discharge/0", "[VE]",
    "D5", "[VS]", "9203", "1004", "[VE]",
]  # fmt: skip
WITH_DEATH = BASE + ["D3", "[VS]", "[DEATH]", "[VE]"]


def replaced(tokens: list[str], old: str, new: list[str]) -> list[str]:
    """tokens with the first `old` replaced by the tokens `new`."""
    index = tokens.index(old)
    return tokens[:index] + new + tokens[index + 1 :]


# One sequence per validity rule, breaking that rule and no other.
BROKEN = {
    "demographic_prompt": replaced(BASE, "age:37", ["age:unknown"]),
    "nested_visit": replaced(BASE, "1001", ["1001", "[VS]", "9202", "[VE]"]),
    "unmatched_visit_end": BASE + ["[VE]"],
    "missing_visit_type": replaced(BASE, "9203", ["1005"]),
    "time_token_not_between_visits": replaced(BASE, "1001", ["1001", "D4"]),
    "inpatient_time_token_outside_inpatient_visit": replaced(BASE, "1001", ["1001", "i-D1"]),
    "missing_discharge": replaced(BASE, "Discharge/0", []),
    "event_outside_visit": replaced(BASE, "D10", ["1009", "D10"]),
    "death_not_at_end": replaced(BASE, "D10", ["D3", "[VS]", "[DEATH]", "[VE]", "D10"]),
    "not_ending_with_visit_end": BASE[:-1],
    "malformed_time_token": replaced(BASE, "i-D2", ["i-D-2"]),
    # an age token inside a visit: cehrgpt's converter cannot convert the patient
    "demographic_token_after_prompt": replaced(BASE, "1001", ["age:49", "1001"]),
    "death_before_any_visit": PROMPT + ["[VS]", "[DEATH]", "[VE]"],
    "patient_died_discharge_misplaced": replaced(BASE, "1001", ["4216643", "1001"]),  # in an outpatient visit
}


def patient(rng: random.Random, concepts: range, year: int | None = None) -> list[str]:
    """A plausible sequence: prompt, 1-5 visits of 1-4 concepts from `concepts`, day tokens between."""
    tokens = [f"year:{year or rng.randint(1990, 2015)}", f"age:{rng.randint(0, 90)}"]
    tokens += [rng.choice(["8507", "8532"]), rng.choice(["8527", "8516", "Race/0"])]
    for visit in range(rng.randint(1, 5)):
        if visit:
            tokens.append(f"D{rng.randint(1, 400)}")
        visit_type = rng.choice(["9202", "9202", "9202", "9203", "9201"])
        tokens += ["[VS]", visit_type] + [str(rng.choice(concepts)) for _ in range(rng.randint(1, 4))]
        tokens += ["i-D1", "Discharge/0", "[VE]"] if visit_type == "9201" else ["[VE]"]
    return tokens


def population(count: int, seed: int, concepts: range = range(1001, 1031)) -> list[list[str]]:
    """`count` patients of `patient`, the same ones for the same seed."""
    rng = random.Random(seed)
    return [patient(rng, concepts) for _ in range(count)]


def write_sequences(folder, sequences: list[list[str]], parts: int = 2) -> None:
    """sequences as patient_sequence Parquet files (person_id, concept_ids), dealt round-robin over `parts`."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in range(parts):
        chunk = sequences[part::parts]
        pq.write_table(
            pa.table(
                {
                    "person_id": pa.array(range(len(chunk)), pa.int64()),
                    "concept_ids": pa.array(chunk, pa.list_(pa.string())),
                }
            ),
            folder / f"part-{part:05d}.parquet",
        )


def write_concepts(folder, rows: list[tuple[int, str, str]]) -> None:
    """An OMOP concept table of (concept_id, concept_name, domain_id) rows."""
    folder.mkdir(parents=True, exist_ok=True)
    ids, names, domains = zip(*rows, strict=True)
    pq.write_table(
        pa.table(
            {"concept_id": pa.array(ids, pa.int32()), "concept_name": list(names), "domain_id": list(domains)}
        ),
        folder / "part-00000.parquet",
    )


def inspect(tmp_path, real, synthetic, *extra, real_split=None):
    """Write the sets under tmp_path (real_split: a test/ split beside real as train/), run
    inspect_synthetic.main in-process, return report.json."""
    real_dir = tmp_path / "patient_sequence"
    if real_split is None:
        write_sequences(real_dir, real)
    else:
        write_sequences(real_dir / "train", real)
        write_sequences(real_dir / "test", real_split)
    run = tmp_path / "synthetic" / "top_p9500"
    write_sequences(run / "generated_sequences", synthetic, parts=1)
    arguments = ["--synthetic-dir", str(run), "--real-dir", str(real_dir), *extra]
    if "--concept-dir" not in extra:
        arguments += ["--concept-dir", str(tmp_path / "no_concepts")]
        (tmp_path / "no_concepts").mkdir(exist_ok=True)
        write_concepts(tmp_path / "no_concepts", [(9202, "Outpatient Visit", "Visit")])
    assert inspect_synthetic.main(arguments) == 0
    return json.loads((run / "report" / "report.json").read_text())
