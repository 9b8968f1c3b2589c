"""Every step of the tutorial at K times the Synthea demo CDM: time, memory, output size.

Builds, in an embedded PostgreSQL of its own, schema scale_k<K> = the demo CDM (schema cdm, from
`load_omop.py --demo`) replicated K times with every entity id shifted by k * 10,000,000 (person,
visit and event ids; the vocabulary and provider/care site ids unchanged), so it is a valid CDM of
K x 1,130 persons. Then, for each K, runs each step as a learner does (a fresh process) and records
its wall time, the peak resident memory of its whole process tree (Spark's JVMs included and, for the
export only, the PostgreSQL server's processes; sampled every 0.2 s) and the size of what it wrote:
  export    export_omop.py --schema scale_k<K>
  step2     create_cehrgpt_pretraining_data.sh (both Spark apps)
  cleanup   cleanup_tokens.py
  train_runner_w1  train_cehrgpt.sh --profile tiny --max_steps 5 --preprocessing_num_workers 1
                   --tokenization runner: the runner tokenizes by itself with one worker (the
                   baseline of its tokenization goal)
  train_runner     the same with the script's default workers (one per core)
  train_prepare_w1 the same as train_runner_w1 with --tokenization prepare: the sequences tokenized
                   first by cehrgpt_tutorials/pipeline/prepare_dataset.py
  train_prepare    the same with the script's default workers (what a learner's run does from 16 MB
                   of sequences on: the script's --tokenization auto)
  inspect          inspect_synthetic.py with the real sequences as the synthetic set (report and plots)
For training it also reports the tokenization rate: training sequences (train/) / (wall - the
Trainer's train_runtime), i.e. over everything before the first training step (imports, loading,
the tokenizer, the tokenization, loading it back), and each variant's rate against train_runner_w1's.
Before each step it times a fixed pure-Python loop (the speed probe): a shared or throttled machine
can run at half speed for minutes (measured: the same 10x tokenization at 500 and at 243 sequences/s
half an hour apart), so read times beside their probe, and the exponents as such.
It prints each step's growth exponent between consecutive K (log time ratio / log K ratio: 1 = linear)
and writes a log-log plot of time against K.

Example:
    source setup_env.sh && nice -n 10 python bench/scale_bench.py --times 1 10      # ~15 min on 2 cores
    python bench/scale_bench.py --times 1 10 100 --work /big/disk/scale_bench
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from demo_bench import tree_bytes  # noqa: E402

from cehrgpt_tutorials.db import start_embedded_server, stop_embedded_server  # noqa: E402

SCRIPTS = REPO_ROOT / "cehrgpt_tutorials" / "scripts"
ID_SHIFT = 10_000_000
VOCABULARY_TABLES = ["concept", "concept_ancestor", "concept_relationship"]
PERSON_TABLES = ["person", "visit_occurrence", "condition_occurrence", "procedure_occurrence", "drug_exposure",
                 "measurement", "death", "observation_period"]
SHARED_IDS = {"provider_id", "care_site_id", "location_id"}  # the same providers serve every copy
STEPS = ["export", "step2", "cleanup", "train_runner_w1", "train_runner", "train_prepare_w1", "train_prepare",
         "inspect"]
TRAIN_STEPS = [name for name in STEPS if name.startswith("train")]
TRAIN_ARGUMENTS = {"train_runner_w1": ["--tokenization", "runner", "--preprocessing_num_workers", 1],
                   "train_runner": ["--tokenization", "runner"],
                   "train_prepare_w1": ["--tokenization", "prepare", "--preprocessing_num_workers", 1],
                   "train_prepare": ["--tokenization", "prepare"]}


def build_replicated_cdm(uri: str, times: int) -> dict[str, int]:
    """Schema scale_k<times>: the demo's tables, person-level ones `times` over with shifted ids. Row counts."""
    import psycopg2

    schema = f"scale_k{times}"
    counts = {}
    with psycopg2.connect(uri) as connection, connection.cursor() as cursor:
        cursor.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        for table in VOCABULARY_TABLES + PERSON_TABLES:
            cursor.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = 'cdm' "
                           "AND table_name = %s ORDER BY ordinal_position", (table,))
            columns = [row[0] for row in cursor.fetchall()]
            if not columns:
                continue
            if table in VOCABULARY_TABLES:
                cursor.execute(f"CREATE TABLE {schema}.{table} AS TABLE cdm.{table}")
            else:
                ids = [column for column in columns
                       if column.endswith("_id") and not column.endswith("concept_id") and column not in SHARED_IDS]
                for column in ids:
                    cursor.execute(f"SELECT coalesce(max({column}), 0) FROM cdm.{table}")
                    if cursor.fetchone()[0] >= ID_SHIFT:
                        raise SystemExit(f"error: cdm.{table}.{column} has ids >= {ID_SHIFT}: copies would collide")
                shifted = [f"{column} + copy * {ID_SHIFT} AS {column}" if column in ids else column
                           for column in columns]
                cursor.execute(f"CREATE TABLE {schema}.{table} AS SELECT {', '.join(shifted)} "
                               f"FROM cdm.{table}, generate_series(0, {times - 1}) AS copies(copy)")
            cursor.execute(f"SELECT count(*) FROM {schema}.{table}")
            counts[table] = cursor.fetchone()[0]
    return counts


