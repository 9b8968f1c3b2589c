"""Why step 7's linear probe scores below the bag-of-concepts baseline: a measurement, no sampling.

Reads a finished `make predict` (each task folder's examples, cohort_sequences/{train,test}, and
cehrgpt's features, cehrgpt_features/) and fits, per task, the same logistic regression
(LogisticRegressionCV, ROC-AUC selection, seed 42, max_iter 1000) on different inputs, tested on the
same held-out examples:

- baseline: bag-of-concepts counts + age, as step 7's baseline;
- prior outcome + age: only log(1 + the number of outcome concepts in the history), and age;
- baseline without the outcome: the baseline with the outcome concepts' columns removed;
- probe: cehrgpt's features (standardised; step 7's probe stops at cehrgpt's 100 iterations);
- probe + prior outcome: the features with the prior-outcome count and age added;
- top-10 concepts + age: only the 10 concepts the baseline weighs most (fitted on the train examples);
- probe + top-10 concepts: the features with those 10 columns added;
- probe on k principal components of the features (k = 4 ... 64, PCA fitted on the train examples):
  whether the features hold the signal but the full-width probe cannot estimate it from ~100 positives.
  A diagnostic only: choosing k by these test figures would be fitting to the test examples;

and how well the features encode what the baseline uses: a ridge regression from the features to the
prior-outcome count and to age (R^2 on the test examples), and a logistic regression from the features
to the presence of each top-10 concept (mean test ROC-AUC over those present in, and absent from, at
least 3 histories of each split).
If adding a signal to the features closes the gap, and the features decode it poorly, the pretrained
representation, not the classifier, is what loses it.

Example:
    python bench/probe_gap.py                       # $CEHR_GPT_DATA_DIR/prediction
    python bench/probe_gap.py --prediction-dir /data/cehrgpt/prediction --json bench/out/probe_gap.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from cehrgpt_tutorials.prediction import few_shot, models  # noqa: E402

PCA_COMPONENTS = (4, 8, 16, 32, 64)
MAX_ITER = 1000  # the baseline's; the probe is refitted to convergence too


def fitted_auroc(train_x, train_y, test_x, test_y) -> float:
    """Step 7's classifier (the baseline's settings, max_iter 1000) fitted on these inputs: test ROC-AUC."""
    return round(few_shot.fit_and_score(train_x, train_y, test_x, test_y, MAX_ITER), 4)


def held_out_r2(train_x, train_target, test_x, test_target) -> float | None:
    """How much of `target` a linear read-out of the features explains on unseen examples (None when
    the target is the same for every example, as a first onset's prior count is)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score

    if np.ptp(train_target) == 0 or np.ptp(test_target) == 0:
        return None
    model = RidgeCV(alphas=np.logspace(-2, 4, 13)).fit(train_x, train_target)
    return round(float(r2_score(test_target, model.predict(test_x))), 4)


def decoding_auroc(train_x, train_present, test_x, test_present) -> float | None:
    """Mean test ROC-AUC of reading each concept's presence off the features (concepts present in, and
    absent from, >= 3 histories of each split)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    scores = []
    for column in range(train_present.shape[1]):
        counts = [present[:, column].sum() for present in (train_present, test_present)]
        if min(counts[0], counts[1], len(train_present) - counts[0], len(test_present) - counts[1]) < 3:
            continue
        model = LogisticRegression(max_iter=1000).fit(train_x, train_present[:, column])
        scores.append(roc_auc_score(test_present[:, column], model.predict_proba(test_x)[:, 1]))
    return round(float(np.mean(scores)), 4) if scores else None


def top_columns(baseline, count: int) -> list[int]:
    """The `count` concept columns (age, the last column, aside) the fitted baseline weighs most."""
    weights = np.abs(baseline.coef_[0][:-1])
    return [int(column) for column in np.argsort(-weights)[:count]]


def prior_outcome(table, outcome_tokens: set[str]) -> np.ndarray:
    """log(1 + the number of outcome concepts in each history)."""
    return np.log1p([sum(token in outcome_tokens for token in tokens)
                     for tokens in table.column("concept_ids").to_pylist()])


def measure(task_dir: Path) -> dict:
    from sklearn.decomposition import PCA
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import StandardScaler

    report = json.loads((task_dir / "predict_report.json").read_text())
    outcome = set(report["outcome_tokens"])
    train = pq.read_table(task_dir / "cohort_sequences" / "train")
    test = pq.read_table(task_dir / "cohort_sequences" / "test")
    methods, train_y, test_y = models.few_shot_features(train, test, task_dir)
    probe_train, probe_test = methods["probe"][0], methods["probe"][1]
    base_train, base_test = methods["baseline"][0], methods["baseline"][1]
    _, _, vocabulary = models.baseline_design(train, test)
    kept = [column for token, column in vocabulary.items() if token not in outcome] + [len(vocabulary)]  # + age

    scaler = StandardScaler().fit(probe_train)
    probe_train, probe_test = scaler.transform(probe_train), scaler.transform(probe_test)
    ages = [np.asarray(table.column("age").to_pylist(), float) for table in (train, test)]
    age_scaler = StandardScaler().fit(ages[0][:, None])
    prior_age = [np.column_stack([prior_outcome(table, outcome), age_scaler.transform(age[:, None])[:, 0]])
                 for table, age in zip((train, test), ages, strict=True)]

    components = {}
    for count in [count for count in PCA_COMPONENTS if count < min(probe_train.shape)]:
        pca = PCA(count, random_state=0).fit(probe_train)
        components[f"auroc_probe_pca{count}"] = fitted_auroc(pca.transform(probe_train), train_y,
                                                             pca.transform(probe_test), test_y)
    baseline = few_shot.fit(base_train, train_y, MAX_ITER)
    top = top_columns(baseline, 10)
    top_train, top_test = (np.asarray(matrix[:, top].todense()) for matrix in (base_train, base_test))

    return {
        "task": report["task"],
        "test_examples": len(test_y), "test_positives": int(test_y.sum()),
        "train_with_prior_outcome": round(float((prior_age[0][:, 0] > 0).mean()), 4),
        "auroc_baseline": round(float(roc_auc_score(test_y, baseline.predict_proba(base_test)[:, 1])), 4),
        "auroc_prior_outcome_and_age": fitted_auroc(prior_age[0], train_y, prior_age[1], test_y),
        "auroc_baseline_without_outcome": fitted_auroc(base_train[:, kept], train_y, base_test[:, kept], test_y),
        "feature_width": probe_train.shape[1],
        "auroc_probe": fitted_auroc(probe_train, train_y, probe_test, test_y),
        "auroc_probe_plus_prior_outcome": fitted_auroc(np.hstack([probe_train, prior_age[0]]), train_y,
                                                       np.hstack([probe_test, prior_age[1]]), test_y),
        "auroc_top10_concepts_and_age": fitted_auroc(np.hstack([top_train, prior_age[0][:, 1:]]), train_y,
                                                     np.hstack([top_test, prior_age[1][:, 1:]]), test_y),
        "auroc_probe_plus_top10_concepts": fitted_auroc(np.hstack([probe_train, top_train]), train_y,
                                                        np.hstack([probe_test, top_test]), test_y),
        **components,
        "auroc_step7_probe": report.get("linear_probe", {}).get("roc_auc"),
        "features_r2_prior_outcome": held_out_r2(probe_train, prior_age[0][:, 0], probe_test, prior_age[1][:, 0]),
        "features_r2_age": held_out_r2(probe_train, ages[0], probe_test, ages[1]),
        "bag_of_concepts_r2_prior_outcome": held_out_r2(base_train[:, kept].toarray(), prior_age[0][:, 0],
                                                    base_test[:, kept].toarray(), prior_age[1][:, 0]),
        "features_decode_top10_concepts_auroc": decoding_auroc(probe_train, top_train > 0, probe_test, top_test > 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("CEHR_GPT_DATA_DIR", "omop_synthea")) / "prediction"
    parser.add_argument("--prediction-dir", type=Path, default=default,
                        help="a finished make predict's output folder (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    arguments = parser.parse_args()
    # One task (predict.py --sql) writes into the folder itself; several, one subfolder each.
    task_dirs = sorted(path.parent for path in arguments.prediction_dir.glob("cehrgpt_features")) or \
        sorted(path.parent for path in arguments.prediction_dir.glob("*/cehrgpt_features"))
    if not task_dirs:
        raise SystemExit(f"error: no task folder with cehrgpt_features/ in {arguments.prediction_dir}: run make predict")
    results = []
    for task_dir in task_dirs:
        results.append(measure(task_dir))
        print(json.dumps(results[-1]), flush=True)
    keys = [key for key in results[0] if key != "task"]
    print("\n| | " + " | ".join(result["task"] for result in results) + " |\n|---|" + "---|" * len(results))
    for key in keys:
        print(f"| {key} | " + " | ".join(str(result[key]) for result in results) + " |")
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
