"""Step 7 of the tutorial: use the pretrained model on a prediction task (predict.py is the command).

- cohort.py: the task as an OHDSI cohort defined in SQL, its labels, and each patient's history
  strictly before the index date, written where cehrgpt's tools read it;
- models.py: the four predictors (cehrgpt features + linear probe, cehrgpt fine-tuning, cehrgpt
  zero-shot, and a bag-of-concepts baseline), each wrapping cehrgpt's own command where there is one;
- report.py: bootstrap intervals (cehrgpt.tools.bootstrap_ci), plots, predict_report.md / .json.
"""
