"""Step 7's numbers: patient-level bootstrap intervals, ROC and calibration plots, predict_report.md/.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from cehrgpt_tutorials.errors import PipelineError
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


def write_task_report(folder: Path, report: dict) -> None:
    """One task's predict_report.json (the numbers) and predict_report.md (the same, for a person)."""
    (folder / "predict_report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (folder / "predict_report.md").write_text("\n".join(task_lines(report, "")))


def task_lines(report: dict, folder: str) -> list[str]:
    """The markdown of one task, section by section; `folder` prefixes its pictures' paths (a task's
    subfolder in a report of several)."""
    stages = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in report["seconds"].items())
    return (cohort_lines(report) + results_lines(report, folder) + fine_tune_lines(report, folder)
            + zero_shot_lines(report, folder) + few_shot_lines(report, folder)
            + ["## How to read this task", ""] + [f"- {sentence}" for sentence in report["reading"]] + [""]
            + [f"Wall time: {report['seconds_total']:.0f} s ({stages})", ""])


def cohort_lines(report: dict) -> list[str]:
    """The title, and what the task was computed on: cohort, split, outcome, model."""
    return [
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
        *[f"- **capped**: {split} {cap['cap']:,} of its {cap['cohort_rows']:,} cohort rows, drawn with a seed and "
          f"stratified by outcome (--max-{split}-examples)" for split, cap in report.get("capped", {}).items()],
        f"- train: {report['train_patients']:,} examples ({report['train_positives']} positives); "
        f"test (never seen by the pretrained model): **{report['test_patients']:,} examples, "
        f"{report['test_positives']} positives**",
        f"- outcome in the patient sequences: {report['outcome_visible_fraction']:.0%} of the positives have an "
        f"outcome token ({', '.join(report['outcome_tokens']) or 'none given'}) in their sequence inside the time at "
        "risk" + (": **the model never sees most of these outcomes: zero-shot cannot find them**"
                  if report["outcome_visible_fraction"] < 0.5 else ""),
        f"- model: `{report['model_dir']}` (context {report['context']}), run on {report.get('device', 'cpu')}",
        "",
    ]


def results_lines(report: dict, folder: str) -> list[str]:
    """Every method's ROC-AUC and PR-AUC with their intervals, and the ROC curves."""
    lines = ["| method | ROC-AUC (95% CI) | PR-AUC (95% CI) |", "|---|---|---|"]
    for key, name in METHODS.items():
        if key in report:
            r = report[key]
            lines.append(f"| {name} | {r['roc_auc']:.3f} ({r['roc_auc_ci'][0]:.3f}-{r['roc_auc_ci'][1]:.3f}) | "
                         f"{r['pr_auc']:.3f} ({r['pr_auc_ci'][0]:.3f}-{r['pr_auc_ci'][1]:.3f}) |")
    return lines + [
        "",
        f"A PR-AUC is read against the test prevalence ({report['test_prevalence']:.3f}), what a random "
        "score gets. Intervals: patients resampled 1,000 times (cehrgpt.tools.bootstrap_ci). With this few "
        "positives an interval spans tenths of AUC: differences inside it are not evidence.",
        "",
        f"![ROC curves]({folder}roc_curves.png)",
        "",
    ]


