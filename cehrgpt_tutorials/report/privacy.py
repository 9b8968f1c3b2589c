"""Privacy metrics: did the model copy anyone (exact copies, nearest-neighbour distances)?"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

# Query sequences per side for the nearest-neighbour distances: the mean of 2,000 distances has a
# standard error well under 0.01, at a few seconds against 100k real references (bench/RESULTS.md).
NN_SAMPLE_SIZE = 2_000


def nearest_neighbour_distances(queries, reference, block: int = 512) -> np.ndarray:
    """Jaccard distance from each query row to its nearest reference row (binary CSR matrices).

    |q & r| for a block of queries against all references is one sparse x dense product; the union
    follows from the row sizes. Memory stays at references x block floats.
    """
    reference_sizes = np.asarray(reference.sum(axis=1), dtype=np.float32).ravel()
    query_sizes = np.asarray(queries.sum(axis=1), dtype=np.float32).ravel()
    nearest = np.ones(queries.shape[0], dtype=np.float64)
    if not reference.shape[0]:
        return nearest
    blocks = range(0, queries.shape[0], block)
    # Progress only on a terminal (disable=None), and only when there is more than a moment of work.
    for begin in tqdm(
        blocks,
        desc="nearest neighbours",
        unit="block",
        leave=False,
        disable=True if len(blocks) < 3 else None,
    ):
        dense_queries = np.ascontiguousarray(queries[begin : begin + block].toarray().T)
        shared = reference @ dense_queries  # references x block
        union = np.add.outer(reference_sizes, query_sizes[begin : begin + block])
        union -= shared
        np.maximum(union, 1, out=union)
        np.divide(shared, union, out=shared)
        nearest[begin : begin + block] = 1.0 - shared.max(axis=0)
    return nearest


def sample_rows(count: int, size: int, seed: int, eligible: np.ndarray | None = None) -> np.ndarray:
    candidates = np.arange(count) if eligible is None else np.flatnonzero(eligible)
    if len(candidates) <= size:
        return candidates
    return np.sort(np.random.default_rng(seed).choice(candidates, size=size, replace=False))


def copied_rows(synthetic_hashes: np.ndarray, real_hashes: np.ndarray) -> np.ndarray:
    """Per synthetic sequence, whether its fingerprint is one of the real sequences'."""
    return np.isin(synthetic_hashes, real_hashes)



# ---------------------------------------------------------------------------------------------
# The CEHR-GPT authors' attacks (cehrgpt.analysis.privacy), run with their own functions on samples
# we draw, against the held-out real patients.
#
# Their command-line mains are not called: they read whole folders with pandas (every column), raise
# when --num_of_samples exceeds a set, need existing output folders, write timestamped files, sample
# without a seed, and import cehrgpt's tokenizer (torch, ~10 s) only to number concepts. We sample
# with a seed, number concepts with ConceptIndex, and call the same vector and matching functions.
# ---------------------------------------------------------------------------------------------

# The membership attack calls a synthetic patient a member when it sits nearer a training patient than
# MEMBERSHIP_FALSE_POSITIVES of the held-out real patients do. cehrgpt's constant (a squared distance of
# 5) ignores how alike the patients are: 63% of the demo's held-out patients fall under it, and the
# attack then scores 0.71 on exact copies of its members.
MEMBERSHIP_FALSE_POSITIVES = 0.05
# An attack this weak on exact copies cannot see memorization: at accuracy 0.8 with 5% false positives
# it misses about a third of verbatim copies, and 0.8 is over 10 standard errors from chance even at
# 166 patients per set (the demo).
MEMBERSHIP_CONTROL_BAR = 0.8
# Copies of training patients must reveal this much more F1 than held-out strangers do, or the
# sensitive concepts are as guessable from the common ones in any real population as from a copy.
ATTRIBUTE_CONTROL_GAP = 0.2
# Patients per set for both attacks (cehrgpt's default is 5,000): the distance matrices are
# sample x sample, so 2,000 keeps both attacks to a few seconds at 100k patients.
PRIVACY_SAMPLE_SIZE = 2_000
# The data-derived attribute config: the attacker knows a training patient's demographics and their
# COMMON_ATTRIBUTES most common concepts, and infers the others (the sensitive ones).
COMMON_ATTRIBUTES = 50


class ConceptIndex:
    """Numbers concept tokens for cehrgpt's binary vectors; stands in for its tokenizer (encode, vocab_size)."""

    def __init__(self, token_lists):
        tokens = sorted({token for tokens in token_lists for token in tokens})
        self.index = {token: position for position, token in enumerate(tokens)}
        self.vocab_size = len(tokens) + 1  # the last column: tokens never seen (cehrgpt's OOV)

    def encode(self, tokens) -> list[int]:
        return [self.index.get(token, self.vocab_size - 1) for token in tokens]


