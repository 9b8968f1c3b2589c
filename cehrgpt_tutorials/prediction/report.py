"""Step 7's numbers: patient-level bootstrap intervals, ROC and calibration plots, predict_report.md/.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cehrgpt_tutorials.common import PipelineError
from cehrgpt_tutorials.prediction.models import run_together

METHODS = {  # report key -> what the reader sees
    "linear_probe": "cehrgpt features + linear probe",
    "fine_tune": "cehrgpt fine-tuned (classifier head)",
    "zero_shot": "cehrgpt zero-shot (sampled futures)",
    "baseline": "bag-of-concepts logistic regression",
}
CALIBRATION_BINS = 10


def read_predictions(folder: Path) -> pd.DataFrame:
    files = sorted(Path(folder).rglob("*.parquet"))
    if not files:
        raise PipelineError(f"no predictions in {folder}")
    columns = ["subject_id", "boolean_value", "predicted_boolean_probability"]
    frame = pd.concat([pd.read_parquet(path, columns=columns) for path in files], ignore_index=True)
    frame["boolean_value"] = frame["boolean_value"].astype(int)
    return frame


def bootstrap(predictions: dict[str, Path], output_dir: Path, log_dir: Path, n_boot: int) -> dict[str, dict]:
    """cehrgpt.tools.bootstrap_ci on each method's predictions folder, side by side (patients
    resampled with all their examples, 95% percentile interval). Returns its JSON per method."""
    output_dir.mkdir(parents=True, exist_ok=True)
    commands = [[sys.executable, "-m", "cehrgpt.tools.bootstrap_ci", "--predictions", folder,
                 "--output_file", output_dir / f"{key}.json", "--n_boot", n_boot, "--n_jobs", 1]
                for key, folder in predictions.items()]
    run_together(commands, [log_dir / f"bootstrap_ci_{key}.log" for key in predictions], "bootstrap_ci")
    return {key: json.loads((output_dir / f"{key}.json").read_text()) for key in predictions}


def method_summary(ci: dict) -> dict:
    return {
        "roc_auc": round(ci["roc_auc"], 4),
        "roc_auc_ci": [round(ci["roc_auc_low"], 4), round(ci["roc_auc_high"], 4)],
        "pr_auc": round(ci["pr_auc"], 4),
        "pr_auc_ci": [round(ci["pr_auc_low"], 4), round(ci["pr_auc_high"], 4)],
    }


def calibration_table(frame: pd.DataFrame, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Predicted vs observed rate per decile of the predicted probability (ties share a bin, so a
    score with few distinct values, like a share of 20 trajectories, gives fewer bins)."""
    ranks = frame["predicted_boolean_probability"].rank(method="dense")
    groups = pd.qcut(ranks, q=min(bins, int(ranks.nunique())), labels=False, duplicates="drop") if len(frame) else []
    table = []
    for _, group in frame.groupby(np.asarray(groups)):
        table.append({
            "n": int(len(group)),
            "predicted": round(float(group["predicted_boolean_probability"].mean()), 4),
            "observed": round(float(group["boolean_value"].mean()), 4),
        })
    return table


