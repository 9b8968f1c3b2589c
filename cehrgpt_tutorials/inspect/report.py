"""Writing the report: what each metric means (METRICS), the printed lines, report.json and report.md."""

from __future__ import annotations

import math

import numpy as np

from cehrgpt_tutorials.inspect.fidelity import TOP_PAIRS
from cehrgpt_tutorials.inspect.report_sections import (
    _get,
    attack_lines,
    calendar_lines,
    cdm_fidelity_lines,
    prevalence_error_lines,
    print_new_metrics,
    timeline_lines,
    utility_lines,
)
from cehrgpt_tutorials.inspect.validity import VALIDITY_RULES

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
    "prevalence is within +-25% (relative) of the real one",
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
    "prevalence_within_25pct": "below ~0.8: frequent concepts, which analyses depend on, are mis-generated",
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


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def number(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_metrics(report: dict, distributions: dict) -> None:
    problems = ", ".join(
        f"{rule} {n:,}"
        for rule, n in sorted(report["invalid_reasons"].items(), key=lambda item: -item[1])
        if n
    )
    print(
        f"Structurally valid: {percent(report['valid_fraction'])} ({report['num_valid']:,} of {report['num_sequences']:,})"
        + (f"; problems: {problems}" if problems else "")
        + f" [real data: {percent(report['real']['valid_fraction'])} valid]"
    )
    print(f"Concept prevalence Pearson r: {number(report['prevalence_pearson_r'])}")
    print(
        f"Co-occurrence Pearson r ({report['cooccurrence_pairs']} frequent pairs): {number(report['cooccurrence_pearson_r'])}"
    )
    print(
        "Real vs synthetic distances: "
        + ", ".join(
            f"{name} {metric['test']} {number(metric['distance'])}" for name, metric in distributions.items()
        )
    )
    print(
        f"Exact copies of training sequences: {percent(report['exact_copy_fraction'])} "
        f"(clinical tokens only: {percent(report['clinical_exact_copy_fraction'])})"
    )
    nn = report["nn"]
    print(
        f"Nearest-neighbour distance ratio: {number(report['nn_distance_ratio'], 2)} (Jaccard, synthetic->real "
        f"{number(nn['synthetic_mean_distance'])} vs held-out->real {number(nn['heldout_mean_distance'])}; "
        f"{nn['synthetic_queries']:,} and {nn['heldout_queries']:,} sampled queries against {nn['reference_sequences']:,} real)"
    )
    print_new_metrics(report)
    if report["converted_fraction"] is not None:
        persons = report["restored_omop"]["rows"]["person"] or 0
        print(
            f"Converted to OMOP: {percent(report['converted_fraction'])} ({persons:,} persons from {report['num_sequences']:,} sequences)"
        )


def markdown_report(report: dict, distributions: dict, plots: dict[str, str], tokens, names) -> str:
    nn = report["nn"]
    lines = [
        f"# Synthetic patients: {report['run']}",
        "",
        f"Made by `inspect_synthetic.py` on {report['created']}. Synthetic: `{report['synthetic_dir']}` "
        f"({report['num_sequences']:,} sequences). Real: `{report['real_dir']}` ({report['real']['num_sequences']:,} "
        "training sequences). Every metric uses all synthetic sequences, valid or not, unless it says otherwise.",
        "",
        "## Summary",
        "",
        "| metric | value | what it measures |",
        "|---|---|---|",
        f"| valid_fraction | {percent(report['valid_fraction'])} | {METRICS['valid_fraction']} |",
        f"| prevalence_pearson_r | {number(report['prevalence_pearson_r'])} | {METRICS['prevalence_pearson_r']} |",
        f"| cooccurrence_pearson_r | {number(report['cooccurrence_pearson_r'])} | {METRICS['cooccurrence_pearson_r']} |",
        f"| length_ks | {number(report['length_ks'])} | KS statistic of sequence lengths (0 = same distribution) |",
        f"| visit_type_js | {number(report['visit_type_js'])} | Jensen-Shannon distance of visit types (0 = same) |",
        f"| exact_copy_fraction | {percent(report['exact_copy_fraction'])} | {METRICS['exact_copy_fraction']} |",
        f"| clinical_exact_copy_fraction | {percent(report['clinical_exact_copy_fraction'])} | the same, clinical concepts only |",
        f"| nn_distance_ratio | {number(report['nn_distance_ratio'], 2)} | {METRICS['nn_distance_ratio']} |",
        f"| converted_fraction | {percent(report['converted_fraction'])} | {METRICS['converted_fraction']} |",
        f"| heldout_real_sequences | {report['heldout_real_sequences']:,} | real sequences the model never saw, "
        "the reference of the privacy and utility checks |",
        f"| prevalence_within_25pct | {percent(report['prevalence_within_25pct'])} | {METRICS['prevalence_within_25pct']} |",
        f"| cdm_concepts_within_25pct (real sequences) | {percent(report['cdm_concepts_within_25pct'])} "
        f"({percent(report['cdm_concepts_within_25pct_real_sequences'])}) | {METRICS['cdm_concepts_within_25pct']} |",
        f"| visits_after_source_end_fraction | {percent(report['visits_after_source_end_fraction'])} | "
        f"{METRICS['visits_after_source_end_fraction']} |",
        f"| membership_inference accuracy (synthetic / copies of training patients) | "
        f"{number(_get(report['membership_inference'], 'accuracy'))} / "
        f"{number(_get(report['membership_inference'], 'control_accuracy'))} | {METRICS['membership_inference']} |",
        f"| attribute_inference f1 (synthetic / held-out baseline / copies) | "
        f"{number(_get(report['attribute_inference'], 'f1_synthetic'))} / "
        f"{number(_get(report['attribute_inference'], 'f1_baseline'))} / "
        f"{number(_get(report['attribute_inference'], 'f1_control'))} | {METRICS['attribute_inference']} |",
        f"| dimension_wise_auroc_synthetic / dimension_wise_auroc_real | {number(report['dimension_wise_auroc_synthetic'])} / "
        f"{number(report['dimension_wise_auroc_real'])} | {METRICS['dimension_wise_auroc']} |",
        "",
        *timeline_lines(plots),
        "## 1. Structural validity",
        "",
        f"{percent(report['valid_fraction'])} of the synthetic sequences ({report['num_valid']:,} of "
        f"{report['num_sequences']:,}) pass every rule; the real training sequences: "
        f"{percent(report['real']['valid_fraction'])}. A sequence can fail several rules.",
        "",
        "| rule | synthetic sequences failing | real sequences failing | the rule is broken by |",
        "|---|---|---|---|",
    ]
    for rule, explanation in VALIDITY_RULES.items():
        lines.append(
            f"| {rule} | {report['invalid_reasons'][rule]:,} | {report['real']['invalid_reasons'][rule]:,} | {explanation} |"
        )
    lines += [
        "",
        f"![Share of sequences failing each rule]({plots['validity']})",
        "",
        "## 2. Concept prevalence",
        "",
        f"Pearson r = {number(report['prevalence_pearson_r'])}. {METRICS['prevalence_pearson_r']}. Clinical concepts "
        "are concept ids after the demographic prompt, without the visit type after [VS] and the discharge token "
        "of inpatient visits.",
        "",
        f"![Concept prevalence, real vs synthetic]({plots['prevalence']})",
        "",
        f"The {len(report['top_concepts'])} most common concepts in the real data:",
        "",
        "| concept_id | name | real | synthetic |",
        "|---|---|---|---|",
    ]
    for row in report["top_concepts"]:
        lines.append(
            f"| {row['concept_id']} | {row['name'] or '(name unknown)'} | {percent(row['real_prevalence'])} | "
            f"{percent(row['synthetic_prevalence'])} |"
        )
    lines += [
        "",
    ]
    lines += prevalence_error_lines(report, plots)
    lines += cdm_fidelity_lines(report)
    lines += [
        "",
        "## 3. Distributions",
        "",
        METRICS["distributions"] + ".",
        "",
        "| distribution | test | distance | real mean | synthetic mean |",
        "|---|---|---|---|---|",
    ]
    for name, metric in distributions.items():
        lines.append(
            f"| {name.replace('_', ' ')} | {metric['test']} | {number(metric['distance'])} | "
            f"{number(metric.get('real_mean'), 1)} | {number(metric.get('synthetic_mean'), 1)} |"
        )
    lines += [
        "",
        f"![Real vs synthetic distributions]({plots['distributions']})",
        "",
        f"![Visit types]({plots['visit_types']})",
        "",
        f"![Gender and race]({plots['demographics']})",
        "",
        "## 4. Co-occurrence",
        "",
        f"Pearson r = {number(report['cooccurrence_pearson_r'])} over {report['cooccurrence_pairs']} pairs. "
        f"{METRICS['cooccurrence_pearson_r']}; the {TOP_PAIRS} most frequent pairs of each set are compared.",
        "",
        "## 5. Memorization",
        "",
        f"- Exact copies: {report['exact_copies']:,} synthetic sequences ({percent(report['exact_copy_fraction'])}) "
        f"are identical to a real training sequence; {percent(report['clinical_exact_copy_fraction'])} repeat the "
        "clinical concepts of one, in order. Every synthetic sequence is compared with every training sequence, through a 64-bit fingerprint of each sequence.",
        f"- Nearest neighbours: ratio {number(report['nn_distance_ratio'], 2)}. Mean Jaccard distance to the nearest "
        f"real patient: synthetic {number(nn['synthetic_mean_distance'])} (median {number(nn['synthetic_median_distance'])}, "
        f"{percent(nn['synthetic_zero_distance_fraction'])} at distance 0), held-out real "
        f"{number(nn['heldout_mean_distance'])} (median {number(nn['heldout_median_distance'])}, "
        f"{percent(nn['heldout_zero_distance_fraction'])} at distance 0). To stay fast at 100k x 100k it uses samples: "
        f"{nn['synthetic_queries']:,} synthetic and {nn['heldout_queries']:,} held-out query sequences (patients with "
        f"at least one concept) against {nn['reference_sequences']:,} real reference sequences, as sparse matrix "
        f"products. Split: {nn['split']}. Reading: {READINGS['nn_distance_ratio']}.",
    ]
    lines += attack_lines(report)
    lines += [
        "",
        "## 6. Conversion to OMOP",
        "",
    ]
    if report["restored_omop"] is None:
        lines.append(
            "Not measured: no restored OMOP folder (the run's restored_omop/ or `--restored-omop-dir`, the folder cehrgpt's converter wrote)."
        )
    else:
        rows = report["restored_omop"]["rows"]
        lines += [
            f"{percent(report['converted_fraction'])} of the sequences became persons in `{report['restored_omop']['dir']}`.",
            "",
            "| table | rows |",
            "|---|---|",
        ]
        lines += [
            f"| {table} | {'(no folder)' if count is None else f'{count:,}'} |"
            for table, count in rows.items()
        ]
    lines += utility_lines(report)
    lines += calendar_lines(report, plots)
    lines.append("")
    return "\n".join(lines)

