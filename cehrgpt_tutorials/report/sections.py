"""The report's sections on what the summary numbers hide: a few patients' timelines, per-concept
prevalence errors (against the real sequences and the source CDM), the authors' privacy attacks, utility
and calendar time. Each returns its lines (printed, or in report.md) with a one-line reading of what
value should worry you, since these numbers have no obvious scale."""

from __future__ import annotations

from cehrgpt_tutorials.report.metrics import METRICS, READINGS, number, percent


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


def prevalence_calendar_privacy_utility_lines(report: dict) -> list[str]:
    """The printed lines of this module's sections: prevalence errors (against the real sequences and the
    source CDM), calendar time, the two attacks when measured, utility when measured."""
    errors, calendar = report["prevalence_errors"], report["calendar"]
    lines = [
        f"Concepts in >= {percent(errors['min_real_prevalence'])} of real patients within +-25% prevalence: "
        f"{percent(errors['within_25pct'])} of {errors['concepts']}{samples_note(errors)}",
        cdm_fidelity_line(report["cdm_fidelity"]),
        f"Synthetic visits after the source's last date ({calendar['source_end_date']}): "
        f"{percent(calendar['visits_after_source_end_fraction'])}, after today: "
        f"{percent(calendar['visits_after_run_date_fraction'])} (real: "
        f"{percent(calendar['real_visits_after_source_end_fraction'])}); last synthetic visit {calendar['last_visit_date']}",
    ]
    membership, attributes = report["membership_inference"], report["attribute_inference"]
    if membership is not None:
        lines.append(f"Membership inference (cehrgpt, vs held-out real; member: nearer than "
                     f"{number(membership['threshold'], 2)}, as {percent(membership['heldout_under_threshold'])} of "
                     f"held-out real patients are; {membership['sample_per_set']:,} per set): "
                     f"{membership_verdict(membership)}")
    if attributes is not None:
        lines.append(f"Attribute inference (cehrgpt): F1 synthetic {number(attributes['f1_synthetic'])}, held-out "
                     f"real {number(attributes['f1_baseline'])}, copies of training patients "
                     f"{number(attributes['f1_control'])} (train-train {number(attributes['f1_train_train'])}): "
                     f"{attribute_verdict(attributes)}")
    if report["utility"] is not None:
        lines.append(f"Dimension-wise prediction AUROC on held-out real: trained on synthetic "
                     f"{number(report['dimension_wise_auroc_synthetic'])}, on real "
                     f"{number(report['dimension_wise_auroc_real'])}")
    return lines


def samples_note(errors: dict) -> str:
    """The spread and the baseline beside the within +-25% share: the synthetic patients resampled (how much
    another sample of the model would move it) and what as many patients of a perfect model would score."""
    resampled, perfect = errors.get("synthetic_resamples"), errors.get("perfect_model")
    if not resampled or not perfect:
        return ""
    return (f" (5-95% over {resampled['draws']} resamples of the synthetic patients: {percent(resampled['p5'])}-"
            f"{percent(resampled['p95'])}; {perfect['sample_size']:,} patients of a perfect model, drawn at random "
            f"from the real training patients and scored against a training set of {perfect['training_set_size']:,} "
            f"drawn too: {percent(perfect['median'])}, 5-95% {percent(perfect['p5'])}-{percent(perfect['p95'])})")


