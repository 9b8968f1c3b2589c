"""Step 6's report, as a small package; `inspect_synthetic.py` is its command line.

    vocabulary.py  the token classifier (Vocabulary) and the token kinds
    sequences.py   reading patient sequences as code arrays
    validity.py    VALIDITY_RULES and `analyse` (every rule and per-sequence fact, vectorized)
    fidelity.py    prevalence, co-occurrence, distributions
    privacy.py     exact copies, nearest-neighbour distances
    inputs.py      the runs, the real train/ and held-out test/ sequences, concept names, restored OMOP
    report.py      what each metric means, printed lines, report.json and report.md
    plots.py       the PNG plots
    evaluate.py    one run end to end

Import it as `cehrgpt_tutorials.inspect` (from the repository root or with the package installed);
never put the cehrgpt_tutorials folder itself on sys.path, where `inspect` would shadow the standard
library's module.
"""
