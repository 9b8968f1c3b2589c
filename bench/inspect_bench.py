"""Benchmark for inspect_synthetic.py (step 6): the whole report on 100k real + 100k synthetic sequences.

Goal: <= 60 s on the 2-core sandbox. Generates, with numpy, two cehrbert_data-like sets of
patient sequences (demographic prompt, visits with types, day tokens between visits, inpatient visits
with i-D and discharge tokens, deaths; concepts drawn from a Zipf-like distribution), the synthetic one
from other parameters, with 5% truncated sequences and 1% exact copies of real ones, plus a concept
table. Then times, in the same run:
  - the floor: reading concept_ids and person_id of both sets with pyarrow (what any report must do);
  - inspect_synthetic.py as a learner runs it (a fresh Python process: imports, report, plots).
and prints the times and their ratio.

Writes its data under bench/out/inspect (git-ignored; reused when the sizes match, --regenerate to redo).

Example:
    python bench/inspect_bench.py                    # 100k + 100k
    python bench/inspect_bench.py --patients 20000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
CONCEPTS = 2_000
FIRST_CONCEPT_ID = 40_000_000
PART_FILES = 4


def token_vocabulary() -> tuple[list[str], dict[str, int]]:
    """Every token the generator can emit; codes index this list."""
    tokens = ["[VS]", "[VE]", "[DEATH]", "Discharge/0", "Visit/0", "Race/0", "9202", "9203", "9201"]
    tokens += ["8507", "8532", "8527", "8516", "8515", "LT"]
    tokens += [f"D{days}" for days in range(1080)] + [f"i-D{days}" for days in range(1, 31)]
    tokens += [f"year:{year}" for year in range(1950, 2026)] + [f"age:{age}" for age in range(0, 121)]
    tokens += [str(FIRST_CONCEPT_ID + index) for index in range(CONCEPTS)]
    return tokens, {token: code for code, token in enumerate(tokens)}


def generate(count: int, seed: int, zipf: float, visits_mean: float, truncated_share: float) -> pa.ListArray:
    """`count` patient sequences as a list<string> array, built with whole-array numpy operations."""
    tokens, code = token_vocabulary()
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, CONCEPTS + 1) ** zipf
    weights /= weights.sum()

    visits = 1 + rng.poisson(visits_mean, count)
    died = rng.random(count) < 0.1
    visit_patient = np.repeat(np.arange(count), visits)
    first_visit = np.concatenate(([0], np.cumsum(visits)[:-1]))
    is_first = np.zeros(len(visit_patient), dtype=bool)
    is_first[first_visit] = True
    visit_type = rng.choice(
        [code["9202"], code["9203"], code["9201"], code["Visit/0"]],
        size=len(visit_patient),
        p=[0.94, 0.04, 0.015, 0.005],
    )
    inpatient = visit_type == code["9201"]
    concepts_per_visit = 1 + rng.poisson(2.5, len(visit_patient))
    # A visit block: [time token] [VS] type concepts... [i-D Discharge/0] [VE]
    block = (~is_first) + 2 + concepts_per_visit + 2 * inpatient + 1
    patient_length = (
        4 + np.bincount(visit_patient, weights=block, minlength=count).astype(np.int64) + 4 * died
    )
    patient_start = np.concatenate(([0], np.cumsum(patient_length)[:-1]))
    block_end_running = np.cumsum(block)
    patient_block_base = np.concatenate(([0], block_end_running))[first_visit]
    block_start = (
        patient_start[visit_patient] + 4 + (block_end_running - block - patient_block_base[visit_patient])
    )

    codes = np.empty(int(patient_length.sum()), dtype=np.int32)
    # Prompt.
    codes[patient_start] = code["year:1950"] + rng.integers(35, 71, count)
    codes[patient_start + 1] = code["age:0"] + rng.integers(0, 91, count)
    codes[patient_start + 2] = rng.choice([code["8507"], code["8532"]], count)
    codes[patient_start + 3] = rng.choice(
        [code["8527"], code["8516"], code["8515"], code["Race/0"]], count, p=[0.75, 0.1, 0.05, 0.1]
    )
    # Time tokens between visits: day gaps, LT from 1080 days on.
    gaps = rng.geometric(1 / 220, len(visit_patient)) - 1
    gap_codes = np.where(gaps < 1080, code["D0"] + np.minimum(gaps, 1079), code["LT"])
    codes[block_start[~is_first]] = gap_codes[~is_first]
    visit_start = block_start + (~is_first)
    codes[visit_start] = code["[VS]"]
    codes[visit_start + 1] = visit_type
    within = np.arange(concepts_per_visit.sum()) - np.repeat(
        np.cumsum(concepts_per_visit) - concepts_per_visit, concepts_per_visit
    )
    codes[np.repeat(visit_start + 2, concepts_per_visit) + within] = code[str(FIRST_CONCEPT_ID)] + rng.choice(
        CONCEPTS, size=int(concepts_per_visit.sum()), p=weights
    )
    after_concepts = visit_start + 2 + concepts_per_visit
    codes[after_concepts[inpatient]] = code["i-D1"] + rng.integers(0, 10, int(inpatient.sum()))
    codes[after_concepts[inpatient] + 1] = code["Discharge/0"]
    codes[block_start + block - 1] = code["[VE]"]
    # Deaths: D<n> [VS] [DEATH] [VE] closing the sequence.
    death_start = (patient_start + patient_length - 4)[died]
    codes[death_start] = code["D0"] + rng.integers(0, 300, int(died.sum()))
    codes[death_start + 1] = code["[VS]"]
    codes[death_start + 2] = code["[DEATH]"]
    codes[death_start + 3] = code["[VE]"]

    # Truncated sequences (a generator that stopped mid-visit): the final [VE] is gone.
    truncated = rng.random(count) < truncated_share
    keep = np.ones(len(codes), dtype=bool)
    keep[(patient_start + patient_length - 1)[truncated]] = False
    codes = codes[keep]
    patient_length = patient_length - truncated
    offsets = np.concatenate(([0], np.cumsum(patient_length))).astype(np.int32)
    values = pa.array(tokens).take(pa.array(codes))
    return pa.ListArray.from_arrays(pa.array(offsets), values)


def write_parts(table: pa.Table, folder: Path, prefix: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = table.num_rows
    for part in range(PART_FILES):
        begin, end = rows * part // PART_FILES, rows * (part + 1) // PART_FILES
        pq.write_table(table.slice(begin, end - begin), folder / f"{prefix}-{part:05d}.parquet")


def build_data(folder: Path, patients: int) -> None:
    print(
        f"generating {patients:,} real-like and {patients:,} synthetic-like sequences in {folder} ...",
        flush=True,
    )
    started = time.perf_counter()
    shutil.rmtree(folder, ignore_errors=True)
    real = generate(patients, seed=1, zipf=1.1, visits_mean=17, truncated_share=0.0)
    real_table = pa.table(
        {
            "person_id": pa.array(np.arange(patients, dtype=np.int64)),
            "concept_ids": real,
            "num_of_concepts": pc.list_value_length(real),
        }
    )
    write_parts(real_table, folder / "patient_sequence", "part")

    synthetic = generate(patients, seed=2, zipf=1.15, visits_mean=15, truncated_share=0.05)
    copies = np.random.default_rng(3).choice(patients, size=patients // 100, replace=False)
    synthetic = pa.concat_arrays([real.take(pa.array(copies)), synthetic.slice(len(copies))])
    # cehrgpt's generator writes these parallel columns beside concept_ids.
    lengths = pc.list_value_length(synthetic).to_numpy()
    offsets = pa.array(np.concatenate(([0], np.cumsum(lengths))).astype(np.int32))
    total = int(lengths.sum())
    synthetic_table = pa.table(
        {
            "concept_ids": synthetic,
            "person_id": pa.array(np.arange(1, patients + 1, dtype=np.int64)),
            "is_numeric_types": pa.ListArray.from_arrays(offsets, pa.array(np.zeros(total, dtype=np.int64))),
            "number_as_values": pa.ListArray.from_arrays(offsets, pa.nulls(total, pa.float64())),
            "concept_as_values": pa.ListArray.from_arrays(offsets, pa.nulls(total, pa.string())),
            "concept_value_masks": pa.ListArray.from_arrays(offsets, pa.array(np.zeros(total, dtype=bool))),
            "units": pa.ListArray.from_arrays(offsets, pa.array(np.full(total, "N/A", dtype=object))),
        }
    )
    write_parts(synthetic_table, folder / "synthetic" / "top_p9500" / "generated_sequences", "batch")

    concept_ids = [FIRST_CONCEPT_ID + index for index in range(CONCEPTS)] + [
        9201,
        9202,
        9203,
        8507,
        8532,
        8527,
        8516,
        8515,
    ]
    names = [f"Concept number {index}" for index in range(CONCEPTS)] + [
        "Inpatient Visit",
        "Outpatient Visit",
        "Emergency Room Visit",
        "MALE",
        "FEMALE",
        "White",
        "Black or African American",
        "Asian",
    ]
    domains = ["Condition"] * CONCEPTS + ["Visit"] * 3 + ["Gender"] * 2 + ["Race"] * 3
    (folder / "concept").mkdir(parents=True)
    pq.write_table(
        pa.table(
            {"concept_id": pa.array(concept_ids, pa.int32()), "concept_name": names, "domain_id": domains}
        ),
        folder / "concept" / "part-00000.parquet",
    )
    (folder / "SIZE").write_text(str(patients))
    print(f"  generated in {time.perf_counter() - started:.1f} s", flush=True)


def read_floor(folder: Path) -> tuple[float, float]:
    """Wall and CPU seconds to read concept_ids and person_id of both sets: what any report has to do."""
    started, cpu = time.perf_counter(), time.process_time()
    for files in (
        sorted((folder / "patient_sequence").glob("*.parquet")),
        sorted((folder / "synthetic" / "top_p9500" / "generated_sequences").glob("*.parquet")),
    ):
        for path in files:
            pq.read_table(path, columns=["concept_ids", "person_id"])
    return time.perf_counter() - started, time.process_time() - cpu


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Time inspect_synthetic.py on 100k real + 100k synthetic sequences."
    )
    parser.add_argument(
        "--patients", type=int, default=100_000, help="sequences per set (default: %(default)s)"
    )
    parser.add_argument(
        "--output", type=Path, default=REPO_ROOT / "bench" / "out" / "inspect", help="data folder"
    )
    parser.add_argument("--regenerate", action="store_true", help="regenerate the data even if it exists")
    parser.add_argument(
        "--nn-sample", type=int, default=None, help="passed to inspect_synthetic.py (default: its own)"
    )
    arguments = parser.parse_args()

    folder = arguments.output
    size_file = folder / "SIZE"
    if arguments.regenerate or not size_file.exists() or size_file.read_text() != str(arguments.patients):
        build_data(folder, arguments.patients)
    real_tokens = sum(
        pc.sum(pq.read_table(path, columns=["num_of_concepts"])["num_of_concepts"]).as_py()
        for path in (folder / "patient_sequence").glob("*.parquet")
    )
    print(
        f"data: {arguments.patients:,} + {arguments.patients:,} sequences, {real_tokens:,} real tokens",
        flush=True,
    )

    floor, floor_cpu = read_floor(folder)
    report_dir = folder / "report"
    command = [
        sys.executable,
        str(REPO_ROOT / "inspect_synthetic.py"),
        "--synthetic-dir",
        str(folder / "synthetic"),
        "--real-dir",
        str(folder / "patient_sequence"),
        "--concept-dir",
        str(folder / "concept"),
        "--report-dir",
        str(report_dir),
    ] + (["--nn-sample", str(arguments.nn_sample)] if arguments.nn_sample else [])
    started, cpu = time.perf_counter(), children_cpu_seconds()
    completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    elapsed, elapsed_cpu = time.perf_counter() - started, children_cpu_seconds() - cpu
    if completed.returncode != 0:
        print(completed.stdout[-3000:], completed.stderr[-3000:])
        raise SystemExit(f"inspect_synthetic.py failed with exit code {completed.returncode}")
    report = json.loads((report_dir / "report.json").read_text())

    # The sandbox is shared: CPU seconds show the work done whatever else runs; the load average says
    # how much the wall times are stretched.
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(
        f"floor (pyarrow reads concept_ids + person_id of both sets): wall {floor:6.1f} s, CPU {floor_cpu:6.1f} s"
    )
    print(
        f"inspect_synthetic.py (whole report, fresh process):        wall {elapsed:6.1f} s, CPU {elapsed_cpu:6.1f} s"
        f"  = {elapsed / floor:.1f}x the floor's wall time"
    )
    print(f"goal: <= 60 s -> {'met' if elapsed <= 60 else 'NOT met'}")
    sections = report.get("seconds") or {}
    print("of which: " + ", ".join(f"{name} {value:.1f} s" for name, value in sections.items()))
    membership = report.get("membership_inference") or {}
    print(f"privacy attacks sampled {membership.get('sample_per_set', 'n/a')} patients per set; utility trained on "
          f"{(report.get('utility') or {}).get('train_rows_synthetic', 'n/a')} rows per side")
    print(
        f"sanity: valid {report['valid_fraction']:.3f} (expected ~0.95), exact copies {report['exact_copy_fraction']:.3f} "
        f"(planted 0.010), prevalence r {report['prevalence_pearson_r']:.3f}, nn ratio {report['nn_distance_ratio']:.2f}"
    )


if __name__ == "__main__":
    main()
