"""Fidelity: do the synthetic patients look like the real ones? Concept and concept-pair prevalence are
compared with Pearson r, per-patient numbers with the Kolmogorov-Smirnov statistic, categories with the
Jensen-Shannon distance (base 2, so 0 = same and 1 = disjoint), all three from scipy; a figure that is
undefined on the data (an empty or constant side) is None, which the report writes as n/a. scipy is
imported where used, as matplotlib and sklearn are: importing it takes as long as the rest of
`inspect_synthetic.py --help`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cehrgpt_tutorials.sequences.facts import SequenceFacts

TOP_CONCEPTS_FOR_PAIRS = 50
TOP_PAIRS = 250


def pearson_r(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation, or None when it is undefined (fewer than 2 points, or a constant side)."""
    import scipy.stats

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    # scipy raises on fewer than 2 points and warns and returns nan on a constant side: the report says n/a.
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(scipy.stats.pearsonr(x, y).statistic)


def ks_statistic(real: np.ndarray, synthetic: np.ndarray) -> float | None:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    import scipy.stats

    real = np.asarray(real, dtype=np.float64)
    synthetic = np.asarray(synthetic, dtype=np.float64)
    real, synthetic = real[~np.isnan(real)], synthetic[~np.isnan(synthetic)]
    # scipy returns nan on an empty side: the report says n/a. method="asymp": only the statistic is
    # used, and the exact p-value scipy computes by default for up to 10,000 values costs 10x more.
    if not len(real) or not len(synthetic):
        return None
    return float(scipy.stats.ks_2samp(real, synthetic, method="asymp").statistic)


