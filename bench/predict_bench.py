"""Benchmark for step 7's slowest part: cehrgpt's zero-shot sampling, as predict.py runs it vs as-is.

Goal: `make predict` in <= 6 minutes after `make demo` on 2 CPU cores; zero-shot is most
of it (20 sampled futures per test patient, one patient at a time). predict.py runs cehrgpt's
time_to_event_prediction with one math thread per process (OMP_NUM_THREADS=1) and one process per
core, each on a shard of the patients. The baseline, in the same run, is the same command as cehrgpt
runs it by default: one process, torch's default threads (one per core, set explicitly here).

Both run the real command on the same first --patients test examples of the default cohort (built
the way predict.py builds them) with the same model, task and --max-new-tokens; the numbers are
seconds per patient and their ratio.

Reads:  the CDM (embedded demo server or --dsn), $CEHR_GPT_DATA_DIR/patient_sequence, the model.
Writes: a temporary folder (deleted); the numbers on stdout, --json FILE too.

Example:
    python bench/predict_bench.py --patients 20
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.db import connect  # noqa: E402
from cehrgpt_tutorials.paths import cehr_gpt_data_dir, cehr_gpt_model_dir  # noqa: E402
from cehrgpt_tutorials.prediction import cohort as cohorts  # noqa: E402
from cehrgpt_tutorials.prediction import histories, models  # noqa: E402
from cehrgpt_tutorials.prediction.pipeline import model_context  # noqa: E402


def timed_zero_shot(test, model_dir: Path, folder: Path, workers: int, threads: int, max_new_tokens: int,
                    trajectories: int) -> float:
    """Seconds for models.zero_shot on `test` with `workers` processes of `threads` math threads each."""
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)  # models.subprocess_environment() keeps a value set here
    try:
        started = time.monotonic()
        models.zero_shot(test, model_dir, folder, ["9203"], 365, trajectories, max_new_tokens,
                         model_context(model_dir), workers)
        return time.monotonic() - started
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--patients", type=int, default=20, help="test examples to predict (default 20)")
    parser.add_argument("--model-dir", type=Path, default=None, help="default $CEHR_GPT_MODEL_DIR")
    parser.add_argument("--patient-sequence-dir", type=Path, default=None)
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    arguments = parser.parse_args()
    model_dir = arguments.model_dir or cehr_gpt_model_dir()
    sequences = arguments.patient_sequence_dir or cehr_gpt_data_dir() / "patient_sequence"
    connection = connect(arguments.dsn)
    try:
        cohort = cohorts.query_cohort(connection, cohorts.DEFAULT_COHORT_SQL.read_text(), "cdm", "default")
    finally:
        connection.close()
    test = histories.build_histories(cohort, sequences).test
    test = test.slice(0, min(arguments.patients, test.num_rows))
    cores = len(os.sched_getaffinity(0))
    results = {"patients": test.num_rows, "cores": cores, "max_new_tokens": arguments.max_new_tokens,
               "trajectories": arguments.trajectories, "model_dir": str(model_dir)}
    with tempfile.TemporaryDirectory(prefix="predict_bench_") as temporary:
        print(f"baseline: 1 process, {cores} threads (cehrgpt as-is)")
        baseline = timed_zero_shot(test, model_dir, Path(temporary) / "baseline", 1, cores,
                                   arguments.max_new_tokens, arguments.trajectories)
        print(f"predict.py: {cores} processes, 1 thread each")
        ours = timed_zero_shot(test, model_dir, Path(temporary) / "ours", cores, 1,
                               arguments.max_new_tokens, arguments.trajectories)
    results.update({"baseline_seconds_per_patient": round(baseline / test.num_rows, 3),
                    "predict_seconds_per_patient": round(ours / test.num_rows, 3),
                    "speedup": round(baseline / ours, 2)})
    print(json.dumps(results, indent=2))
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