def prevalence_error_lines(report: dict, plots: dict[str, str]) -> list[str]:
    errors = report["prevalence_errors"]
    lines = [
        f"### Per-concept error on the {errors['concepts']} concepts in >= {percent(errors['min_real_prevalence'])} "
        "of real patients",
        "",
        f"{percent(errors['within_25pct'])} have a synthetic prevalence within +-25% of the real one (relative error "
        f"= (synthetic - real) / real; -100% = never generated){samples_note(errors)}. "
        f"Reading: {READINGS['prevalence_within_25pct']}.",
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


ABSENT_PRINTED = 5


def _named(row: dict) -> str:
    return f"{row['name']} ({row['concept_id']})" if row["name"] else row["concept_id"]


def cdm_fidelity_line(section: dict) -> str:
    if "not_measured" in section:
        return f"vs the source CDM: not measured ({section['not_measured']})"
    count, absent = section["concepts"], section["absent"]
    shown = ", ".join(_named(row) for row in absent[:ABSENT_PRINTED])
    more = f" and {len(absent) - ABSENT_PRINTED} more" if len(absent) > ABSENT_PRINTED else ""
    return (f"vs the source CDM: {section['within_25pct_count']} of {count} frequent concepts within +-25% "
            f"(real sequences: {section['real_within_25pct_count']} of {count}); absent: {shown or 'none'}{more}")


def cdm_fidelity_lines(report: dict) -> list[str]:
    section = report["cdm_fidelity"]
    lines = ["", "### Against the source CDM", ""]
    if "not_measured" in section:
        return lines + [f"Not measured: {section['not_measured']} (`--omop-dir`, default `$OMOP_DIR`)."]
    absent = section["absent"]
    lost = sum(row["real_prevalence"] == 0 for row in absent)
    lines += [
        f"Of the {section['concepts']} condition, drug and procedure concepts held by >= "
        f"{percent(section['min_cdm_prevalence'])} of the {section['persons']:,} persons of the source CDM "
        f"(`{section['omop_dir']}`; a person holds a concept with any row of it, any date), "
        f"{section['within_25pct_count']} ({percent(section['within_25pct'])}) have a synthetic prevalence within "
        f"+-25% of the CDM's; in the real training sequences {section['real_within_25pct_count']} "
        f"({percent(section['real_within_25pct'])}): what step 2 (its concept cut and its patients) loses before "
        f"any model. Reading: {READINGS['cdm_concepts_within_25pct']}.",
        "",
        f"Never generated: {len(absent)}, {lost} of them absent from the real training sequences too.",
    ]
    lines += _cdm_table(absent, "", percent)
    lines += ["", "The worst of the generated ones:"] + _cdm_table(section["worst_generated"], "synthetic", percent)
    return lines


def _cdm_table(rows: list[dict], synthetic: str, percent) -> list[str]:
    if not rows:
        return ["", "None."]
    extra = " synthetic | relative error (synthetic vs CDM) |" if synthetic else ""
    lines = ["", f"| concept | domain | CDM | real sequences |{extra}", "|---|---|---|---|" + ("---|---|" if extra else "")]
    for row in rows:
        line = (f"| {_concept(row)} | {row['domain'] or '?'} | {percent(row['cdm_prevalence'])} | "
                f"{percent(row['real_prevalence'])} |")
        if synthetic:
            line += f" {percent(row['synthetic_prevalence'])} | {row['relative_error']:+.0%} |"
        lines.append(line)
    return lines


def membership_verdict(membership: dict) -> str:
    """Both accuracies side by side; an attack that cannot see copies says so."""
    verdict = (f"this attack scores {number(membership['control_accuracy'])} on copies of training patients; here it "
               f"scores {number(membership['accuracy'])}")
    if not membership["informative"]:
        verdict += (f". Under {membership['control_bar']} on copies, the attack is too weak on this data to mean "
                    "anything")
    return verdict


def attribute_verdict(attributes: dict) -> str:
    gap = attributes["f1_synthetic"] - attributes["f1_baseline"]
    verdict = ("synthetic F1 is not above the held-out baseline, so the synthetic patients reveal no more than "
               "real strangers" if gap <= 0 else f"synthetic F1 is {number(gap)} above the held-out baseline")
    if not attributes["informative"]:
        verdict += (f"; but copies of the training patients reveal less than {attributes['control_gap']} F1 more "
                    "than strangers, so the attack is too weak on this data to mean anything")
    return verdict


def attack_lines(report: dict) -> list[str]:
    membership, attributes = report["membership_inference"], report["attribute_inference"]
    lines = [""]
    if membership is None:
        lines.append("- Membership inference: not measured (fewer than 2 patients in a set).")
    else:
        lines.append(
            f"- Membership inference (cehrgpt.analysis.privacy.member_inference, against the held-out real patients): "
            f"{membership_verdict(membership)}. Member: nearer than {number(membership['threshold'])} (squared "
            f"Euclidean distance on cehrgpt's patient vectors) to a sampled training patient, the distance under which "
            f"{percent(membership['heldout_under_threshold'])} of the real patients the model never saw fall "
            f"({membership['threshold_rule']}). Precision {number(membership['precision'])}, recall {number(membership['recall'])}, "
            f"F1 {number(membership['f1'])}, on {membership['sample_per_set']:,} sampled patients per set. "
            f"{METRICS['membership_inference']}. Reading: {READINGS['membership_inference']}."
        )
    if attributes is None:
        lines.append("- Attribute inference: not measured (too few patients, or no sensitive concepts).")
    else:
        lines.append(
            f"- Attribute inference (cehrgpt.analysis.privacy.attribute_inference, config derived from the data: the "
            f"{attributes['common_attributes']} most common concepts known, {attributes['sensitive_attributes']:,} others "
            f"sensitive; written to attribute_inference_config.yml): F1 from synthetic patients "
            f"{number(attributes['f1_synthetic'])}, from held-out real patients {number(attributes['f1_baseline'])}, "
            f"from copies of the training patients {number(attributes['f1_control'])}, from other training patients "
            f"(cehrgpt's baseline) {number(attributes['f1_train_train'])}, on {attributes['sample_per_set']:,} "
            f"patients per set: {attribute_verdict(attributes)}. Reading: {READINGS['attribute_inference']}."
        )
    return lines


def utility_lines(report: dict) -> list[str]:
    utility = report["utility"]
    lines = ["", "## 7. Utility: train on synthetic, test on real", ""]
    if utility is None:
        return lines + ["Not measured: no held-out real patient has a concept to predict."]
    lines += [
        f"{METRICS['dimension_wise_auroc']}. Mean AUROC over {len(utility['concepts'])} concepts: trained on synthetic "
        f"{number(utility['auroc_synthetic'])}, on real {number(utility['auroc_real'])}, ratio "
        f"{number(utility['ratio'], 2)} ({utility['train_rows_synthetic']:,} synthetic and {utility['train_rows_real']:,} "
        f"real training patients, {utility['heldout_rows']:,} held-out). Reading: {READINGS['dimension_wise_auroc']}.",
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
    calendar = report["calendar"]
    lines = [
        "",
        "## 8. Calendar time",
        "",
        f"Source data's last visit: {calendar['source_end_date']} ({calendar['source_end_from']}); report date "
        f"{calendar['run_date']}. {METRICS['visits_after_source_end_fraction']}.",
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
        f"Reading: {READINGS['visits_after_source_end_fraction']}.",
    ]
    if "calendar" in plots:
        lines += ["", f"![Visits per calendar year]({plots['calendar']})"]
    return lines
