"""Benchmark for step 2: both cehrbert_data Spark apps (create_cehrgpt_pretraining_data.sh) on an OMOP export.

Runs the script on the same input, in this run, as:
  ours      the script as it is (setup_env.sh's Spark sizing + the quick JIT on small input);
  baseline  the same with the JVM's usual JIT (driver Java options set to the JVM default, which
            turns the script's JIT setting off), i.e. setup_env.sh's sizing alone;
  defaults  (--with-spark-defaults) also Spark's default 200 shuffle partitions, like the official
            script without setup_env.sh (slow: minutes).
and prints each app's wall time (from the script's own lines), the totals and the ratios. Goal:
both apps on the full Synthea 1001 demo CDM in at most 2 minutes on 2 cores.

The input is an OMOP folder as step 1 writes it; by default $OMOP_DIR (make export).

Example:
    source setup_env.sh
    python bench/pretraining_data_bench.py --input-folder "$OMOP_DIR" --repeats 2
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.paths import omop_dir  # noqa: E402

SCRIPT = REPO_ROOT / "cehrgpt_tutorials" / "scripts" / "create_cehrgpt_pretraining_data.sh"
APP_TIME = re.compile(r"^\s+(\w+) took (\d+)m (\d+)s$", re.MULTILINE)


def run_step2(input_folder: Path, output_folder: Path, extra_spark_options: str) -> dict[str, float]:
    shutil.rmtree(output_folder, ignore_errors=True)
    environment = dict(os.environ)
    environment["SPARK_SUBMIT_OPTIONS"] = f"{environment.get('SPARK_SUBMIT_OPTIONS', '')} {extra_spark_options}".strip()
    started = time.perf_counter()
    result = subprocess.run(["sh", str(SCRIPT), "--input_folder", str(input_folder), "--output_folder",
                             str(output_folder), "--start_date", "1985-01-01"],
                            env=environment, capture_output=True, text=True)
    total = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"error: step 2 failed with SPARK_SUBMIT_OPTIONS={environment['SPARK_SUBMIT_OPTIONS']!r}:\n"
                 + result.stderr[-2000:])
    times = {name: int(minutes) * 60 + int(seconds) for name, minutes, seconds in APP_TIME.findall(result.stdout)}
    times["script total"] = total
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input-folder", type=Path, default=omop_dir(),
                        help="OMOP Parquet folder from step 1 (default: $OMOP_DIR, else omop_synthea)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "out" / "pretraining_data_bench")
    parser.add_argument("--repeats", type=int, default=1, help="rounds; the best time of each variant counts")
    parser.add_argument("--with-spark-defaults", action="store_true",
                        help="also run with Spark's default 200 shuffle partitions (minutes)")
    arguments = parser.parse_args()
    if not (arguments.input_folder / "person").is_dir():
        sys.exit(f"error: {arguments.input_folder} has no person/ table folder: run step 1 (make export) "
                 "or pass --input-folder")
    if shutil.which("spark-submit") is None:
        sys.exit("error: spark-submit is not on PATH: source setup_env.sh first")

    variants = {
        "ours": "",
        # Any driver Java option turns the script's quick-JIT setting off; this one is the JVM default.
        "baseline": "--driver-java-options -XX:TieredStopAtLevel=4",
    }
    if arguments.with_spark_defaults:
        variants["defaults"] = "--driver-java-options -XX:TieredStopAtLevel=4 --conf spark.sql.shuffle.partitions=200"

    best: dict[str, dict[str, float]] = {}
    for round_number in range(arguments.repeats):
        for name, options in variants.items():
            times = run_step2(arguments.input_folder, arguments.out / name, options)
            print(f"  round {round_number + 1}: {name:8s} " + ", ".join(f"{app} {seconds:.0f} s" for app, seconds in times.items())
                  + f"  (load average {os.getloadavg()[0]:.1f})", flush=True)
            if name not in best or times["script total"] < best[name]["script total"]:
                best[name] = times
    print(f"best of {arguments.repeats} round(s), input {arguments.input_folder}:")
    for name, times in best.items():
        apps = times["generate_included_concept_list"] + times["generate_training_data"]
        print(f"{name:8s} concept list {times['generate_included_concept_list']:4.0f} s, training data "
              f"{times['generate_training_data']:4.0f} s, both apps {apps:4.0f} s, script {times['script total']:4.0f} s")
    ours = best["ours"]["generate_included_concept_list"] + best["ours"]["generate_training_data"]
    for name in best:
        if name != "ours":
            other = best[name]["generate_included_concept_list"] + best[name]["generate_training_data"]
            print(f"{name} / ours = {other / ours:.2f}x")
    print(f"both apps: {ours:.0f} s (goal <= 120 s: {'met' if ours <= 120 else 'not met'})")
    shutil.rmtree(arguments.out, ignore_errors=True)


if __name__ == "__main__":
    main()