def plot_roc(frames: dict[str, pd.DataFrame], summaries: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figure, axis = plt.subplots(figsize=(5.5, 5))
    for key, frame in frames.items():
        fpr, tpr, _ = roc_curve(frame["boolean_value"], frame["predicted_boolean_probability"])
        low, high = summaries[key]["roc_auc_ci"]
        axis.plot(fpr, tpr, label=f"{METHODS[key]}\nAUROC {summaries[key]['roc_auc']:.2f} ({low:.2f}-{high:.2f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.set_title("ROC on the held-out test patients")
    axis.legend(loc="lower right", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_calibration(tables: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 5))
    for key, table in tables.items():
        axis.plot([row["predicted"] for row in table], [row["observed"] for row in table], marker="o",
                  label=METHODS[key], linewidth=2.5 if key == "zero_shot" else 1, alpha=1 if key == "zero_shot" else 0.6)
    top = max([1e-3] + [max(row["predicted"], row["observed"]) for table in tables.values() for row in table])
    axis.plot([0, top], [0, top], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    axis.set_xlabel("mean predicted probability (tenths of the patients by score)")
    axis.set_ylabel("observed rate")
    axis.set_title("Calibration on the held-out test patients")
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_report(folder: Path, report: dict) -> None:
    """predict_report.json (the numbers) and predict_report.md (the same, for a person)."""
    (folder / "predict_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    lines = [
        f"# Step 7: predicting `{report['task']}`",
        "",
        report["task_description"],
        "",
        f"- cohort SQL: `{report['cohort_sql']}`, written to `{report['cohort_table']}` "
        f"(target cohort {report['cohort_ids'][0]}, outcome cohort {report['cohort_ids'][1]})",
        f"- cohort: {report['cohort_rows']:,} examples, {report['positives']:,} positives "
        f"({report['positives'] / max(report['cohort_rows'], 1):.1%}); "
        f"{report['dropped_no_sequence']} without a patient sequence and {report['dropped_no_history']} without a "
        "visit before the index date are left out",
        f"- split: {report['split_source']}",
        f"- train: {report['train_patients']:,} examples ({report['train_positives']} positives); "
        f"test (never seen by the pretrained model): **{report['test_patients']:,} examples, "
        f"{report['test_positives']} positives**",
        f"- model: `{report['model_dir']}` (context {report['context']})",
        "",
        "| method | ROC-AUC (95% CI) | PR-AUC (95% CI) |",
        "|---|---|---|",
    ]
    for key, name in METHODS.items():
        if key in report:
            r = report[key]
            lines.append(f"| {name} | {r['roc_auc']:.3f} ({r['roc_auc_ci'][0]:.3f}-{r['roc_auc_ci'][1]:.3f}) | "
                         f"{r['pr_auc']:.3f} ({r['pr_auc_ci'][0]:.3f}-{r['pr_auc_ci'][1]:.3f}) |")
    lines += [
        "",
        f"A PR-AUC is read against the test prevalence ({report['test_prevalence']:.3f}), what a random "
        "score gets. Intervals: patients resampled 1,000 times (cehrgpt.tools.bootstrap_ci). With this few "
        "positives an interval spans tenths of AUC: differences inside it are not evidence.",
        "",
        "![ROC curves](roc_curves.png)",
        "",
    ]
    tuned = report.get("fine_tune")
    if tuned:
        losses = ", ".join(f"{loss:.3f}" for loss in tuned["validation_loss"])
        lines += [
            "## Fine-tuning",
            "",
            f"The pretrained model with a classification head (its last hidden state after the history, plus age), "
            f"all weights trained on the train examples at learning rate {tuned['learning_rate']:g}, early stopping "
            f"on {tuned['validation_fraction']:.0%} of their patients: {tuned['epochs_trained']} of at most "
            f"{tuned['epochs']} epochs, the best (kept) epoch {tuned['best_epoch']}; validation loss by epoch: "
            f"{losses}. Its probabilities are in the calibration plot.",
            "",
        ]
        if not report.get("zero_shot"):  # else the zero-shot section shows the plot
            lines += ["![Calibration](calibration.png)", ""]
    zero = report.get("zero_shot")
    if zero:
        lines += [
            "## Zero-shot",
            "",
            f"{zero['trajectories']} sampled futures per test patient (up to {zero['max_new_tokens']} tokens each); "
            f"probability = share of futures with an outcome token ({', '.join(zero['outcome_tokens'])}) in days "
            f"1-{zero['window_days']} after the history's last visit. "
            f"{zero['decided_fraction']:.0%} of the futures reached an outcome or the window's end within their tokens "
            "(cehrgpt drops the others). "
            f"Of all {report['positives']} positives, {report['outcome_visible_fraction']:.0%} have the outcome token "
            "in their patient sequence inside the time at risk: the model can only learn the outcomes that "
            "step 2 kept.",
            "",
            "Calibration: the test patients in ten equal groups by score (patients with the same score stay in one "
            "group, so there can be fewer):",
            "",
            "| group | n | mean predicted | observed rate |",
            "|---|---|---|---|",
        ]
        lines += [f"| {i + 1} | {row['n']} | {row['predicted']:.3f} | {row['observed']:.3f} |"
                  for i, row in enumerate(zero["calibration"])]
        lines += ["", "![Calibration](calibration.png)", ""]
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report["seconds"].items())
    lines += [f"Wall time: {report['seconds_total']:.0f} s ({stages})", ""]
    (folder / "predict_report.md").write_text("\n".join(lines))
