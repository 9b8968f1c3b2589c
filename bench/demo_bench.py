"""Benchmark for `make demo`: the whole tutorial from an empty output folder, then again.

Runs `make demo` twice in a fresh output folder (OMOP_DIR and the other setup_env.sh folders point
into it, so the repository's own omop_synthea/ is not touched):
  1. from nothing: every step runs (embedded PostgreSQL, export, Spark, cleanup, train, generate,
     restore, inspect). Wall time per step (the demo's own "--- step done in" lines) and in total;
     peak memory = the largest sum of resident memory over `make`'s process tree plus the embedded
     PostgreSQL server's processes (they are detached from the tree), sampled every 0.2 s. Summing
     RSS counts shared pages once per process, so it over-states memory: the goal is met with margin
     if this sum meets it.
  2. right after: everything must be skipped and the summary re-printed.
The report's headline numbers come from the run's report.json. Baselines are the issue's goals
(20 minutes, 8 GB, 30 s for the re-run); ratios are printed against them.

Reads:  the repository (make demo builds .venv first if it is missing; time that separately)
Writes: OUTPUT (default: a new temporary folder, deleted afterwards unless --keep), numbers on
        stdout; --json FILE writes them too.

Example:
    python bench/demo_bench.py --json bench/out/demo_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))
from cehrgpt_tutorials.pipeline.steps import find_report  # noqa: E402

GOAL_SECONDS = 20 * 60
GOAL_BYTES = 8 * 1024**3
GOAL_RERUN_SECONDS = 30
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def process_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, resident bytes, command line) for every process we can read."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat_file:
                stat = stat_file.read().decode(errors="replace")
            with open(f"/proc/{entry.name}/cmdline", "rb") as cmdline_file:
                cmdline = cmdline_file.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # the process ended while we looked
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = (int(fields[1]), int(fields[21]) * PAGE_SIZE, cmdline)
    return table


def tree_bytes(root_pid: int, pgdata: str) -> int:
    """Resident bytes of root_pid's descendants plus the processes of the server on `pgdata`."""
    table = process_table()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    # The postmaster names its data folder on its command line; its backends are its children.
    stack = [root_pid] + [pid for pid, (_, _, cmdline) in table.items() if pgdata in cmdline]
    members = set()
    while stack:
        pid = stack.pop()
        if pid in table and pid not in members:
            members.add(pid)
            stack.extend(children.get(pid, []))
    return sum(table[pid][1] for pid in members)


def run_make_demo(environment: dict[str, str], log_path: Path, pgdata: str) -> tuple[float, int, str]:
    """Runs `make demo`; returns (wall seconds, peak tree bytes, stdout). Exits on failure."""
    started = time.monotonic()
    with open(log_path, "w") as log:
        process = subprocess.Popen(["make", "demo"], cwd=REPO_ROOT, env=environment, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        peak = 0
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_bytes(process.pid, pgdata))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        output = []
        for line in process.stdout:
            log.write(line)
            log.flush()
            output.append(line)
            print(line, end="", flush=True)
        return_code = process.wait()
        done.set()
        sampler.join()
    seconds = time.monotonic() - started
    if return_code != 0:
        raise SystemExit(f"error: make demo failed (exit {return_code}); log: {log_path}")
    return seconds, peak, "".join(output)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--output", type=Path, help="output folder for the demo (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the output folder afterwards")
    parser.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = parser.parse_args()

    if not (REPO_ROOT / ".venv" / ".setup-complete").exists():
        raise SystemExit("error: .venv is not built; run `make setup` first (this benchmark times the demo after setup)")
    output = args.output or Path(tempfile.mkdtemp(prefix="demo_bench_"))
    output = output.resolve()
    if (output / "omop_synthea").exists():
        raise SystemExit(f"error: {output / 'omop_synthea'} exists; give an empty --output")
    demo_dir = output / "omop_synthea"
    environment = dict(os.environ, OMOP_DIR=str(demo_dir), CEHR_GPT_DATA_DIR=str(demo_dir),
                       CEHR_GPT_MODEL_DIR=str(demo_dir / "cehrgpt_model"),
                       SYNTHETIC_DATA_OUTPUT_DIR=str(demo_dir / "synthetic_data"))
    for variable in ("CEHRGPT_PGDATA", "PGHOST", "PGDATABASE", "PGSERVICE", "FORCE"):
        environment.pop(variable, None)  # the demo must use its own embedded server and start over
    pgdata = str(demo_dir / "pgdata")

    try:
        first_seconds, peak_bytes, first_output = run_make_demo(environment, output / "first_run.log", pgdata)
        second_seconds, _, second_output = run_make_demo(environment, output / "second_run.log", pgdata)
        skipped = second_output.count("already done, skipped")
        steps = {name: text for name, text in re.findall(r"^--- (\S+) done in (.+)$", first_output, re.M)}
        report_path = find_report(demo_dir / "synthetic_data")
        report = json.loads(report_path.read_text()) if report_path else {}
    finally:
        subprocess.run([sys.executable, "-m", "cehrgpt_tutorials.db", "stop"], cwd=REPO_ROOT,
                       env=dict(environment, CEHRGPT_PGDATA=pgdata), capture_output=True)
        if not args.keep and args.output is None:
            shutil.rmtree(output, ignore_errors=True)

    results = {
        "first_run_seconds": round(first_seconds, 1),
        "peak_tree_rss_bytes": peak_bytes,
        "second_run_seconds": round(second_seconds, 1),
        "second_run_steps_skipped": skipped,
        "steps": steps,
        "report": report,
    }
    print("\n=== make demo benchmark")
    for name, text in steps.items():
        print(f"  {name:<10} {text}")
    print(f"  first run   {first_seconds / 60:.1f} min  ({first_seconds / GOAL_SECONDS:.2f}x the 20 min goal)")
    print(f"  peak memory {peak_bytes / 1024**3:.2f} GiB summed RSS  ({peak_bytes / GOAL_BYTES:.2f}x the 8 GiB goal)")
    print(f"  second run  {second_seconds:.1f} s, {skipped} steps skipped  "
          f"({second_seconds / GOAL_RERUN_SECONDS:.2f}x the 30 s goal)")
    for key in ("valid_fraction", "converted_fraction", "prevalence_pearson_r", "exact_copy_fraction"):
        print(f"  report      {key} = {report.get(key)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
