"""Step 6's report, as a small package; `inspect_synthetic.py` is its command line.

    vocabulary.py  the token classifier (Vocabulary) and the token kinds
    sequences.py   reading patient sequences as code arrays
    validity.py    VALIDITY_RULES and `analyse` (every rule and per-sequence fact, vectorized)
    fidelity.py    prevalence (and per-concept errors), co-occurrence, distributions
    cdm_fidelity.py the frequent concepts of the source CDM (exported OMOP tables) vs real and synthetic
    timeline.py    calendar time: visit dates as cehrgpt's converter gives them; censoring at a date
    privacy.py     exact copies, nearest-neighbour distances, cehrgpt's membership and attribute inference
    utility.py     dimension-wise prediction: train on synthetic vs on real, test on held-out real
    inputs.py      the runs, the real train/ and held-out test/ sequences, concept names, restored OMOP
    report.py      what each metric means, printed lines, report.json and report.md
    report_sections.py  report.md's sections on prevalence errors, attacks, utility, calendar time
    plots.py       the PNG plots
    evaluate.py    one run end to end

Import it as `cehrgpt_tutorials.inspect` (from the repository root or with the package installed);
never put the cehrgpt_tutorials folder itself on sys.path, where `inspect` would shadow the standard
library's module.
"""
