"""The pipeline's decisions between the steps, in Python where they have unit tests; the shell scripts
in scripts/ keep the glue and the official command lines.

    steps.py                   the step runner behind the make targets (make demo, make train, ...)
    shell_settings.py          how a script hands its command line to Python and gets shell code back
    step2_settings.py          step 2: options, Java and Spark checks, shuffle partitions, JIT, the split
    omop_pipeline_settings.py  the official omop_pipeline.sh's options and folders
    prepare_dataset.py         step 4's tokenization, done before the runner and shared by its runs
    profiles.py                the training profiles (tiny, demo, seed) as a typed table
    run_stamp.py               "is this the same run?": the stamp of a training command and its data
    training.py                resume, refuse or set aside a run; unfinished-training markers
    training_options.py        train_cehrgpt.sh's options and launch settings
    synthetic_options.py       generate_synthetic.sh's and restore_synthetic.sh's options
"""
