"""Benchmark for step 2's concept threshold: the whole demo (and step 7) at several thresholds, side by side.

For each --thresholds value, `make demo` then `make predict` run in a fresh output folder (OMOP_DIR and
the other setup_env.sh folders point into it; the repository's own omop_synthea/ is not touched), with
MIN_NUM_OF_PATIENTS set (the demo passes it to step 2 as --min_num_of_patients; "auto" leaves step 2 to
choose). Then, per threshold, from the run's own outputs:

- what reaches the model: clinical concepts in the vocabulary (step 2's concept list after its floor),
  the share of the CDM's visits and ER visits that reach the sequences ([VS] tokens, and 9203 right
  after one, against visit_occurrence), and of its frequent concepts (held by >= 5% of its persons)
  that are in the vocabulary; tokens per patient;
- cost: training and generation wall time (the demo's step times);
- the report's numbers (validity, prevalence r, within +-25% against the real sequences and against
  the CDM, NN ratio, membership and attribute inference with their controls, dimension-wise AUROC
  ratio) and step 7's ROC-AUCs.

Timings mean something only on a quiet machine: run nothing else meanwhile. With --output, a threshold
whose folder holds a finished run (its seconds.json) is read again, not rerun, so an interrupted bench
goes on where it stopped.

Example:
    python bench/threshold_bench.py --thresholds 100 30 11 --json bench/out/threshold_bench.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.dataset as ds

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.files import parquet_files  # noqa: E402
from cehrgpt_tutorials.report.cdm_fidelity import read_cdm_prevalence  # noqa: E402
from cehrgpt_tutorials.sequences.concept_floor import read_concept_list  # noqa: E402


def run_demo(folder: Path, threshold: str) -> dict[str, float]:
    """make demo, then make predict, in `folder`; returns each step's wall seconds (the demo's own lines)."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("OMOP_DIR", "CEHR_GPT_DATA_DIR", "CEHR_GPT_MODEL_DIR", "SYNTHETIC_DATA_OUTPUT_DIR")}
    environment.update(OMOP_DIR=str(folder), CEHR_GPT_DATA_DIR=str(folder),
                       CEHR_GPT_MODEL_DIR=str(folder / "cehrgpt_model"),
                       SYNTHETIC_DATA_OUTPUT_DIR=str(folder / "synthetic_data"))
    if threshold != "auto":
        environment["MIN_NUM_OF_PATIENTS"] = threshold
    seconds = {}
    for target in ("demo", "predict"):
        started = time.monotonic()
        result = subprocess.run(["make", target], cwd=REPO_ROOT, env=environment, capture_output=True, text=True)
        (folder / f"make_{target}.log").write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise SystemExit(f"error: make {target} failed at threshold {threshold}: see {folder}/make_{target}.log")
        seconds[target] = time.monotonic() - started
        for step, minutes, secs in re.findall(r"--- (\S+) done in (?:(\d+)m)?(\d+)s", result.stdout):
            seconds[step] = int(minutes or 0) * 60 + int(secs)
    return seconds


def coverage(folder: Path) -> dict:
    """What of the CDM reaches the model's sequences."""
    frequent = set(read_cdm_prevalence(folder, None).prevalence)  # the report's own CDM measure
    vocabulary = read_concept_list(folder / "qualified_concept_list")
    tokens = ds.dataset(parquet_files(folder / "patient_sequence"), format="parquet").to_table(
        columns=["concept_ids"]).column("concept_ids")
    flat = pc.list_flatten(tokens)
    starts = pc.equal(flat, "[VS]").to_numpy(zero_copy_only=False)
    after_start = flat.to_numpy(zero_copy_only=False)[1:][starts[:-1]]
    visits = ds.dataset(folder / "visit_occurrence", format="parquet").to_table(columns=["visit_concept_id"])
    visit_types = visits.column("visit_concept_id")
    return {
        "clinical_concepts": len(vocabulary),
        "visits_reaching": float(starts.sum() / len(visit_types)),
        "er_visits_reaching": float((after_start == "9203").sum() / pc.sum(pc.equal(visit_types, 9203)).as_py()),
        "frequent_concepts": len(frequent),
        "frequent_concepts_in_vocabulary": len(frequent & vocabulary) / max(len(frequent), 1),
        "tokens_per_patient": float(pc.mean(pc.list_value_length(tokens)).as_py()),
    }


def headline(folder: Path) -> dict:
    report = json.loads(next((folder / "synthetic_data").glob("*/report/report.json")).read_text())
    prediction = json.loads((folder / "prediction" / "predict_report.json").read_text())
    membership, attributes = report.get("membership_inference") or {}, report.get("attribute_inference") or {}
    return {
        "valid": report["valid_fraction"],
        "prevalence_r": report["prevalence_pearson_r"],
        "within_25pct_real_sequences": report["prevalence_within_25pct"],
        "frequent_in_real_sequences": report["prevalence_errors"]["concepts"],
        "cdm_within_25pct_synthetic": report.get("cdm_concepts_within_25pct"),
        "cdm_within_25pct_real_sequences": report.get("cdm_concepts_within_25pct_real_sequences"),
        "length_ks": report["length_ks"],
        "nn_ratio": report["nn_distance_ratio"],
        "membership_accuracy": membership.get("accuracy"),
        "membership_control": membership.get("control_accuracy"),
        "attribute_f1_synthetic": attributes.get("f1_synthetic"),
        "attribute_f1_baseline": attributes.get("f1_baseline"),
        "attribute_f1_control": attributes.get("f1_control"),
        "dimension_wise_auroc_ratio": report["dimension_wise_auroc_ratio"],
        **{f"predict_{method}": prediction[method]["roc_auc"] for method in
           ("baseline", "linear_probe", "zero_shot", "fine_tune") if method in prediction},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", nargs="+", default=["100", "30", "auto"],
                        help="--min_num_of_patients values ('auto': step 2 chooses; default: %(default)s)")
    parser.add_argument("--output", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    arguments = parser.parse_args()
    root = arguments.output or Path(tempfile.mkdtemp(prefix="threshold_bench."))
    results = {}
    for threshold in arguments.thresholds:
        folder = root / f"min_{threshold}"
        if (folder / "seconds.json").is_file():  # a finished run of an earlier, interrupted bench: read, not rerun
            seconds = json.loads((folder / "seconds.json").read_text())
        elif folder.exists():
            raise SystemExit(f"error: {folder} holds an unfinished run (no seconds.json): move it away to rerun it")
        else:
            folder.mkdir(parents=True)
            seconds = run_demo(folder, threshold)
            (folder / "seconds.json").write_text(json.dumps(seconds, indent=1) + "\n")
        results[threshold] = {"seconds": seconds, **coverage(folder), **headline(folder)}
        print(f"threshold {threshold}: {json.dumps(results[threshold])}", flush=True)
    keys = [key for key in next(iter(results.values())) if key != "seconds"]
    print("\n| | " + " | ".join(results) + " |\n|---|" + "---|" * len(results))
    for key in keys + ["train", "generate"]:
        values = [results[t]["seconds"].get(key) if key in ("train", "generate") else results[t][key] for t in results]
        shown = [f"{value:.3f}" if isinstance(value, float) else str(value) for value in values]
        print(f"| {key} | " + " | ".join(shown) + " |")
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