def fine_tune_lines(report: dict, folder: str) -> list[str]:
    """How fine-tuning went (none when it was not run); the calibration plot when zero-shot has none."""
    tuned = report.get("fine_tune")
    if not tuned:
        return []
    losses = ", ".join(f"{loss:.3f}" for loss in tuned["validation_loss"])
    lines = [
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
        lines += [f"![Calibration]({folder}calibration.png)", ""]
    return lines


def zero_shot_lines(report: dict, folder: str) -> list[str]:
    """How zero-shot predicts and its calibration table (none when it was not run)."""
    zero = report.get("zero_shot")
    if not zero:
        return []
    lines = [
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
    return lines + ["", f"![Calibration]({folder}calibration.png)", ""]


def few_shot_lines(report: dict, folder: str) -> list[str]:
    lines = ["## Few-shot", "", "The linear probe and the baseline trained on part of the train examples (drawn "
             "three times per size, by label; the bars are the lowest and highest of the draws), tested on the same "
             "held-out examples: where a pretrained representation should pay is with few labels.", "",
             "| train examples (positives) | linear probe ROC-AUC | baseline ROC-AUC | draws |", "|---|---|---|---|"]
    for point in report["few_shot"]:
        lines.append(f"| {point['train_examples']} ({point['train_positives']}) | {few_shot_cell(point, 'probe')} | "
                     f"{few_shot_cell(point, 'baseline')} | {point['draws']} |")
    return lines + ["", f"![Few-shot curves]({folder}few_shot.png)", ""]


def few_shot_cell(point: dict, name: str) -> str:
    value, span = point[f"{name}_roc_auc"], point[f"{name}_roc_auc_range"]
    return "too few positives" if value is None else f"{value:.3f} ({span[0]:.3f}-{span[1]:.3f})"


def interval_width(report: dict) -> float:
    widths = [report[key]["roc_auc_ci"][1] - report[key]["roc_auc_ci"][0] for key in METHODS if key in report]
    return float(np.mean(widths)) if widths else 0.0


def reading(report: dict) -> list[str]:
    """What the numbers of one task can and cannot show, in sentences generated from them."""
    sentences = [f"{report['test_positives']} positives among {report['test_patients']} test examples: a ROC-AUC "
                 f"interval here is about {interval_width(report):.2f} wide, so only differences larger than that "
                 "are evidence."]
    visible = report["outcome_visible_fraction"]
    if visible < 0.5:
        sentences.append(f"Warning: the model never sees most of these outcomes (only {visible:.0%} of the positives "
                         "have the outcome in their patient sequence inside the time at risk): zero-shot cannot find "
                         "them, and no method can learn them from the sequences.")
    for key, name in METHODS.items():
        if key in report:
            low, high = report[key]["roc_auc_ci"]
            verdict = ("better than chance (its interval is above 0.5)" if low > 0.5 else
                       "worse than chance (its interval is below 0.5)" if high < 0.5 else
                       "not distinguishable from chance (its interval spans 0.5)")
            sentences.append(f"{name}: {verdict}.")
    methods = [key for key in METHODS if key in report]
    apart = [(a, b) for a in methods for b in methods
             if report[a]["roc_auc_ci"][0] > report[b]["roc_auc_ci"][1]]
    sentences.append("; ".join(f"{METHODS[a]} is above {METHODS[b]} (the intervals do not overlap)" for a, b in apart)
                     + "." if apart else "The methods' intervals overlap: this task cannot rank them.")
    if report.get("zero_shot_skipped"):
        sentences.append(f"Zero-shot was not run: {report['zero_shot_skipped']}.")
    smallest = next((point for point in report["few_shot"] if point["probe_roc_auc"] is not None
                     and point["baseline_roc_auc"] is not None), None)
    if smallest is not None:
        probe, base = smallest["probe_roc_auc"], smallest["baseline_roc_auc"]
        sentences.append(f"With the fewest labels ({smallest['train_examples']} train examples) the probe scores "
                         f"{probe:.3f} against the baseline's {base:.3f} (mean of {smallest['draws']} draws): "
                         + ("the pretrained features help most where labels are few."
                            if probe >= base else "the pretrained features do not help even with few labels here."))
    return sentences


def write_report(folder: Path, combined: dict, several: bool) -> None:
    """The report over every task: predict_report.json (the first task's keys at the top, and `tasks`)
    and, when several tasks were asked for (each in its subfolder), predict_report.md with a summary
    table and each task's section."""
    (folder / "predict_report.json").write_text(json.dumps(combined, indent=2, default=str) + "\n")
    if not several:
        return  # the task's own predict_report.md, in this folder, is the report
    tasks = combined["tasks"]
    lines = [f"# Step 7: the model on {len(tasks)} prediction tasks", "",
             "ROC-AUC (95% interval) on the held-out patients; the sections below have each task's details.", "",
             "| task | test examples (positives) | outcome visible | " + " | ".join(METHODS.values()) + " |",
             "|---|---|---|" + "---|" * len(METHODS)]
    for task in tasks:
        cells = [f"{task[key]['roc_auc']:.3f} ({task[key]['roc_auc_ci'][0]:.2f}-{task[key]['roc_auc_ci'][1]:.2f})"
                 if key in task else "-" for key in METHODS]
        lines.append(f"| {task['task']} | {task['test_patients']} ({task['test_positives']}) | "
                     f"{task['outcome_visible_fraction']:.0%} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"- {name}: not run, {why}" for name, why in combined.get("skipped_tasks", {}).items()]
    for task in tasks:
        lines += ["#" + line if line.startswith("#") else line for line in task_lines(task, f"{task['task']}/")]
    lines.append(f"Wall time, every task: {combined['seconds_total']:.0f} s")
    (folder / "predict_report.md").write_text("\n".join(lines) + "\n")