def _demographic_frame(sequences, rows: np.ndarray, vocabulary):
    """cehrgpt's input: a pandas frame with concept_ids, plus its demographics and scaled age."""
    import warnings

    import pandas as pd
    from cehrgpt.analysis.privacy import utils

    frame = pd.DataFrame({"concept_ids": [sequences.tokens(int(row), vocabulary) for row in rows]})
    with warnings.catch_warnings():  # scale_age assigns into a filtered frame
        warnings.simplefilter("ignore")
        return utils.scale_age(utils.create_demographics(frame)).copy()


def _samples(sets: dict, vocabulary, sample_size: int, seed: int) -> tuple[dict, int]:
    """The same number of patients from each set (at most sample_size), with at least the 4 prompt tokens.

    `sets` maps a name to (Sequences, candidate rows); cehrgpt's pandas sampling would raise when the
    sample is larger than a set, so the smallest set decides the size.
    """
    eligible = {name: rows[sequences.lengths[rows] >= 4] for name, (sequences, rows) in sets.items()}
    size = min(sample_size, *(len(rows) for rows in eligible.values()))
    rng = np.random.default_rng(seed)
    frames = {
        name: _demographic_frame(sets[name][0], np.sort(rng.choice(rows, size=size, replace=False)), vocabulary)
        for name, rows in eligible.items()
    }
    return frames, size


def membership_threshold(heldout_to_train: np.ndarray, false_positives: float = MEMBERSHIP_FALSE_POSITIVES) -> float:
    """The smallest held-out distance with at most `false_positives` of the held-out distances below it.

    'Member' means strictly nearer than this, so by construction at most that share of real patients the
    model never saw would be called members; ties at the threshold stay non-members.
    """
    ordered = np.sort(heldout_to_train)
    return float(ordered[min(int(false_positives * len(ordered)), len(ordered) - 1)])


def _attack_scores(to_train: np.ndarray, to_heldout: np.ndarray, threshold: float) -> dict:
    """cehrgpt's scoring: nearest-training distances are members, nearest-held-out ones are not."""
    from sklearn import metrics

    labels = np.concatenate((np.ones(len(to_train), dtype=int), np.zeros(len(to_heldout), dtype=int)))
    predicted = (np.concatenate((to_train, to_heldout)) < threshold).astype(int)
    return {
        "accuracy": float(metrics.accuracy_score(labels, predicted)),
        "precision": float(metrics.precision_score(labels, predicted, zero_division=0)),
        "recall": float(metrics.recall_score(labels, predicted, zero_division=0)),
        "f1": float(metrics.f1_score(labels, predicted, zero_division=0)),
    }


def membership_inference(train, heldout, synthetic, vocabulary, sample_size: int = PRIVACY_SAMPLE_SIZE,
                         seed: int = 0) -> dict | None:
    """train, heldout, synthetic: (Sequences, candidate rows). cehrgpt's member_inference: each sampled
    synthetic patient's distance to its nearest sampled training patient (label: member) and to its nearest
    held-out patient (label: non-member); "member" below a threshold set from the held-out patients
    (membership_threshold). Accuracy 0.5 = synthetic patients are no closer to the training patients than
    to patients the model never saw. control_accuracy: the same attack with the sampled training patients
    themselves as the synthetic set, what it scores when a model copies its members."""
    from cehrgpt.analysis.privacy import utils

    frames, size = _samples({"train": train, "heldout": heldout, "synthetic": synthetic}, vocabulary, sample_size, seed)
    if size < 2:
        return None
    gender = utils.create_gender_encoder(frames["train"], frames["heldout"], frames["synthetic"])
    race = utils.create_race_encoder(frames["train"], frames["heldout"], frames["synthetic"])
    index = ConceptIndex(utils.extract_medical_concepts(tokens) for frame in frames.values() for tokens in frame.concept_ids)
    vectors = {name: utils.create_vector_representations(frame, index, gender, race) for name, frame in frames.items()}

    def nearest(queries: str, references: str) -> np.ndarray:
        # find_match expands |a-b|^2 and leaves ~1e-13 for identical rows: a copy must be at 0 exactly.
        return np.maximum(np.round(utils.find_match(vectors[queries], vectors[references]), 9), 0)

    heldout_to_train = nearest("heldout", "train")
    threshold = membership_threshold(heldout_to_train)
    control = _attack_scores(nearest("train", "train"), nearest("train", "heldout"), threshold)
    return {
        **_attack_scores(nearest("synthetic", "train"), nearest("synthetic", "heldout"), threshold),
        "sample_per_set": size,
        "threshold": threshold,
        "threshold_rule": f"the smallest squared distance from a held-out real patient to its nearest sampled "
        f"training patient with at most {MEMBERSHIP_FALSE_POSITIVES:.0%} of held-out patients nearer",
        "heldout_under_threshold": float((heldout_to_train < threshold).mean()),
        "control_accuracy": control["accuracy"],
        "control_recall": control["recall"],
        "control_bar": MEMBERSHIP_CONTROL_BAR,
        "informative": control["accuracy"] >= MEMBERSHIP_CONTROL_BAR,
    }