def category_shares(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """Share of each category (sorted codes) among values; negative values (missing) are left out."""
    values = values[values >= 0]
    counts = np.bincount(np.searchsorted(categories, values), minlength=len(categories)).astype(np.float64)
    return counts / counts.sum() if counts.sum() else counts


def js_distance(
    real: np.ndarray, synthetic: np.ndarray
) -> tuple[float | None, np.ndarray, np.ndarray, np.ndarray]:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two categorical samples of codes.

    Returns the distance, the categories (most frequent in the real data first) and both share vectors.
    """
    import scipy.spatial.distance

    real, synthetic = np.asarray(real), np.asarray(synthetic)
    categories, counts = np.unique(
        np.concatenate((real[real >= 0], synthetic[synthetic >= 0])), return_counts=True
    )
    real_shares = category_shares(real, categories)
    synthetic_shares = category_shares(synthetic, categories)
    order = np.lexsort((-counts, -real_shares))
    categories, real_shares, synthetic_shares = categories[order], real_shares[order], synthetic_shares[order]
    if not real_shares.sum() or not synthetic_shares.sum():
        return None, categories, real_shares, synthetic_shares
    # Rounding can leave the divergence a hair below 0 (sqrt: nan) for near-equal shares: that is 0.
    distance = scipy.spatial.distance.jensenshannon(real_shares, synthetic_shares, base=2)
    return float(np.nan_to_num(distance)), categories, real_shares, synthetic_shares


def prevalence(facts: SequenceFacts, vocabulary_size: int) -> np.ndarray:
    """Share of patients having each concept code."""
    counts = np.bincount(facts.concept_codes, minlength=vocabulary_size).astype(np.float64)
    return counts / max(facts.count, 1)


@dataclass(frozen=True)
class ConceptPrevalence:
    """Share of patients having each concept code, real and synthetic, and how well they agree."""

    real: np.ndarray
    synthetic: np.ndarray
    seen: np.ndarray  # per code: held by a patient of either set
    pearson_r: float | None  # over the seen codes


def concept_prevalence(real: SequenceFacts, synthetic: SequenceFacts, vocabulary_size: int) -> ConceptPrevalence:
    real_prevalence, synthetic_prevalence = prevalence(real, vocabulary_size), prevalence(synthetic, vocabulary_size)
    seen = (real_prevalence > 0) | (synthetic_prevalence > 0)
    return ConceptPrevalence(real_prevalence, synthetic_prevalence, seen,
                             pearson_r(real_prevalence[seen], synthetic_prevalence[seen]))


def concept_matrix(facts: SequenceFacts, vocabulary_size: int, rows: np.ndarray | None = None):
    """Binary patient x concept matrix (scipy CSR), optionally of some rows only."""
    import scipy.sparse

    indptr = np.concatenate(([0], np.cumsum(facts.concepts_per_patient)))
    matrix = scipy.sparse.csr_matrix(
        (np.ones(len(facts.concept_codes), dtype=np.float32), facts.concept_codes, indptr),
        shape=(facts.count, vocabulary_size),
    )
    return matrix if rows is None else matrix[rows]


def most_common(shares: np.ndarray, limit: int) -> np.ndarray:
    """Codes of the `limit` largest positive shares, largest first."""
    order = np.argsort(-shares, kind="stable")[:limit]
    return order[shares[order] > 0]


def cooccurrence_r(real: SequenceFacts, synthetic: SequenceFacts, vocabulary_size: int) -> tuple[float | None, int]:
    """Pearson r of pair prevalence over the most frequent pairs of either set; also the number of pairs."""
    real_prevalence, synthetic_prevalence = (
        prevalence(real, vocabulary_size),
        prevalence(synthetic, vocabulary_size),
    )
    top = np.union1d(
        most_common(real_prevalence, TOP_CONCEPTS_FOR_PAIRS),
        most_common(synthetic_prevalence, TOP_CONCEPTS_FOR_PAIRS),
    )
    if len(top) < 2:
        return None, 0

    def pair_prevalence(facts: SequenceFacts) -> np.ndarray:
        matrix = concept_matrix(facts, vocabulary_size)[:, top]
        together = (matrix.T @ matrix).toarray() / max(facts.count, 1)
        return together[np.triu_indices(len(top), k=1)]

    real_pairs, synthetic_pairs = pair_prevalence(real), pair_prevalence(synthetic)
    chosen = np.union1d(np.argsort(-real_pairs)[:TOP_PAIRS], np.argsort(-synthetic_pairs)[:TOP_PAIRS])
    chosen = chosen[(real_pairs[chosen] > 0) | (synthetic_pairs[chosen] > 0)]
    return pearson_r(real_pairs[chosen], synthetic_pairs[chosen]), len(chosen)


def numeric_distributions(real: SequenceFacts, synthetic: SequenceFacts) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The per-patient numbers compared with a KS statistic (and plotted): name -> (real, synthetic)."""
    return {
        "sequence_length": (real.lengths, synthetic.lengths),
        "visits_per_patient": (real.visits, synthetic.visits),
        "days_between_visits": (real.days_between_visits, synthetic.days_between_visits),
        "age_at_first_visit": (real.age, synthetic.age),
        "start_year": (real.start_year, synthetic.start_year),
        "concepts_per_patient": (real.concepts_per_patient, synthetic.concepts_per_patient),
    }


def distribution_metrics(real: SequenceFacts, synthetic: SequenceFacts) -> dict[str, dict]:
    numbers = numeric_distributions(real, synthetic)
    result = {}
    for name, (real_values, synthetic_values) in numbers.items():
        real_values = np.asarray(real_values, dtype=np.float64)
        synthetic_values = np.asarray(synthetic_values, dtype=np.float64)
        result[name] = {
            "test": "KS",
            "distance": ks_statistic(real_values, synthetic_values),
            "real_mean": float(np.nanmean(real_values)) if np.isfinite(real_values).any() else None,
            "synthetic_mean": float(np.nanmean(synthetic_values))
            if np.isfinite(synthetic_values).any()
            else None,
        }
    for name, (real_values, synthetic_values) in {
        "visit_types": (real.visit_types, synthetic.visit_types),
        "gender": (real.gender, synthetic.gender),
        "race": (real.race, synthetic.race),
    }.items():
        distance, categories, real_shares, synthetic_shares = js_distance(real_values, synthetic_values)
        result[name] = {
            "test": "JS",
            "distance": distance,
            "categories": categories,
            "real_shares": real_shares,
            "synthetic_shares": synthetic_shares,
        }
    return result



# Per-concept prevalence error, on the concepts researchers would study: those in at least 5% of the
# real patients. Pearson r over all concepts is dominated by the few very frequent ones.
PREVALENCE_ERROR_MIN_REAL = 0.05
PREVALENCE_TOLERANCE = 0.25  # "within +-25% relative"
WORST_SHOWN = 15
SAMPLE_DRAWS = 200
CONDITIONS_SHOWN = 5


def prevalence_errors(
    real_prevalence: np.ndarray, synthetic_prevalence: np.ndarray, tokens: list[str],
    names: dict[str, tuple[str, str]],
) -> dict:
    """Relative error (synthetic - real) / real of each concept in >= 5% of real patients: the share
    within +-25%, the worst 15, and the most under- and over-generated conditions (domain Condition)."""
    codes = np.flatnonzero(real_prevalence >= PREVALENCE_ERROR_MIN_REAL)
    errors = (synthetic_prevalence[codes] - real_prevalence[codes]) / real_prevalence[codes]

    def row(position: int) -> dict:
        token = tokens[codes[position]]
        name, domain = names.get(token, ("", ""))
        return {"concept_id": token, "name": name, "domain": domain,
                "real_prevalence": float(real_prevalence[codes[position]]),
                "synthetic_prevalence": float(synthetic_prevalence[codes[position]]),
                "relative_error": float(errors[position])}

    worst = np.argsort(-np.abs(errors), kind="stable")[:WORST_SHOWN]
    conditions = np.array([names.get(tokens[code], ("", ""))[1] == "Condition" for code in codes], dtype=bool)
    by_error = np.argsort(errors, kind="stable")
    by_error = by_error[conditions[by_error]]
    return {
        "min_real_prevalence": PREVALENCE_ERROR_MIN_REAL,
        "concepts": len(codes),
        "within_25pct": float((np.abs(errors) <= PREVALENCE_TOLERANCE).mean()) if len(codes) else None,
        "worst": [row(position) for position in worst],
        "under_generated_conditions": [row(p) for p in by_error[:CONDITIONS_SHOWN] if errors[p] < 0],
        "over_generated_conditions": [row(p) for p in by_error[::-1][:CONDITIONS_SHOWN] if errors[p] > 0],
    }


def _drawn_prevalence(held, generator: np.random.Generator, size: int) -> np.ndarray:
    """Prevalence of each column of `held` (patients x concepts, sparse) among `size` patients drawn with
    replacement: a weighted row sum, so a draw of 100,000 patients costs one pass over the matrix."""
    weights = np.bincount(generator.integers(held.shape[0], size=size), minlength=held.shape[0])
    return np.asarray(held.T @ weights, dtype=np.float64).ravel() / size


def _within_share(drawn: np.ndarray, reference: np.ndarray) -> float | None:
    """Share of the reference's concepts in >= 5% of patients whose drawn prevalence is within +-25% of it."""
    codes = np.flatnonzero(reference >= PREVALENCE_ERROR_MIN_REAL)
    if not len(codes):
        return None
    return float(np.mean(np.abs(drawn[codes] - reference[codes]) / reference[codes] <= PREVALENCE_TOLERANCE))


def _band(shares: list[float], **sizes: int) -> dict:
    low, median, high = np.percentile(shares, [5, 50, 95])
    return {**sizes, "draws": SAMPLE_DRAWS, "median": float(median), "p5": float(low), "p95": float(high)}


def within_25pct_of_samples(facts: SequenceFacts, real_prevalence: np.ndarray, sample_size: int,
                            seed: int = 0) -> dict | None:
    """The within +-25% share (against real_prevalence) of `sample_size` patients drawn with replacement from
    `facts`, SAMPLE_DRAWS times: median and 5-95%. Drawn from the synthetic patients, how much the figure
    would move with another sample of the same model."""
    codes = np.flatnonzero(real_prevalence >= PREVALENCE_ERROR_MIN_REAL)
    if not len(codes) or sample_size < 1 or facts.count < 1:
        return None
    held = concept_matrix(facts, len(real_prevalence))[:, codes]  # patients x frequent concepts, sparse
    generator = np.random.default_rng(seed)
    shares = [_within_share(_drawn_prevalence(held, generator, sample_size), real_prevalence[codes])
              for _ in range(SAMPLE_DRAWS)]
    return _band(shares, sample_size=sample_size)


def within_25pct_of_a_perfect_model(train: SequenceFacts, vocabulary_size: int, sample_size: int,
                                    seed: int = 0) -> dict | None:
    """What `sample_size` patients of a perfect model would score: a model that learned exactly the
    population the training patients come from. The training patients are a sample of that population
    too, so each of SAMPLE_DRAWS draws takes a training set as large as theirs and `sample_size` patients,
    both with replacement from them, and scores the second against the first. (Scoring the drawn patients
    against the training patients themselves rates a model that memorized them: on the demo's 938 and 500
    drawn, 94% instead of 88%.)"""
    if sample_size < 1 or train.count < 1:
        return None
    held = concept_matrix(train, vocabulary_size)
    held = held[:, np.flatnonzero(held.getnnz(axis=0))]  # the concepts some training patient holds
    generator = np.random.default_rng(seed)
    shares = []
    for _ in range(SAMPLE_DRAWS):
        training_set = _drawn_prevalence(held, generator, train.count)
        share = _within_share(_drawn_prevalence(held, generator, sample_size), training_set)
        if share is not None:  # a drawn training set with no concept in >= 5% of it has nothing to score
            shares.append(share)
    return _band(shares, sample_size=sample_size, training_set_size=train.count) if shares else None
