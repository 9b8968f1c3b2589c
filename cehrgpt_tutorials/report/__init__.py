"""Step 6's report; `inspect_synthetic.py` is its command line.

    all_runs.py     every run of a synthetic data folder: inputs checked and read once, a report per run
    evaluate.py     one run end to end
    inputs.py       the runs, the real train/ and held-out test/ sequences, restored OMOP counts; Comparison
    fidelity.py     prevalence (and per-concept errors), co-occurrence, distributions
    cdm_fidelity.py the frequent concepts of the source CDM (exported OMOP tables) vs real and synthetic
    timeline.py     calendar time: visit dates as cehrgpt's converter gives them; censoring at a date
    privacy.py      exact copies, nearest-neighbour distances, cehrgpt's membership and attribute inference
    utility.py      dimension-wise prediction: train on synthetic vs on real, test on held-out real
    metrics.py      what each metric means and how to read it; number formatting
    markdown.py     the printed lines and report.md
    sections.py     report.md's sections on prevalence errors, attacks, utility, calendar time
    plots.py        the PNG plots
"""