def attribute_config(train_prevalence: np.ndarray, tokens: list[str], common: int = COMMON_ATTRIBUTES) -> dict:
    """cehrgpt's attribute config from the data: the `common` most common clinical concepts of the
    training patients are known to the attacker, every other one they have is sensitive."""
    order = np.argsort(-train_prevalence, kind="stable")
    present = order[train_prevalence[order] > 0]
    common = min(common, len(present) // 2)  # small data: half known, half sensitive
    return {
        "common_attributes": [tokens[code] for code in present[:common]],
        "sensitive_attributes": [tokens[code] for code in present[common:]],
    }


def attribute_f1(known: np.ndarray, guessed: np.ndarray, match: np.ndarray) -> np.ndarray:
    """cehrgpt.analysis.privacy.attribute_inference.cal_f1_score's F1 per patient (importing that module
    loads torch): sensitive concepts of each known patient vs those of its match. One difference:
    cehrgpt 0.1.9 divides the shared concepts by the count of guessed patient i rather than of i's
    match (vector_b instead of vector_b[index_matrix]); here precision is over the match's concepts."""
    shared = np.logical_and(known[: len(match)], guessed[match]).sum(axis=1)
    precision = np.divide(shared, guessed[match].sum(axis=1), out=np.zeros(len(match)),
                          where=guessed[match].sum(axis=1) > 0)
    recall = np.divide(shared, known[: len(match)].sum(axis=1), out=np.zeros(len(match)),
                       where=known[: len(match)].sum(axis=1) > 0)
    total = precision + recall
    return np.divide(2 * precision * recall, total, out=np.zeros(len(match)), where=total > 0)


def attribute_inference(train, heldout, synthetic, vocabulary, config: dict,
                        sample_size: int = PRIVACY_SAMPLE_SIZE, seed: int = 0) -> dict | None:
    """train, heldout, synthetic: (Sequences, candidate rows). cehrgpt's attribute_inference: match each
    sampled training patient, on demographics and common concepts, to its nearest synthetic patient and
    guess its sensitive concepts from that match (F1). Baselines: the same guess from the nearest held-out
    real patient (f1_baseline: what any real population gives) and from the nearest other training patient
    (cehrgpt's own train-train). Control: the sampled training patients themselves as the synthetic set
    (f1_control: what the attack recovers when a model copies them)."""
    from cehrgpt.analysis.privacy import utils

    frames, size = _samples({"train": train, "heldout": heldout, "synthetic": synthetic}, vocabulary, sample_size,
                            seed + 1)
    if size < 2 or not config["sensitive_attributes"]:
        return None
    common, sensitive = set(config["common_attributes"]), set(config["sensitive_attributes"])
    gender = utils.create_gender_encoder(frames["train"], frames["heldout"], frames["synthetic"])
    race = utils.create_race_encoder(frames["train"], frames["heldout"], frames["synthetic"])
    index = ConceptIndex([sorted(common | sensitive)])
    vectors = {
        name: utils.create_vector_representations_for_attribute(frame, index, gender, race, common, sensitive)
        for name, frame in frames.items()
    }
    (train_common, train_sensitive) = vectors["train"]

    def f1_against(name: str) -> float:
        match = utils.find_match(train_common, vectors[name][0], return_index=True)
        return float(attribute_f1(train_sensitive, vectors[name][1], match).mean())

    self_match = utils.find_match_self(train_common, train_common, return_index=True)
    baseline, control = f1_against("heldout"), f1_against("train")
    return {
        "f1_synthetic": f1_against("synthetic"),
        "f1_baseline": baseline,
        "f1_control": control,
        "control_gap": ATTRIBUTE_CONTROL_GAP,
        "informative": control - baseline >= ATTRIBUTE_CONTROL_GAP,
        "f1_train_train": float(attribute_f1(train_sensitive, train_sensitive, self_match).mean()),
        "sample_per_set": size,
        "common_attributes": len(common),
        "sensitive_attributes": len(sensitive),
    }
