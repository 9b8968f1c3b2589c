"""Utility: would a model trained on the synthetic patients predict as well on real ones?

medGAN's dimension-wise prediction (Choi et al., 2017): for each of the most common concepts, a
logistic regression predicts whether a patient has it from their other concepts. One model is trained
on synthetic patients, one on real training patients; both are scored (AUROC) on the held-out real
patients, which neither the generator nor the real model saw. Synthetic data that keeps the
relations between concepts scores close to the real model (ratio ~1); data that only keeps each
concept's frequency scores ~0.5.
"""

from __future__ import annotations

import numpy as np

from cehrgpt_tutorials.report.fidelity import concept_matrix, most_common, prevalence
from cehrgpt_tutorials.report.privacy import sample_rows
from cehrgpt_tutorials.sequences.facts import SequenceFacts

UTILITY_CONCEPTS = 20
# Training patients per side: 20 concepts x 2 logistic regressions on 4,000 sparse rows take a few
# seconds; more rows barely move an AUROC averaged over 20 concepts.
UTILITY_TRAIN_SAMPLE = 4_000


def _scores(features, labels: np.ndarray, test_features) -> np.ndarray | None:
    """Predicted probabilities on the test rows, or None when the training labels are all one class."""
    from sklearn.linear_model import LogisticRegression

    if labels.all() or not labels.any():
        return None
    model = LogisticRegression(solver="liblinear", max_iter=200)
    model.fit(features, labels)
    return model.predict_proba(test_features)[:, 1]


def dimension_wise_prediction(
    real: SequenceFacts,
    real_rows: np.ndarray,
    synthetic: SequenceFacts,
    heldout: SequenceFacts,
    heldout_rows: np.ndarray,
    vocabulary_size: int,
    tokens: list[str],
    names: dict[str, tuple[str, str]],
    seed: int = 0,
    concepts: int = UTILITY_CONCEPTS,
    train_sample: int = UTILITY_TRAIN_SAMPLE,
) -> dict | None:
    """Mean AUROC on held-out real patients of per-concept models trained on synthetic vs real patients.

    A synthetic set without a single patient with (or without) the concept cannot train a model: it
    scores 0.5, like a coin, rather than being left out (which would flatter it).
    """
    from sklearn.metrics import roc_auc_score

    if not len(heldout_rows):
        return None
    targets = most_common(prevalence(real, vocabulary_size), concepts)
    real_train = concept_matrix(real, vocabulary_size, real_rows[sample_rows(len(real_rows), train_sample, seed)])
    synthetic_train = concept_matrix(synthetic, vocabulary_size, sample_rows(synthetic.count, train_sample, seed))
    test = concept_matrix(heldout, vocabulary_size, heldout_rows)
    used = np.flatnonzero(np.asarray((real_train.sum(axis=0) > 0) | (synthetic_train.sum(axis=0) > 0)).ravel())
    rows = []
    for code in targets:
        features = used[used != code]
        test_labels = test[:, code].toarray().ravel() > 0
        if test_labels.all() or not test_labels.any():
            continue  # AUROC undefined on the held-out patients
        result = {"concept_id": tokens[code], "name": names.get(tokens[code], ("", ""))[0],
                  "heldout_prevalence": float(test_labels.mean())}
        for side, matrix in (("real", real_train), ("synthetic", synthetic_train)):
            labels = matrix[:, code].toarray().ravel() > 0
            scores = _scores(matrix[:, features], labels, test[:, features])
            result[f"auroc_{side}"] = 0.5 if scores is None else float(roc_auc_score(test_labels, scores))
            result[f"{side}_trainable"] = scores is not None
        rows.append(result)
    if not rows:
        return None
    mean_real = float(np.mean([row["auroc_real"] for row in rows]))
    mean_synthetic = float(np.mean([row["auroc_synthetic"] for row in rows]))
    return {
        "concepts": rows,
        "auroc_real": mean_real,
        "auroc_synthetic": mean_synthetic,
        "ratio": mean_synthetic / mean_real if mean_real > 0 else None,
        "train_rows_real": int(real_train.shape[0]),
        "train_rows_synthetic": int(synthetic_train.shape[0]),
        "heldout_rows": int(test.shape[0]),
    }
