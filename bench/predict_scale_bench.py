"""Step 7's data stages at K times the demo: cohort, histories and baseline, with the caps, per task.

Step: 7 (predict.py's stages 1-3: cohort.query_cohort, histories.build_histories with the caps,
models.baseline's fit and prediction), the four tasks in turn as predict.py runs them.
Reads: bench/cohort_bench.py's kept server (run it with --keep first: schemas scale_k<K>, indexed as
load_omop.py indexes), and the demo's patient sequences ($CEHR_GPT_DATA_DIR/patient_sequence, from
`make cleanup`), replicated K times with person_id shifted by k * 10,000,000 as scale_bench shifts
the CDM, so cohort rows and sequences match.
Writes: bench/out/predict_scale/k<K>/ (the replicated sequences; deleted unless --keep) and stdout.

Each K runs in a process of its own, so its peak memory (the process's max RSS) is that K's. Caps:
--caps TRAIN TEST, several pairs to show that time follows the caps, not the cohort. The baseline,
--old-from COMMIT: that commit's per-row build_histories (no caps; read with `git show`), on the
first task, in a process of its own per K.

Example (after `flock /tmp/heavy.lock python bench/cohort_bench.py --times 1 10 100 --keep`):
    source setup_env.sh && python bench/predict_scale_bench.py --times 1 10 100 --caps 20000 5000 --caps 5000 1250
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "bench"))

from cohort_bench import DEFAULT_WORK as COHORT_WORK  # noqa: E402
from cohort_bench import TASKS  # noqa: E402
from scale_bench import ID_SHIFT  # noqa: E402

from cehrgpt_tutorials.paths import cehr_gpt_data_dir  # noqa: E402

OUT = REPO_ROOT / "bench" / "out" / "predict_scale"


def replicate_sequences(source: Path, target: Path, times: int) -> int:
    """train/ and test/ of source, `times` copies with shifted person_id; returns the sequences written."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from cehrgpt_tutorials.files import parquet_files

    written = 0
    for split in ("train", "test"):
        (target / split).mkdir(parents=True, exist_ok=True)
        for number, path in enumerate(parquet_files(source / split)):
            table = pq.read_table(path)
            column = table.schema.get_field_index("person_id")
            for copy in range(times):
                shifted = pc.add(table.column(column).cast(pa.int64()), copy * ID_SHIFT)
                pq.write_table(table.set_column(column, "person_id", shifted.cast(table.schema.field(column).type)),
                               target / split / f"part-{number:03d}-{copy:04d}.parquet")
                written += table.num_rows
    return written


def one_scale(times: int, caps: list[tuple[int, int]], sequences: Path) -> dict:
    """Every task's data stages at one K, for each cap pair; with this process's peak memory."""
    from cehrgpt_tutorials.db import connect, start_embedded_server
    from cehrgpt_tutorials.prediction import cohort as cohorts
    from cehrgpt_tutorials.prediction import histories, models

    uri = start_embedded_server(COHORT_WORK / "pgdata")
    connection = connect(uri)
    rows = []
    for task in TASKS:
        sql = (cohorts.COHORT_SQL_DIR / f"{task}.sql").read_text()
        started = time.monotonic()
        cohort = cohorts.query_cohort(connection, sql, f"scale_k{times}", task)
        cohort_s = time.monotonic() - started
        for train_cap, test_cap in caps:
            started = time.monotonic()
            examples = histories.build_histories(cohort, sequences, max_examples={"train": train_cap, "test": test_cap})
            histories_s = time.monotonic() - started
            started = time.monotonic()
            with tempfile.TemporaryDirectory() as work:
                models.baseline(examples.train, examples.test, Path(work))
            baseline_s = time.monotonic() - started
            rows.append({"task": task, "caps": [train_cap, test_cap], "cohort_rows": len(cohort),
                         "train": examples.train.num_rows, "test": examples.test.num_rows, "cohort_s": cohort_s,
                         "histories_s": histories_s, "baseline_s": baseline_s})
    connection.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"times": times, "rows": rows, "peak_bytes": peak}


