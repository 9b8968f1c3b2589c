"""Few-shot curves: the linear probe and the baseline trained on 10%, 25%, 50% and 100% of the training
examples, tested on the same held-out ones.

Where a pretrained representation should pay is with few labels: a baseline that must learn which of
hundreds of concepts matter from 80 examples has less to go on than a probe on features the model
learned from every patient's history. Both use the features step 7 already computed (cehrgpt's
features of each example; the bag-of-concepts counts plus age) and their own full-data fit's
LogisticRegressionCV (cehrgpt's probe: its settings and row order), so the 100% point is that fit and
only the number of examples changes along a curve. A fraction is drawn several
times (seeded, by patient, keeping the share of positives); a draw with fewer than MIN_PER_CLASS
positives or negatives is left out (cross-validation needs them), and the curve says how many were.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

FRACTIONS = (0.1, 0.25, 0.5, 1.0)
DRAWS = 3  # per fraction below 1 (1.0 is the whole training set: one draw)
MIN_PER_CLASS = 5  # LogisticRegressionCV's 5 folds need this many of each label


def math_threads() -> int:
    """The BLAS threads of every fit: OMP_NUM_THREADS, else 1. cehrgpt's commands run with the same
    (models.subprocess_environment), and an unconverged fit's result depends on the thread count, so
    in-process fits with another count would not reproduce cehrgpt's probe."""
    return int(os.environ.get("OMP_NUM_THREADS") or 1)


def stratified_draw(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Row indices of `fraction` of the examples, the positives and negatives each drawn at that rate."""
    rng = np.random.default_rng(seed)
    chosen = []
    for value in (0, 1):
        rows = np.flatnonzero(labels == value)
        chosen.append(rng.choice(rows, size=max(1, round(fraction * len(rows))), replace=False) if len(rows) else rows)
    return np.sort(np.concatenate(chosen))


def fit(train_x, train_y: np.ndarray, max_iter: int):
    """The probe's and the baseline's classifier: LogisticRegressionCV chosen by ROC-AUC, seed 42."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from threadpoolctl import threadpool_limits

    model = LogisticRegressionCV(scoring="roc_auc", random_state=42, max_iter=max_iter)
    with warnings.catch_warnings(), threadpool_limits(math_threads()):
        # cehrgpt's probe stops at 100 iterations unconverged; so does its copy here
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(train_x, train_y)
    return model


def fit_and_score(train_x, train_y: np.ndarray, test_x, test_y: np.ndarray, max_iter: int) -> float:
    from sklearn.metrics import roc_auc_score

    model = fit(train_x, train_y, max_iter)
    return float(roc_auc_score(test_y, model.predict_proba(test_x)[:, 1]))


def curve(methods: dict[str, tuple], train_y: np.ndarray, test_y: np.ndarray, seed: int = 0) -> list[dict]:
    """methods: name -> (train features, test features, max_iter, fit order): rows aligned with train_y
    and test_y; each method fits its drawn rows in its fit order (a permutation of the rows) with its
    max_iter, as its full-data fit does, so its 100% point is that fit. Both draw the same examples.

    Returns one entry per fraction: train_examples, and per method its mean ROC-AUC over the draws
    with the lowest and highest (`<name>_roc_auc`, `<name>_roc_auc_range`), draws used and left out.
    """
    points = []
    for fraction in FRACTIONS:
        draws = 1 if fraction == 1.0 else DRAWS
        rows_per_draw = [stratified_draw(train_y, fraction, seed + draw) for draw in range(draws)]
        usable = [rows for rows in rows_per_draw
                  if min(int(train_y[rows].sum()), int((1 - train_y[rows]).sum())) >= MIN_PER_CLASS]
        point = {"fraction": fraction, "train_examples": int(np.mean([len(rows) for rows in rows_per_draw])),
                 "train_positives": int(np.mean([train_y[rows].sum() for rows in rows_per_draw])),
                 "draws": len(usable), "draws_left_out": draws - len(usable)}
        for name, (train_x, test_x, max_iter, fit_order) in methods.items():
            scores = []
            for rows in usable:
                ordered = fit_order[np.isin(fit_order, rows)]
                scores.append(fit_and_score(train_x[ordered], train_y[ordered], test_x, test_y, max_iter))
            point[f"{name}_roc_auc"] = round(float(np.mean(scores)), 4) if scores else None
            point[f"{name}_roc_auc_range"] = [round(min(scores), 4), round(max(scores), 4)] if scores else None
        points.append(point)
    return points


def plot(points: list[dict], names: dict[str, str], path, title: str) -> None:
    """ROC-AUC against the number of training examples, one line per method, the draws' range as bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for name, label in names.items():
        shown = [point for point in points if point.get(f"{name}_roc_auc") is not None]
        if not shown:
            continue
        x = [point["train_examples"] for point in shown]
        y = [point[f"{name}_roc_auc"] for point in shown]
        low = [value - point[f"{name}_roc_auc_range"][0] for value, point in zip(y, shown, strict=True)]
        high = [point[f"{name}_roc_auc_range"][1] - value for value, point in zip(y, shown, strict=True)]
        axes.errorbar(x, y, yerr=[low, high], marker="o", capsize=3, label=label)
    axes.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    axes.set_xscale("log")
    axes.set_xlabel("training examples (log scale)")
    axes.set_ylabel("ROC-AUC on the held-out examples")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