def folder_bytes(path: Path) -> int:
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file() and not item.is_symlink()) \
        if path.exists() else 0


def run_step(command: list, environment: dict, log: Path, pgdata: str | None) -> dict:
    """Run one step; wall seconds, peak tree RSS (bytes) and its output text. Exits on failure.

    The PostgreSQL server's processes (found by `pgdata` on the postmaster's command line) count only
    when `pgdata` is given: for the export. Idle, they hold ~160 MB (shared memory counted per process).
    """
    started = time.monotonic()
    peak = 0
    with open(log, "w") as output:
        process = subprocess.Popen([str(word) for word in command], cwd=REPO_ROOT, env=environment, stdout=output,
                                   stderr=subprocess.STDOUT)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_bytes(process.pid, pgdata or "\0"))  # "\0": on no command line
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        return_code = process.wait()
        done.set()
        sampler.join()
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    if return_code != 0:
        raise SystemExit(f"error: {' '.join(map(str, command[:3]))} failed (exit {return_code}); log: {log}\n"
                         + text[-3000:])
    return {"seconds": seconds, "peak_bytes": peak, "text": text}


def speed_probe() -> float:
    """Seconds for a fixed pure-Python loop (~0.5-1.5 s): how fast this machine runs right now."""
    started = time.perf_counter()
    total = 0
    for number in range(5_000_000):
        total += number
    return time.perf_counter() - started


def train_runtime(text: str) -> float:
    match = re.search(r"train_runtime\s+=\s+(\d+):(\d+):([\d.]+)", text)
    return int(match.group(1)) * 3600 + int(match.group(2)) * 60 + float(match.group(3)) if match else 0.0


def run_scale(times: int, uri: str, pgdata: str, work: Path, environment: dict) -> dict:
    import pyarrow.parquet as pq

    folder = work / f"k{times}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rows = build_replicated_cdm(uri, times)
    omop, data, logs = folder / "omop", folder / "data", folder / "logs"
    logs.mkdir()
    environment = dict(environment, OMOP_DIR=str(omop), CEHR_GPT_DATA_DIR=str(data))
    sequences_dir = data / "patient_sequence"
    synthetic_run = folder / "synthetic" / "top_p9500"
    commands = {
        "export": ([sys.executable, "export_omop.py", "--dsn", uri, "--schema", f"scale_k{times}", "--output-dir", omop],
                   omop),
        "step2": (["sh", SCRIPTS / "create_cehrgpt_pretraining_data.sh", "--input_folder", omop, "--output_folder", data,
                   "--start_date", "1985-01-01"], sequences_dir),
        "cleanup": ([sys.executable, "cleanup_tokens.py", "--patient-sequence-dir", sequences_dir], sequences_dir),
        **{name: (["sh", SCRIPTS / "train_cehrgpt.sh", "--profile", "tiny", "--data-folder", sequences_dir,
                   "--model-dir", folder / f"model_{name}", "--max_steps", 5, *TRAIN_ARGUMENTS[name]],
                  folder / f"model_{name}") for name in TRAIN_STEPS},
        "inspect": ([sys.executable, "inspect_synthetic.py", "--synthetic-dir", synthetic_run, "--real-dir", sequences_dir,
                     "--concept-dir", omop / "concept", "--report-dir", folder / "report"], folder / "report"),
    }
    results = {"times": times, "rows": rows, "persons": rows.get("person", 0), "steps": {}}
    for name in STEPS:
        if name == "inspect":  # the real sequences stand in for a synthetic sample of the same size
            (synthetic_run).mkdir(parents=True)
            (synthetic_run / "generated_sequences").symlink_to(sequences_dir, target_is_directory=True)
        command, output = commands[name]
        print(f"  K={times:<4} {name:<16}", end=" ", flush=True)
        probe = speed_probe()
        # Each training starts from a cold `datasets` cache, as a learner's first run does (the
        # Parquet files converted to Arrow once would otherwise serve every training after the first).
        step_environment = (dict(environment, HF_DATASETS_CACHE=str(folder / f"hf_cache_{name}"))
                            if name in TRAIN_STEPS else environment)
        step = run_step(command, step_environment, logs / f"{name}.log", pgdata if name == "export" else None)
        step["speed_probe_seconds"] = probe
        step["output_bytes"] = folder_bytes(output)
        if name in TRAIN_STEPS:
            training = sequences_dir / "train" if (sequences_dir / "train").is_dir() else sequences_dir
            sequences = pq.ParquetDataset(training).read(columns=["person_id"]).num_rows
            tokenizing = max(step["seconds"] - train_runtime(step["text"]), 1e-9)
            step["sequences"] = sequences
            step["tokenization_sequences_per_second"] = sequences / tokenizing
        if name == "step2":
            step["part_files"] = len(list(sequences_dir.rglob("part-*.parquet")))  # train/ and test/
        del step["text"]
        results["steps"][name] = step
        extra = (f", {step['tokenization_sequences_per_second']:.0f} sequences/s tokenizing"
                 if "sequences" in step else "")
        print(f"{step['seconds']:7.1f} s  {step['peak_bytes'] / 2**20:6.0f} MB peak  "
              f"{step['output_bytes'] / 2**20:7.1f} MB out{extra}  (speed probe {probe:.2f} s)", flush=True)
    return results


