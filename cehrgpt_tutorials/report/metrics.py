"""What each of the report's numbers means (METRICS), how to read it (READINGS), and how numbers are
written (percent, number, n/a for what was not measured), in one place so that the printed lines,
report.md, the plots and `inspect_synthetic.py --help` say the same thing."""

from __future__ import annotations

import math

import numpy as np

# One line per metric: printed by --help and written into report.md, so the numbers explain themselves.
METRICS = {
    "valid_fraction": "share of synthetic sequences that pass every structural rule below "
    "(what cehrbert_data writes and cehrgpt's OMOP converter expects)",
    "prevalence_pearson_r": "Pearson r between real and synthetic concept prevalence (share of patients "
    "having each concept), over every concept seen in either set; 1 = same frequencies",
    "cooccurrence_pearson_r": "Pearson r between real and synthetic prevalence of the most frequent concept "
    "pairs (patients having both), pairs among the 50 most common concepts of each set",
    "distributions": "real vs synthetic: Kolmogorov-Smirnov statistic for numbers (sequence length, visits "
    "per patient, days between visits, age at first visit, start year, concepts per patient), "
    "Jensen-Shannon distance (base 2) for categories (visit types, gender, race); 0 = same, 1 = disjoint",
    "exact_copy_fraction": "share of synthetic sequences identical, token for token, to a real training "
    "sequence (clinical_exact_copy_fraction: the same for their clinical concepts only, in order)",
    "nn_distance_ratio": "mean Jaccard distance from a synthetic patient's concept set to its nearest real "
    "training patient, divided by the same for held-out real patients (sampled); ~1 = as far as a new "
    "real patient, near 0 = copies",
    "converted_fraction": "share of synthetic sequences that cehrgpt's converter turned into OMOP persons "
    "(from --restored-omop-dir, or the run's restored_omop/)",
    "prevalence_within_25pct": "share of the concepts in >= 5% of real training patients whose synthetic "
    "prevalence is within +-25% (relative) of the real one (prevalence_within_25pct_perfect_model: the median "
    "share a perfect model's patients get, as many as the synthetic ones, drawn at random from the real "
    "training patients and scored against a training set of their size drawn too; "
    "prevalence_errors.synthetic_resamples: the 5-95% band of the synthetic patients resampled)",
    "cdm_concepts_within_25pct": "share of the condition, drug and procedure concepts held by >= 5% of the source "
    "CDM's persons (exported OMOP tables) whose synthetic prevalence is within +-25% (relative) of the CDM's "
    "(cdm_concepts_within_25pct_real_sequences: the same for the real training sequences)",
    "visits_after_source_end_fraction": "share of synthetic visits (as generated, dated the way cehrgpt's "
    "converter dates them) that start after the source data's last visit date",
    "membership_inference": "cehrgpt's membership inference: synthetic patients' distances to sampled training "
    "vs held-out real patients, 'member' when nearer a training patient than all but 5% of held-out real "
    "patients are (a threshold set from the data); accuracy 0.5 = chance. control_accuracy: the same attack on "
    "exact copies of the sampled training patients, what it scores when the model copies",
    "attribute_inference": "cehrgpt's attribute inference: a training patient's sensitive concepts guessed from "
    "the synthetic patient nearest on demographics and common concepts (F1), vs the same guess from held-out "
    "real patients (f1_baseline) and from exact copies of the training patients (f1_control)",
    "dimension_wise_auroc": "medGAN's dimension-wise prediction: per common concept, a logistic regression from "
    "the other concepts, trained on synthetic vs on real patients, AUROC on held-out real patients",
}

# What value of each privacy and utility number should worry you: one line each, in report.md.
READINGS = {
    "nn_distance_ratio": "well below 1 (say under 0.8): synthetic patients sit closer to training patients than "
    "new real patients do, a sign of memorization",
    "membership_inference": "accuracy near 0.5 is what an attacker gets by guessing; above ~0.6 the synthetic "
    "data tells members from non-members. Either reading holds only if the attack scores at least 0.8 on copies "
    "(control_accuracy): below, it cannot see copying on this data and its accuracy means nothing",
    "attribute_inference": "f1_synthetic at or below f1_baseline: the synthetic patients reveal no more than "
    "real strangers would; clearly above it (towards f1_control) they leak training patients' concepts. If "
    "f1_control is not 0.2 above f1_baseline, copies reveal little more than strangers and the test means nothing",
    "dimension_wise_auroc": "a ratio near 1: as useful as the real data for these predictions; well below 1 "
    "(say under 0.9): relations between concepts were lost",
    "visits_after_source_end_fraction": "0% in real data; more than a few % means synthetic patients live in "
    "the future (the restore step censors them at the source's last date)",
    "prevalence_within_25pct": "the synthetic band well below the perfect model's band: frequent concepts, which "
    "analyses depend on, are mis-generated; the bands overlapping: as close as this many patients can show. Two "
    "runs whose bands overlap are not told apart by this figure",
    "cdm_concepts_within_25pct": "well below the real sequences' figure: the model mis-generates what step 2 kept; "
    "the real sequences' figure itself well below 1: step 2 lost concepts (or persons) before any model",
}


def token_label(token: str, names: dict[str, tuple[str, str]], width: int = 40) -> str:
    name = names.get(token, ("", ""))[0]
    label = f"{token} {name}" if name else token
    return label if len(label) <= width else label[: width - 1] + "…"


def json_ready(value):
    """NaN/inf -> None, numpy scalars -> Python, floats rounded to 6 digits."""
    if isinstance(value, dict):
        return {str(key): json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_ready(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def measured(section: dict | None, key: str):
    """A value of a report section that may not have been measured (None: the section is None)."""
    return None if section is None else section.get(key)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"
