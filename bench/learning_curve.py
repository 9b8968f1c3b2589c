"""Benchmark for steps 4-6: does fidelity grow with the number of training patients?

The demo model's synthetic patients have too few visits, and with them too few of the concepts that
come in long series (bench/RESULTS.md, issue 25). bench/continuation.py found the model continues a
real patient correctly but breaks series near their start, which the demo's 938 training patients
show it only a few dozen times. If that is the cause, fidelity grows with the training patients; if
fidelity is flat, more patients would not help and the cause is elsewhere.

For each --fractions value f, the demo profile is trained on a random f of step 2's training patients
(nested: each smaller set lies inside every larger one), step 5's sampler writes --num-patients
patients, and step 6's report compares them with all the training patients and with the CDM. f = 1
uses --full-model when given (the model `make demo` trained on all of them by the same recipe) instead
of training again. Per fraction it prints the training patients and seconds, the report's
prevalence_within_25pct with its 5-95% band over resamples of the synthetic patients, what as many
patients of a perfect model score (the report's prevalence_within_25pct_perfect_model), the CDM's
frequent concepts within +-25%, visits per patient (synthetic / real) and the sequence-length KS
statistic.

A fraction whose folder holds result.json is read again, not rerun; a model whose training finished is
not trained again, so an interrupted bench goes on where it stopped. Timings mean something only on a
quiet machine. Generation takes about 0.2 s per patient on 2 cores; training 5 minutes at f = 1.

Reads:  --real-dir (default $CEHR_GPT_DATA_DIR/patient_sequence/train), --omop-dir (default $OMOP_DIR)
Writes: --output DIR: per fraction f<pct>/ with its training patients, model, synthetic patients, report
        and result.json; the table on stdout; --json FILE too.

Example:
    python bench/learning_curve.py --fractions 0.25 0.5 1 --full-model omop_synthea/cehrgpt_model \\
        --num-patients 2000 --output bench/out/learning_curve --json bench/out/learning_curve.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.errors import fail  # noqa: E402
from cehrgpt_tutorials.files import atomic_file, parquet_files  # noqa: E402
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, omop_dir  # noqa: E402
from cehrgpt_tutorials.pipeline.synthetic_options import SAMPLE_FOLDER  # noqa: E402
from cehrgpt_tutorials.pipeline.training import unfinished_model_problem  # noqa: E402
from cehrgpt_tutorials.report.metrics import percent  # noqa: E402

SCRIPTS = REPO_ROOT / "cehrgpt_tutorials" / "scripts"


def nested_subset(person_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Row positions of round(fraction x len) persons: a prefix of one seeded permutation, so the persons
    of a smaller fraction are among those of every larger one (with the same seed)."""
    order = np.random.default_rng(seed).permutation(len(person_ids))
    return np.sort(order[: max(1, round(fraction * len(person_ids)))])


def write_training_patients(real_dir: Path, fraction: float, seed: int, folder: Path) -> int:
    """Write the fraction's training patients as one Parquet file under folder; returns how many."""
    table = ds.dataset(parquet_files(real_dir), format="parquet").to_table()
    table = table.take(nested_subset(table.column("person_id").to_numpy(), fraction, seed))
    with atomic_file(folder / "part-00000.parquet") as staging:
        pq.write_table(table, staging)
    return table.num_rows


