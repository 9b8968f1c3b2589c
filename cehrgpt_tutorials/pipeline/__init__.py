"""The pipeline's decisions between the steps: the make-target step runner (steps.py), step 2's
settings and the tokenized dataset (prepare_dataset.py), training profiles (profiles.py), run stamps
(run_stamp.py), resume and checkpoints (training.py), and the options of the step 4 and 5 scripts
(script_options.py, training_options.py, synthetic_options.py)."""
