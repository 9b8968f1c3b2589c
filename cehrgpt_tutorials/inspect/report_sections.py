"""The report's sections on what the summary numbers hide: a few patients' timelines, per-concept
prevalence errors, the authors' privacy attacks, utility and calendar time (printed lines and report.md), each with a one-line reading."""

from __future__ import annotations


def _get(section: dict | None, key: str):
    return None if section is None else section.get(key)


def _formatting():
    # report.py imports this module; its helpers are imported when a section is written.
    from cehrgpt_tutorials.inspect.report import METRICS, READINGS, number, percent

    return METRICS, READINGS, number, percent


def _concept(row: dict) -> str:
    return f"{row['concept_id']} {row['name']}" if row["name"] else row["concept_id"]


def timeline_lines(plots: dict[str, str]) -> list[str]:
    """report.md's first picture: what the patients look like, before any number about them."""
    if "timelines" not in plots:
        return []
    return [
        "## Patients at a glance",
        "",
        "A few real patients the model never saw (top) and a few synthetic ones (bottom), one row each: every visit "
        "is a mark at its date as cehrgpt's converter dates it, coloured by visit type, with its first concepts "
        "named (`python -m cehrgpt_tutorials.show_patient` prints one patient's tokens beside its OMOP rows).",
        "",
        f"![Timelines of real and synthetic patients]({plots['timelines']})",
        "",
    ]


def print_new_metrics(report: dict) -> None:
    _, _, number, percent = _formatting()
    errors = report["prevalence_errors"]
    print(f"Concepts in >= {percent(errors['min_real_prevalence'])} of real patients within +-25% prevalence: "
          f"{percent(errors['within_25pct'])} of {errors['concepts']}")
    calendar = report["calendar"]
    print(f"Synthetic visits after the source's last date ({calendar['source_end_date']}): "
          f"{percent(calendar['visits_after_source_end_fraction'])}, after today: "
          f"{percent(calendar['visits_after_run_date_fraction'])} (real: "
          f"{percent(calendar['real_visits_after_source_end_fraction'])}); last synthetic visit {calendar['last_visit_date']}")
    membership, attributes = report["membership_inference"], report["attribute_inference"]
    if membership is not None:
        print(f"Membership inference (cehrgpt, vs held-out real): accuracy {number(membership['accuracy'])}, "
              f"F1 {number(membership['f1'])} ({membership['sample_per_set']:,} per set)")
    if attributes is not None:
        print(f"Attribute inference (cehrgpt): F1 synthetic {number(attributes['f1_synthetic'])} vs held-out real "
              f"{number(attributes['f1_baseline'])} (train-train {number(attributes['f1_train_train'])})")
    if report["utility"] is not None:
        print(f"Dimension-wise prediction AUROC on held-out real: trained on synthetic "
              f"{number(report['dimension_wise_auroc_synthetic'])}, on real {number(report['dimension_wise_auroc_real'])}")


def prevalence_error_lines(report: dict, plots: dict[str, str]) -> list[str]:
    _, readings, _, percent = _formatting()
    errors = report["prevalence_errors"]
    lines = [
        f"### Per-concept error on the {errors['concepts']} concepts in >= {percent(errors['min_real_prevalence'])} "
        "of real patients",
        "",
        f"{percent(errors['within_25pct'])} have a synthetic prevalence within +-25% of the real one (relative error "
        f"= (synthetic - real) / real; -100% = never generated). Reading: {readings['prevalence_within_25pct']}.",
        "",
    ]
    if "prevalence_errors" in plots:
        lines += [f"![Worst relative prevalence errors]({plots['prevalence_errors']})", ""]
    lines += ["| concept | domain | real | synthetic | relative error |", "|---|---|---|---|---|"]
    lines += [
        f"| {_concept(row)} | {row['domain'] or '?'} | {percent(row['real_prevalence'])} | "
        f"{percent(row['synthetic_prevalence'])} | {row['relative_error']:+.0%} |"
        for row in errors["worst"]
    ]
    for label, key in (("under-generated", "under_generated_conditions"), ("over-generated", "over_generated_conditions")):
        rows = errors[key]
        shown = ", ".join(f"{_concept(row)} {percent(row['real_prevalence'])} -> {percent(row['synthetic_prevalence'])} "
                          f"({row['relative_error']:+.0%})" for row in rows)
        lines += ["", f"Most {label} conditions: {shown or 'none (or no concept domains known)'}."]
    return lines


