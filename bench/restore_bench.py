"""Step 5b benchmark: restore_synthetic.sh on N sequences (default 10,000), and what the real CDM's
plausibility cache saves.

Restore: real patient sequences make a valid "generated" input of any size (every one converts, the
same way every run: nothing depends on a model's random output). The bench replicates the demo's
held-out sequences until there are N, numbers them 1..N as the generator does, writes them in the
generator's layout (its seven columns, one Parquet file per --rows-per-file rows, as a batch of 50
writes), and runs restore_synthetic.sh on them --restores times (default 2) into schema --schema. The
first restore starts without the real CDM's plausibility cache (the bench removes its own copy), so it
computes the real side; the second finds it and reuses it. Per restore: wall time, peak memory of
the script's process tree (the converter's workers and Spark's JVM; the PostgreSQL server's processes
are not in it), and the time between the script's own progress lines (censor, vocabulary copy,
converter, its summary, Spark's observation_period and condition_era, load, plausibility, example queries), with
the plausibility step's own figures for the real side.

--cdm-times K ...: the real side alone on a bigger real CDM, where the cache matters: in a PostgreSQL
server of its own under --work, the demo CDM replicated K times (bench/scale_bench.py's
build_replicated_cdm), the plausibility checks without the cache, computing it, and reusing it.

Reads:  --real-sequences (default $CEHR_GPT_DATA_DIR/patient_sequence/test), --source-omop-folder
        (default $OMOP_DIR), the real CDM in schema --source-schema (default cdm) of --dsn (default:
        the embedded demo server)
Writes: --work (default bench/out/restore): synthetic/top_p10000_constrained/ (the sequences and what
        the restores write), synthetic/real_cdm_plausibility.json, restore<i>.log (time-stamped
        output), results.json; schema --schema (default bench_restore) in the database; with
        --cdm-times, a server under --work/pgdata (deleted at the end unless --keep)

Example (after `source setup_env.sh`; heavy, so under the machine's lock):
    flock /tmp/heavy.lock python bench/restore_bench.py --sequences 10000 --cdm-times 1 10
"""

from __future__ import annotations

import argparse
import json
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

from cehrgpt_tutorials.errors import fail  # noqa: E402
from cehrgpt_tutorials.files import atomic_file  # noqa: E402
from cehrgpt_tutorials.generate import OUTPUT_COLUMNS  # noqa: E402
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, omop_dir  # noqa: E402

# Where each phase starts: the first output line matching it (restore_synthetic.sh, omop_pipeline.sh
# and the programs they run print these). A phase lasts until the next one starts.
PHASES = [
    ("censor", re.compile(r"")),
    ("vocabulary copy", re.compile(r"^\[\d\d:\d\d:\d\d\] sequences:")),
    ("converter", re.compile(r"^\[\d\d:\d\d:\d\d\] converting sequences to OMOP")),
    ("summary (skip reasons)", re.compile(r"^Done$")),  # cehrgpt's converter's last line
    ("Spark observation_period", re.compile(r"^\[\d\d:\d\d:\d\d\] rebuilding observation_period")),
    ("Spark condition_era", re.compile(r"^\[\d\d:\d\d:\d\d\] rebuilding condition_era")),
    ("load (load_omop.py)", re.compile(r"^\$ .*load_omop\.py")),
    ("plausibility", None),  # starts at load's last line: the line before the real side's line
    ("example queries", re.compile(r"^Plausibility \(")),
]
REAL_SIDE = re.compile(r"^real CDM's plausibility side: (computed in ([\d.]+) s|reused).*?fingerprint ([\d.]+) s", re.M)
SUMMARY = re.compile(r"^(generated sequences|converted to persons)\s+(\d+)", re.M)


