"""Step 5a benchmark: generation throughput (patients per second) against --batch-size.

For each repeat and each batch size (default 25 50 100 250; the default of generate_synthetic.sh, 50,
is the baseline every other size is compared with, measured in the same run) it runs
generate_synthetic.sh with the same number of patients (default 500: a multiple of every size, so
every setting generates exactly that many) and the same --seed, and reads two times: the script's
wall time (model loading and writing included) and the time the generator spent in model.generate
(its "model.generate took" line). Repeats go round the sizes (repeat 1 of each, then repeat 2, ...),
so a machine that gets busier part-way hits every size alike. Prints one row per batch size: patients,
seconds, patients per second and the ratio to the baseline; the machine's CPU count and load beside.

Reads:  --model-dir (default $CEHR_GPT_MODEL_DIR), the prompts (default $CEHR_GPT_DATA_DIR/patient_sequence)
Writes: --output-dir (default bench/out/generation): b<size>_r<repeat>/ (each run's sample and log),
        results.json (rewritten after each run)

Example (after `source setup_env.sh`; a heavy job, so under the machine's lock):
    flock /tmp/heavy.lock python bench/generation_bench.py --batch-sizes 25 50 100 250 --patients 500
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.errors import fail  # noqa: E402
from cehrgpt_tutorials.files import atomic_file  # noqa: E402
from cehrgpt_tutorials.paths import cehr_gpt_model_dir  # noqa: E402
from cehrgpt_tutorials.pipeline.synthetic_options import BATCH_SIZE  # noqa: E402

GENERATE_SECONDS = re.compile(r"model\.generate took ([\d.]+)s")
STEPS = re.compile(r"over (\d+) steps")  # the constrained sampler's processor: one call per decoding step
GENERATED_ROWS = re.compile(r"^generated (\d+) sequences", re.M)


def run_once(batch_size: int, repeat: int, arguments) -> dict:
    folder = arguments.output_dir / f"b{batch_size}_r{repeat}"
    command = ["sh", str(REPO_ROOT / "cehrgpt_tutorials" / "scripts" / "generate_synthetic.sh"),
               "--model-dir", str(arguments.model_dir), "--output-dir", str(folder),
               "--num-patients", str(arguments.patients), "--batch-size", str(batch_size),
               "--sampler", arguments.sampler, "--seed", str(arguments.seed)]
    print(f"$ {' '.join(command)}", flush=True)
    load = os.getloadavg()[0]
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    wall = time.monotonic() - started
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "log.txt").write_text(result.stdout + result.stderr)
    generate, rows = GENERATE_SECONDS.search(result.stdout), GENERATED_ROWS.search(result.stdout)
    if result.returncode != 0 or not generate or not rows:
        fail(f"generate_synthetic.sh --batch-size {batch_size} failed (exit {result.returncode}); log: {folder / 'log.txt'}")
    steps = STEPS.search(result.stdout)
    return {"batch_size": batch_size, "repeat": repeat, "patients": int(rows.group(1)), "wall_s": wall,
            "generate_s": float(generate.group(1)), "load_before": load, "tokens": generated_tokens(folder),
            "steps": int(steps.group(1)) if steps else None}


def generated_tokens(folder: Path) -> int:
    """Tokens in the sample's sequences (prompts included)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    [sequences] = folder.glob("*/generated_sequences")
    return pc.sum(pc.list_value_length(ds.dataset(sequences, format="parquet").to_table(
        columns=["concept_ids"]).column(0))).as_py()


def summarize(results: list[dict], baseline: int) -> None:
    by_size: dict[int, list[dict]] = {}
    for result in results:
        by_size.setdefault(result["batch_size"], []).append(result)

    def rate(runs: list[dict], key: str) -> float:
        return sum(run["patients"] for run in runs) / sum(run[key] for run in runs)

    base = by_size.get(baseline)
    print(f"\n{os.cpu_count()} CPUs; load average before each run: "
          + ", ".join(f"{run['load_before']:.1f}" for run in results))
    # A batch decodes until its longest sequence ends: steps x batch size slots, of which the tokens
    # written are the useful share.
    print(f"{'batch size':>10} {'runs':>4} {'patients':>8} {'generate() s':>12} {'wall s':>8} "
          f"{'patients/s (generate)':>21} {'patients/s (wall)':>17} {'vs baseline':>11} {'tokens/s':>8} "
          f"{'tokens / slots':>14}")
    for size in sorted(by_size):
        runs = by_size[size]
        ratio = f"{rate(runs, 'generate_s') / rate(base, 'generate_s'):.2f}x" if base else "n/a"
        tokens = sum(r["tokens"] for r in runs)
        slots = sum(r["steps"] * size for r in runs) if all(r["steps"] for r in runs) else None
        print(f"{size:>10} {len(runs):>4} {runs[0]['patients']:>8} "
              f"{sum(r['generate_s'] for r in runs) / len(runs):>12.1f} {sum(r['wall_s'] for r in runs) / len(runs):>8.1f} "
              f"{rate(runs, 'generate_s'):>21.2f} {rate(runs, 'wall_s'):>17.2f} "
              f"{ratio + (' (baseline)' if size == baseline else ''):>11} "
              f"{tokens / sum(r['generate_s'] for r in runs):>8.0f} {f'{tokens / slots:.0%}' if slots else 'n/a':>14}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=cehr_gpt_model_dir(), help="the trained model (default: %(default)s)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[25, 50, 100, 250])
    parser.add_argument("--patients", type=int, default=500, help="patients per run (default %(default)s; make it a "
                        "multiple of every batch size, so every run generates exactly that many)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sampler", choices=("constrained", "raw"), default="constrained")
    parser.add_argument("--output-dir", type=Path, default=REPO_ROOT / "bench" / "out" / "generation")
    parser.add_argument("--table-only", action="store_true",
                        help="print the table of the runs in --output-dir's results.json again, generating nothing")
    arguments = parser.parse_args()
    if arguments.table_only:
        results = json.loads((arguments.output_dir / "results.json").read_text())
        for result in results:  # runs recorded before the token count was
            folder = arguments.output_dir / f"b{result['batch_size']}_r{result['repeat']}"
            result.setdefault("tokens", generated_tokens(folder))
            steps = STEPS.search((folder / "log.txt").read_text())
            result.setdefault("steps", int(steps.group(1)) if steps else None)
        summarize(results, BATCH_SIZE)
        return
    if not (arguments.model_dir / "config.json").is_file():
        fail(f"no trained model in {arguments.model_dir} (no config.json): run `make train` first")
    uneven = [size for size in arguments.batch_sizes if size <= 0 or arguments.patients % size]
    if uneven:
        fail(f"--patients {arguments.patients} is not a multiple of batch size {uneven[0]}: runs would differ in size")
    sizes = arguments.batch_sizes if BATCH_SIZE in arguments.batch_sizes else [BATCH_SIZE, *arguments.batch_sizes]
    arguments.output_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for repeat in range(1, arguments.repeats + 1):
        for size in sizes:
            results.append(run_once(size, repeat, arguments))
            print(f"  batch {size}: {results[-1]['patients']} patients, generate() {results[-1]['generate_s']:.1f} s, "
                  f"wall {results[-1]['wall_s']:.1f} s", flush=True)
            with atomic_file(arguments.output_dir / "results.json") as temporary:
                temporary.write_text(json.dumps(results, indent=1))
    summarize(results, BATCH_SIZE)


if __name__ == "__main__":
    main()