def run_logged(command: list[str], log: Path) -> float:
    """Run a step's command with its output in log; its wall seconds, or stop naming the log."""
    started = time.monotonic()
    with log.open("w") as output:
        result = subprocess.run(command, cwd=REPO_ROOT, stdout=output, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        fail(f"{command[1] if command[0] == 'sh' else command[0]} failed (exit {result.returncode}): see {log}")
    return time.monotonic() - started


def headline(report: dict) -> dict:
    """The report's numbers this bench compares across fractions."""
    errors = report["prevalence_errors"]
    band = errors.get("synthetic_resamples") or {}
    visits = report["distributions"]["visits_per_patient"]
    return {
        "synthetic_patients": report["num_sequences"],
        "within_25pct": report["prevalence_within_25pct"],
        "within_25pct_p5": band.get("p5"),
        "within_25pct_p95": band.get("p95"),
        "within_25pct_perfect_model": report["prevalence_within_25pct_perfect_model"],
        "frequent_concepts": errors["concepts"],
        "cdm_within_25pct": report.get("cdm_concepts_within_25pct"),
        "visits_ratio": visits["synthetic_mean"] / visits["real_mean"],
        "length_ks": report["length_ks"],
    }


def run_fraction(fraction: float, arguments: argparse.Namespace) -> dict:
    """Train (or reuse), sample and report one fraction; its result, also written to its result.json."""
    folder = arguments.output / f"f{round(fraction * 100):03d}"
    if (folder / "result.json").exists():
        return json.loads((folder / "result.json").read_text())
    patients_dir = folder / "training_patients"
    patients = write_training_patients(arguments.real_dir, fraction, arguments.seed, patients_dir)
    model_dir, train_seconds = folder / "cehrgpt_model", None
    if fraction == 1 and arguments.full_model is not None:
        model_dir = arguments.full_model
    elif unfinished_model_problem(model_dir) is not None:  # not trained yet, or stopped half-way: (re)start it
        print(f"f={fraction:g}: training on {patients} patients", flush=True)
        seed = [] if arguments.training_seed is None else ["--seed", str(arguments.training_seed)]
        train_seconds = run_logged(["sh", str(SCRIPTS / "train_cehrgpt.sh"), "--profile", arguments.profile, "--data-folder",
                                    str(patients_dir), "--model-dir", str(model_dir), *seed], folder / "train.log")
    print(f"f={fraction:g}: sampling {arguments.num_patients} patients", flush=True)
    generate_seconds = run_logged(
        ["sh", str(SCRIPTS / "generate_synthetic.sh"), "--num-patients", str(arguments.num_patients),
         "--model-dir", str(model_dir), "--prompt-data", str(arguments.real_dir),
         "--output-dir", str(folder / "synthetic_data"), "--seed", str(arguments.seed)], folder / "generate.log")
    run_logged([sys.executable, str(REPO_ROOT / "inspect_synthetic.py"), "--synthetic-dir",
                str(folder / "synthetic_data" / SAMPLE_FOLDER), "--real-dir", str(arguments.real_dir.parent),
                "--omop-dir", str(arguments.omop_dir), "--report-dir", str(folder / "report"),
                "--seed", str(arguments.seed)], folder / "inspect.log")
    report = json.loads((folder / "report" / "report.json").read_text())
    result = {"fraction": fraction, "training_patients": patients, "model_dir": str(model_dir),
              "train_seconds": train_seconds, "generate_seconds": generate_seconds, **headline(report)}
    write_json(folder / "result.json", result)
    return result


def write_json(path: Path, value) -> None:
    with atomic_file(path) as staging:
        staging.write_text(json.dumps(value, indent=1) + "\n")


def print_table(results: list[dict]) -> None:
    print("| training patients | train (s) | within +-25% (5-95% of resamples) | a perfect model's | "
          "CDM's frequent within +-25% | visits synthetic / real | length KS |")
    print("|---|---|---|---|---|---|---|")
    for row in results:
        train = "reused" if row["train_seconds"] is None else f"{row['train_seconds']:.0f}"
        print(f"| {row['training_patients']} ({row['fraction']:g}) | {train} | {percent(row['within_25pct'])} "
              f"({percent(row['within_25pct_p5'])}-{percent(row['within_25pct_p95'])}) of "
              f"{row['frequent_concepts']} | {percent(row['within_25pct_perfect_model'])} | "
              f"{percent(row['cdm_within_25pct'])} | {row['visits_ratio']:.2f}x | {row['length_ks']:.3f} |")


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0],
                        help="shares of step 2's training patients to train on (default: 0.25 0.5 1)")
    parser.add_argument("--real-dir", type=Path, default=None,
                        help="step 2's training patients, the train/ beside its test/: the report reads both "
                             "(default: $CEHR_GPT_DATA_DIR/patient_sequence/train)")
    parser.add_argument("--omop-dir", type=Path, default=None, help="the exported CDM (default: $OMOP_DIR)")
    parser.add_argument("--full-model", type=Path, default=None,
                        help="a demo-profile model trained on all of --real-dir, used for fraction 1 "
                             "(default: train one)")
    parser.add_argument("--profile", default="demo", choices=("demo", "seed", "tiny"),
                        help="train_cehrgpt.sh's training profile (default demo, as `make demo`)")
    parser.add_argument("--num-patients", type=int, default=2000, help="synthetic patients per fraction (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets, the sampler and the report (default 0)")
    parser.add_argument("--training-seed", type=int, default=None,
                        help="the runner's --seed (default: train_cehrgpt.sh's), to see how much another training moves the figures")
    parser.add_argument("--output", type=Path, required=True, help="folder for every fraction's outputs")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    arguments = parser.parse_args(argv)
    arguments.real_dir = arguments.real_dir or cehr_gpt_data_dir() / "patient_sequence" / "train"
    arguments.omop_dir = arguments.omop_dir or omop_dir()
    bad = [value for value in arguments.fractions if not 0 < value <= 1]
    if bad:
        parser.error(f"--fractions must lie in (0, 1]: {bad}")
    if not parquet_files(arguments.real_dir):
        parser.error(f"--real-dir {arguments.real_dir} holds no Parquet files: run step 2 (make sequences) first")
    problem = None if arguments.full_model is None else unfinished_model_problem(arguments.full_model)
    if problem is not None:
        parser.error(f"--full-model: {problem}")
    return arguments


def main(argv=None) -> None:
    arguments = parse_arguments(argv)
    results = [run_fraction(fraction, arguments) for fraction in sorted(arguments.fractions)]
    print_table(results)
    if arguments.json is not None:
        write_json(arguments.json, results)


if __name__ == "__main__":
    main()