def replicate_sequences(source: Path, count: int, target: Path, rows_per_file: int) -> int:
    """`count` sequences copied round from the real ones in `source`, person_id 1..count, in the
    generator's columns; written to a staging folder renamed to `target`. Returns the real count."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    real = ds.dataset(source, format="parquet").to_table(columns=[c for c in OUTPUT_COLUMNS if c != "person_id"])
    if real.num_rows == 0:
        fail(f"no sequences in {source}")
    copies = pa.concat_tables([real] * -(-count // real.num_rows)).slice(0, count)
    copies = copies.append_column("person_id", pa.array(range(1, count + 1), pa.int64())).select(OUTPUT_COLUMNS)
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    for start in range(0, count, rows_per_file):
        pq.write_table(copies.slice(start, rows_per_file), staging / f"part-{start // rows_per_file:05d}.parquet")
    if target.exists():
        shutil.rmtree(target)  # the bench's own input from an earlier run
    staging.rename(target)
    return real.num_rows


def run_timed(command: list, log: Path) -> dict:
    """Run command; its output lines with the seconds since start, wall seconds, peak tree RSS."""
    started = time.monotonic()
    peak, lines = 0, []
    process = subprocess.Popen([str(word) for word in command], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_bytes(process.pid, "\0"))  # "\0": no server's processes
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open(log, "w") as output:
        for line in process.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
            output.write(f"{lines[-1][0]:8.2f}  {line}")
    return_code = process.wait()
    done.set()
    sampler.join()
    if return_code != 0:
        fail(f"{' '.join(map(str, command[:2]))} failed (exit {return_code}); log: {log}")
    return {"seconds": time.monotonic() - started, "peak_bytes": peak, "lines": lines}


def phase_seconds(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """Seconds per phase of PHASES, from the time-stamped output."""
    starts: dict[str, float] = {"censor": 0.0}
    for name, pattern in PHASES[1:]:
        if pattern is None:
            continue
        start = next((stamp for stamp, text in lines if pattern.search(text)), None)
        if start is not None:
            starts[name] = start
    real_side = next((index for index, (_, text) in enumerate(lines) if REAL_SIDE.match(text)), None)
    if real_side:
        starts["plausibility"] = lines[real_side - 1][0]
    ordered = [(name, starts[name]) for name, _ in PHASES if name in starts]
    ends = [stamp for _, stamp in ordered[1:]] + [total]
    return {name: end - start for (name, start), end in zip(ordered, ends, strict=True)}


def restore(index: int, arguments, sample: Path) -> dict:
    command = ["sh", REPO_ROOT / "cehrgpt_tutorials" / "scripts" / "restore_synthetic.sh", "--sample-folder", sample,
               "--source-omop-folder", arguments.source_omop_folder, "--schema", arguments.schema,
               "--source-schema", arguments.source_schema, "--cpu-cores", arguments.cpu_cores]
    if arguments.dsn:
        command += ["--dsn", arguments.dsn]
    print(f"\n== restore {index}: $ {' '.join(map(str, command))}", flush=True)
    run = run_timed(command, arguments.work / f"restore{index}.log")
    text = "\n".join(line for _, line in run["lines"])
    real = REAL_SIDE.search(text)
    summary = dict((label, int(number)) for label, number in SUMMARY.findall(text))
    result = {"restore": index, "seconds": run["seconds"], "peak_bytes": run["peak_bytes"],
              "phases": phase_seconds(run["lines"], run["seconds"]),
              "generated": summary.get("generated sequences"), "converted": summary.get("converted to persons"),
              "real_side": "reused" if real and real.group(1) == "reused" else "computed",
              "real_checks_s": float(real.group(2)) if real and real.group(2) else None,
              "fingerprint_s": float(real.group(3)) if real else None}
    print(f"restore {index}: {result['seconds']:.1f} s, peak {result['peak_bytes'] / 1e9:.2f} GB, "
          f"{result['converted']} of {result['generated']} converted; real side {result['real_side']}", flush=True)
    for name, seconds in result["phases"].items():
        print(f"  {name:<26} {seconds:7.1f} s", flush=True)
    return result


def real_side_at_scale(arguments) -> list[dict]:
    """The plausibility step on K x the demo CDM (synthetic and real schema the same, so both sides
    cost alike): without the cache, computing it, reusing it."""
    from scale_bench import build_replicated_cdm

    from cehrgpt_tutorials.db import start_embedded_server, stop_embedded_server

    pgdata = arguments.work / "pgdata"
    uri = start_embedded_server(pgdata)
    results = []
    try:
        load = subprocess.run([sys.executable, "load_omop.py", "--demo", "--dsn", uri], cwd=REPO_ROOT,
                              capture_output=True, text=True)
        if load.returncode != 0:
            fail(f"load_omop.py --demo failed: {load.stderr.strip()[-500:]}")
        for times in arguments.cdm_times:
            counts = build_replicated_cdm(uri, times)
            schema, cache = f"scale_k{times}", arguments.work / f"real_cdm_plausibility_k{times}.json"
            cache.unlink(missing_ok=True)
            base = [sys.executable, "-m", "cehrgpt_tutorials.omop.plausibility", "--schema", schema,
                    "--source-schema", schema, "--dsn", uri]
            row = {"times": times, "rows": sum(counts.values())}
            for label, command in (("no cache", base), ("computing the cache", [*base, "--cache", cache]),
                                   ("reusing the cache", [*base, "--cache", cache])):
                started = time.monotonic()
                result = subprocess.run([str(word) for word in command], cwd=REPO_ROOT, capture_output=True, text=True)
                if result.returncode != 0:
                    fail(f"plausibility on {schema} failed: {result.stderr.strip()[-500:]}")
                real = REAL_SIDE.search(result.stdout)
                row[label] = {"seconds": time.monotonic() - started,
                              "real_checks_s": float(real.group(2)) if real and real.group(2) else None,
                              "fingerprint_s": float(real.group(3)) if real else None}
            print(f"{times}x ({row['rows']:,} rows in its tables): " + "; ".join(
                f"{label} {row[label]['seconds']:.1f} s" for label in ("no cache", "computing the cache",
                                                                      "reusing the cache"))
                  + f" (checks {row['computing the cache']['real_checks_s']:.2f} s, fingerprint "
                    f"{row['reusing the cache']['fingerprint_s']:.2f} s)", flush=True)
            results.append(row)
    finally:
        stop_embedded_server(pgdata)
        if not arguments.keep:
            shutil.rmtree(pgdata, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sequences", type=int, default=10_000, help="how many to restore (default %(default)s; 0: none)")
    parser.add_argument("--real-sequences", type=Path, default=cehr_gpt_data_dir() / "patient_sequence" / "test")
    parser.add_argument("--rows-per-file", type=int, default=50, help="rows per Parquet file (default: the generator's "
                        "default batch, %(default)s)")
    parser.add_argument("--restores", type=int, default=2, help="restores of the same input (default %(default)s)")
    parser.add_argument("--source-omop-folder", type=Path, default=omop_dir())
    parser.add_argument("--schema", default="bench_restore", help="the synthetic schema written (default %(default)s)")
    parser.add_argument("--source-schema", default="cdm")
    parser.add_argument("--dsn", default=None, help="default: the PG* variables, else the embedded demo server")
    parser.add_argument("--cpu-cores", type=int, default=2)
    parser.add_argument("--cdm-times", type=int, nargs="*", default=[],
                        help="also the real side alone on the demo CDM replicated K times (e.g. 1 10)")
    parser.add_argument("--keep", action="store_true", help="keep --cdm-times's server under --work")
    parser.add_argument("--work", type=Path, default=REPO_ROOT / "bench" / "out" / "restore")
    arguments = parser.parse_args()
    if arguments.sequences < 0 or arguments.rows_per_file <= 0 or arguments.restores < 0:
        fail("--sequences and --restores must be >= 0 and --rows-per-file > 0")
    arguments.work = arguments.work.absolute()
    arguments.work.mkdir(parents=True, exist_ok=True)
    results: dict = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0], "restores": [], "cdm_times": []}

    if arguments.sequences and arguments.restores:
        if not arguments.real_sequences.is_dir():
            fail(f"no real sequences at {arguments.real_sequences} (run `make sequences` first)")
        sample = arguments.work / "synthetic" / "top_p10000_constrained"
        real = replicate_sequences(arguments.real_sequences, arguments.sequences, sample / "generated_sequences",
                                   arguments.rows_per_file)
        print(f"{arguments.sequences:,} sequences: {real} real ones from {arguments.real_sequences}, replicated, "
              f"person_id 1..{arguments.sequences}", flush=True)
        cache = sample.parent / "real_cdm_plausibility.json"
        if cache.exists():
            print(f"removing the bench's own {cache}: the first restore computes the real side", flush=True)
            cache.unlink()
        for index in range(1, arguments.restores + 1):
            results["restores"].append(restore(index, arguments, sample))
    if arguments.cdm_times:
        results["cdm_times"] = real_side_at_scale(arguments)
    with atomic_file(arguments.work / "results.json") as temporary:
        temporary.write_text(json.dumps(results, indent=1))
    print(f"\n{results['cpus']} CPUs, load average {results['load_before']:.1f} at the start; {arguments.work / 'results.json'}")


if __name__ == "__main__":
    main()