def attack_lines(report: dict) -> list[str]:
    metrics, readings, number, _ = _formatting()
    membership, attributes = report["membership_inference"], report["attribute_inference"]
    lines = [""]
    if membership is None:
        lines.append("- Membership inference: not measured (fewer than 2 patients in a set).")
    else:
        lines.append(
            f"- Membership inference (cehrgpt.analysis.privacy.member_inference, against the held-out real patients): "
            f"accuracy {number(membership['accuracy'])}, precision {number(membership['precision'])}, recall "
            f"{number(membership['recall'])}, F1 {number(membership['f1'])}, on {membership['sample_per_set']:,} "
            f"sampled patients per set. {metrics['membership_inference']}. Reading: {readings['membership_inference']}."
        )
    if attributes is None:
        lines.append("- Attribute inference: not measured (too few patients, or no sensitive concepts).")
    else:
        lines.append(
            f"- Attribute inference (cehrgpt.analysis.privacy.attribute_inference, config derived from the data: the "
            f"{attributes['common_attributes']} most common concepts known, {attributes['sensitive_attributes']:,} others "
            f"sensitive; written to attribute_inference_config.yml): F1 from synthetic patients "
            f"{number(attributes['f1_synthetic'])}, from held-out real patients {number(attributes['f1_baseline'])}, "
            f"from other training patients (cehrgpt's baseline) {number(attributes['f1_train_train'])}, on "
            f"{attributes['sample_per_set']:,} patients per set. Reading: {readings['attribute_inference']}."
        )
    return lines


def utility_lines(report: dict) -> list[str]:
    metrics, readings, number, percent = _formatting()
    utility = report["utility"]
    lines = ["", "## 7. Utility: train on synthetic, test on real", ""]
    if utility is None:
        return lines + ["Not measured: no held-out real patient has a concept to predict."]
    lines += [
        f"{metrics['dimension_wise_auroc']}. Mean AUROC over {len(utility['concepts'])} concepts: trained on synthetic "
        f"{number(utility['auroc_synthetic'])}, on real {number(utility['auroc_real'])}, ratio "
        f"{number(utility['ratio'], 2)} ({utility['train_rows_synthetic']:,} synthetic and {utility['train_rows_real']:,} "
        f"real training patients, {utility['heldout_rows']:,} held-out). Reading: {readings['dimension_wise_auroc']}.",
        "",
        "| concept | held-out prevalence | AUROC, trained on real | AUROC, trained on synthetic |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {_concept(row)} | {percent(row['heldout_prevalence'])} | {number(row['auroc_real'])} | "
        f"{number(row['auroc_synthetic'])}{'' if row['synthetic_trainable'] else ' (one class: 0.5)'} |"
        for row in utility["concepts"]
    ]
    return lines


def calendar_lines(report: dict, plots: dict[str, str]) -> list[str]:
    metrics, readings, _, percent = _formatting()
    calendar = report["calendar"]
    lines = [
        "",
        "## 8. Calendar time",
        "",
        f"Source data's last visit: {calendar['source_end_date']} ({calendar['source_end_from']}); report date "
        f"{calendar['run_date']}. {metrics['visits_after_source_end_fraction']}.",
        "",
        "| | synthetic | real |",
        "|---|---|---|",
        f"| visits after the source's last date | {percent(calendar['visits_after_source_end_fraction'])} | "
        f"{percent(calendar['real_visits_after_source_end_fraction'])} |",
        f"| visits after the report date | {percent(calendar['visits_after_run_date_fraction'])} | "
        f"{percent(calendar['real_visits_after_run_date_fraction'])} |",
        f"| patients with a visit after the source's last date | "
        f"{percent(calendar['patients_with_visits_after_source_end_fraction'])} | "
        f"{percent(calendar['real_patients_with_visits_after_source_end_fraction'])} |",
        f"| last visit | {calendar['last_visit_date']} | {calendar['real_last_visit_date']} |",
        "",
        f"Reading: {readings['visits_after_source_end_fraction']}.",
    ]
    if "calendar" in plots:
        lines += ["", f"![Visits per calendar year]({plots['calendar']})"]
    return lines