def print_summary(all_results: list[dict]) -> None:
    print("\nstep              " + "".join(f"{'K=' + str(r['times']) + ' (' + str(r['persons']) + ' persons)':>34}"
                                    for r in all_results) + "   growth exponents (time)")
    for name in STEPS:
        cells = "".join(f"{r['steps'][name]['seconds']:>14.1f} s {r['steps'][name]['peak_bytes'] / 2**20:>8.0f} MB"
                        f" {r['steps'][name]['output_bytes'] / 2**20:>6.0f} MB" for r in all_results)
        exponents = []
        for low, high in zip(all_results, all_results[1:], strict=False):
            ratio = math.log(high["steps"][name]["seconds"] / low["steps"][name]["seconds"])
            exponents.append(f"{ratio / math.log(high['times'] / low['times']):.2f}")
        print(f"{name:<16}{cells}   {' '.join(exponents)}")
    for r in all_results:
        baseline = r["steps"]["train_runner_w1"]["tokenization_sequences_per_second"]
        rates = ", ".join(f"{name} {r['steps'][name]['tokenization_sequences_per_second']:.0f} "
                          f"({r['steps'][name]['tokenization_sequences_per_second'] / baseline:.2f}x)"
                          for name in TRAIN_STEPS)
        print(f"K={r['times']}: tokenization sequences/s: {rates}; step 2 wrote {r['steps']['step2']['part_files']} "
              f"part files; persons/s: " + ", ".join(f"{name} {r['persons'] / r['steps'][name]['seconds']:.0f}"
                                                    for name in STEPS))


def plot(all_results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    times = [r["times"] for r in all_results]
    for name in STEPS:
        axis.plot(times, [r["steps"][name]["seconds"] for r in all_results], marker="o", label=name)
    if len(times) > 1:  # a linear reference through step 2's first point
        first = all_results[0]["steps"]["step2"]["seconds"]
        axis.plot(times, [first * k / times[0] for k in times], "k:", label="linear (from step2)")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("K (copies of the 1,130-person demo CDM)")
    axis.set_ylabel("wall time (s)")
    axis.set_title("Tutorial steps at K x the demo (2-core sandbox)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--times", type=int, nargs="+", default=[1, 10, 100], help="K values (default 1 10 100)")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "bench" / "out" / "scale_bench",
                        help="working folder (the server, the data of every K); deleted at the end unless --keep")
    parser.add_argument("--plot", type=Path, default=REPO_ROOT / "bench" / "scale_bench.png")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    parser.add_argument("--keep", action="store_true", help="keep the working folder")
    arguments = parser.parse_args()
    if any(k < 1 or k * ID_SHIFT >= 2**31 for k in arguments.times):
        parser.error(f"--times must be between 1 and {2**31 // ID_SHIFT - 1} (ids are 32-bit integers)")

    work = arguments.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    pgdata = work / "pgdata"
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("PGHOST", "PGDATABASE", "PGSERVICE", "CEHRGPT_PGDATA")}
    uri = start_embedded_server(pgdata)
    all_results = []
    try:
        load = subprocess.run([sys.executable, "load_omop.py", "--demo", "--dsn", uri], cwd=REPO_ROOT,
                              env=environment, capture_output=True, text=True)
        if load.returncode != 0:
            raise SystemExit(f"error: loading the demo failed: {load.stderr[-2000:]}")
        for times in sorted(arguments.times):
            all_results.append(run_scale(times, uri, str(pgdata), work, environment))
            if arguments.json:  # written after each K, so a long run that stops keeps what it measured
                arguments.json.write_text(json.dumps(all_results, indent=2))
    finally:
        stop_embedded_server(pgdata)
        if not arguments.keep:
            shutil.rmtree(work, ignore_errors=True)
    print_summary(all_results)
    plot(all_results, arguments.plot)
    print(f"plot: {arguments.plot}")


if __name__ == "__main__":
    main()
