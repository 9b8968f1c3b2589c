"""The pipeline's decisions between the steps: the make-target step runner (steps.py), step 2's
settings and the tokenized dataset (prepare_dataset.py), training profiles, run stamps and checkpoints
(training.py)."""
