"""The printed lines and report.md: the summary and sections 1 to 6, each section one function that
returns its lines, so report.md reads in the order of the functions that write it (sections.py holds
the sections on what the summary numbers hide)."""

from __future__ import annotations

from cehrgpt_tutorials.report.fidelity import TOP_PAIRS
from cehrgpt_tutorials.report.metrics import METRICS, READINGS, measured, number, percent
from cehrgpt_tutorials.report.sections import (
    attack_lines,
    calendar_lines,
    cdm_fidelity_lines,
    prevalence_calendar_privacy_utility_lines,
    prevalence_error_lines,
    timeline_lines,
    utility_lines,
)
from cehrgpt_tutorials.sequences.grammar import VALIDITY_RULES


def print_metrics(report: dict, distributions: dict[str, dict]) -> None:
    """One line per metric, after the seed's summary."""
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
    for line in prevalence_calendar_privacy_utility_lines(report):
        print(line)
    if report["converted_fraction"] is not None:
        persons = report["restored_omop"]["rows"]["person"] or 0
        print(
            f"Converted to OMOP: {percent(report['converted_fraction'])} ({persons:,} persons from {report['num_sequences']:,} sequences)"
        )


def markdown_report(report: dict, distributions: dict[str, dict], plots: dict[str, str]) -> str:
    """report.md: the summary table, a few patients' timelines, then sections 1 to 8."""
    lines = [
        *summary_lines(report),
        *timeline_lines(plots),
        *validity_lines(report, plots),  # 1
        *prevalence_lines(report, plots),  # 2
        *distribution_lines(distributions, plots),  # 3
        *cooccurrence_lines(report),  # 4
        *memorization_lines(report),  # 5
        *conversion_lines(report),  # 6
        *utility_lines(report),  # 7
        *calendar_lines(report, plots),  # 8
        "",
    ]
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
    """The title, what was compared, and one table row per headline metric."""
    membership, attributes = report["membership_inference"], report["attribute_inference"]
    return [
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
        f"| prevalence_within_25pct (perfect model) | {percent(report['prevalence_within_25pct'])} "
        f"({percent(report.get('prevalence_within_25pct_perfect_model'))}) | {METRICS['prevalence_within_25pct']} |",
        f"| cdm_concepts_within_25pct (real sequences) | {percent(report['cdm_concepts_within_25pct'])} "
        f"({percent(report['cdm_concepts_within_25pct_real_sequences'])}) | {METRICS['cdm_concepts_within_25pct']} |",
        f"| visits_after_source_end_fraction | {percent(report['visits_after_source_end_fraction'])} | "
        f"{METRICS['visits_after_source_end_fraction']} |",
        f"| membership_inference accuracy (synthetic / copies of training patients) | "
        f"{number(measured(membership, 'accuracy'))} / "
        f"{number(measured(membership, 'control_accuracy'))} | {METRICS['membership_inference']} |",
        f"| attribute_inference f1 (synthetic / held-out baseline / copies) | "
        f"{number(measured(attributes, 'f1_synthetic'))} / "
        f"{number(measured(attributes, 'f1_baseline'))} / "
        f"{number(measured(attributes, 'f1_control'))} | {METRICS['attribute_inference']} |",
        f"| dimension_wise_auroc_synthetic / dimension_wise_auroc_real | {number(report['dimension_wise_auroc_synthetic'])} / "
        f"{number(report['dimension_wise_auroc_real'])} | {METRICS['dimension_wise_auroc']} |",
        "",
    ]


def validity_lines(report: dict, plots: dict[str, str]) -> list[str]:
    """1. The share of valid sequences, and per rule how many synthetic and real sequences break it."""
    lines = [
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
    return lines + ["", f"![Share of sequences failing each rule]({plots['validity']})"]


def prevalence_lines(report: dict, plots: dict[str, str]) -> list[str]:
    """2. Prevalence: its correlation, the most common concepts, the per-concept errors, the source CDM."""
    lines = [
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
    return lines + ["", *prevalence_error_lines(report, plots), *cdm_fidelity_lines(report)]


def distribution_lines(distributions: dict[str, dict], plots: dict[str, str]) -> list[str]:
    """3. Each distribution's test, distance and means, and the plots of them."""
    lines = [
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
    return lines + [
        "",
        f"![Real vs synthetic distributions]({plots['distributions']})",
        "",
        f"![Visit types]({plots['visit_types']})",
        "",
        f"![Gender and race]({plots['demographics']})",
    ]


def cooccurrence_lines(report: dict) -> list[str]:
    """4. The correlation of pair prevalence."""
    return [
        "",
        "## 4. Co-occurrence",
        "",
        f"Pearson r = {number(report['cooccurrence_pearson_r'])} over {report['cooccurrence_pairs']} pairs. "
        f"{METRICS['cooccurrence_pearson_r']}; the {TOP_PAIRS} most frequent pairs of each set are compared.",
    ]


def memorization_lines(report: dict) -> list[str]:
    """5. Exact copies, nearest-neighbour distances, then the authors' two attacks."""
    nn = report["nn"]
    return [
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
        *attack_lines(report),
    ]


def conversion_lines(report: dict) -> list[str]:
    """6. The share of sequences that became OMOP persons, and the restored tables' rows."""
    lines = ["", "## 6. Conversion to OMOP", ""]
    if report["restored_omop"] is None:
        return lines + [
            "Not measured: no restored OMOP folder (the run's restored_omop/ or `--restored-omop-dir`, the folder cehrgpt's converter wrote)."
        ]
    rows = report["restored_omop"]["rows"]
    lines += [
        f"{percent(report['converted_fraction'])} of the sequences became persons in `{report['restored_omop']['dir']}`.",
        "",
        "| table | rows |",
        "|---|---|",
    ]
    return lines + [
        f"| {table} | {'(no folder)' if count is None else f'{count:,}'} |"
        for table, count in rows.items()
    ]