def old_histories(times: int, commit: str, sequences: Path) -> dict:
    """The first task's histories built by `commit`'s prediction/cohort.py (one Python object per patient)."""
    import importlib.util

    from cehrgpt_tutorials.db import connect, start_embedded_server
    from cehrgpt_tutorials.prediction import cohort as cohorts

    source = subprocess.run(["git", "show", f"{commit}:cehrgpt_tutorials/prediction/cohort.py"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=True).stdout
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "old_cohort.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("old_cohort", path)
        old = importlib.util.module_from_spec(spec)
        sys.modules["old_cohort"] = old  # its dataclasses look their module up there
        spec.loader.exec_module(old)
    connection = connect(start_embedded_server(COHORT_WORK / "pgdata"))
    task = TASKS[0]
    cohort = cohorts.query_cohort(connection, (cohorts.COHORT_SQL_DIR / f"{task}.sql").read_text(),
                                  f"scale_k{times}", task)
    connection.close()
    started = time.monotonic()
    built = old.build_histories(cohort, sequences)
    seconds = time.monotonic() - started
    return {"times": times, "task": task, "train": built.train.num_rows, "test": built.test.num_rows,
            "histories_s": seconds, "peak_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def exponent(low: float, high: float, k_low: int, k_high: int) -> float | None:
    return math.log(high / low) / math.log(k_high / k_low) if low > 0 and high > 0 else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--times", type=int, nargs="+", default=[1, 10, 100], help="K values (default 1 10 100)")
    parser.add_argument("--caps", type=int, nargs=2, action="append", metavar=("TRAIN", "TEST"),
                        help="--max-train-examples and --max-test-examples; repeat for several (default 20000 5000)")
    parser.add_argument("--sequences", type=Path, default=None,
                        help="the demo's patient_sequence (default $CEHR_GPT_DATA_DIR/patient_sequence)")
    parser.add_argument("--keep", action="store_true", help="keep the replicated sequences under bench/out/predict_scale")
    parser.add_argument("--old-from", default=None, metavar="COMMIT",
                        help="also time COMMIT's per-row histories on the first task (the baseline)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # one K, in its own process
    parser.add_argument("--old-one", type=int, default=None, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    caps = [tuple(pair) for pair in (arguments.caps or [[20_000, 5_000]])]
    sequences = arguments.sequences or cehr_gpt_data_dir() / "patient_sequence"
    if arguments.old_one is not None:
        print(json.dumps(old_histories(arguments.old_one, arguments.old_from,
                                       OUT / f"k{arguments.old_one}" / "patient_sequence")))
        return
    if arguments.one is not None:
        print(json.dumps(one_scale(arguments.one, caps, OUT / f"k{arguments.one}" / "patient_sequence")))
        return
    if not (COHORT_WORK / "pgdata").is_dir():
        raise SystemExit(f"error: no kept cohort_bench server in {COHORT_WORK}: run "
                         "`python bench/cohort_bench.py --times 1 10 100 --keep` first")
    results = []
    for times in arguments.times:
        target = OUT / f"k{times}" / "patient_sequence"
        if not target.is_dir():
            started = time.monotonic()
            count = replicate_sequences(sequences, target, times)
            print(f"K={times}: {count:,} sequences replicated in {time.monotonic() - started:.1f} s", flush=True)
        command = [sys.executable, __file__, "--one", str(times)]
        for train_cap, test_cap in caps:
            command += ["--caps", str(train_cap), str(test_cap)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"error: K={times} failed:\n{done.stderr[-3000:]}")
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        if arguments.old_from:
            done = subprocess.run([sys.executable, __file__, "--old-one", str(times), "--old-from", arguments.old_from],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"error: K={times}, the baseline failed:\n{done.stderr[-3000:]}")
            results[-1]["old"] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n{'K':>4} {'task':<40} {'caps':>12} {'rows':>8} {'train':>6} {'test':>6} {'cohort s':>9} "
          f"{'histories s':>11} {'baseline s':>10}")
    for result in results:
        for row in result["rows"]:
            print(f"{result['times']:>4} {row['task']:<40} {'/'.join(map(str, row['caps'])):>12} {row['cohort_rows']:>8,} "
                  f"{row['train']:>6,} {row['test']:>6,} {row['cohort_s']:>9.2f} {row['histories_s']:>11.2f} "
                  f"{row['baseline_s']:>10.2f}")
    print(f"\n{'K':>4} {'caps':>12} {'data stages, 4 tasks':>21} {'peak RSS':>9}")
    totals = {}
    for result in results:
        for pair in caps:
            mine = [row for row in result["rows"] if tuple(row["caps"]) == pair]
            # The cohort runs once per task; histories and baseline once per cap pair.
            total = sum(row["cohort_s"] + row["histories_s"] + row["baseline_s"] for row in mine)
            totals[(result["times"], pair)] = total
            print(f"{result['times']:>4} {'/'.join(map(str, pair)):>12} {total:>19.1f} s "
                  f"{result['peak_bytes'] / 2**30:>7.2f} GB")
    for result in results:
        if "old" in result:
            old = result["old"]
            new = next(row for row in result["rows"] if row["task"] == old["task"])
            print(f"baseline {arguments.old_from[:10]} at {result['times']}x, {old['task']}: per-row histories "
                  f"{old['histories_s']:.2f} s ({old['train']:,} / {old['test']:,} examples, no caps), peak "
                  f"{old['peak_bytes'] / 2**30:.2f} GB; now {new['histories_s']:.2f} s with caps "
                  f"{'/'.join(map(str, new['caps']))}, peak {result['peak_bytes'] / 2**30:.2f} GB for everything")
    ks = [result["times"] for result in results]
    for low, high in zip(ks, ks[1:], strict=False):
        for pair in caps:
            value = exponent(totals[(low, pair)], totals[(high, pair)], low, high)
            print(f"growth exponent {low}x -> {high}x, caps {'/'.join(map(str, pair))}: "
                  f"{value:.2f}" if value is not None else "n/a")
    if not arguments.keep:
        shutil.rmtree(OUT, ignore_errors=True)


if __name__ == "__main__":
    main()
