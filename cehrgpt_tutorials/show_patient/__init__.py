"""`python -m cehrgpt_tutorials.show_patient`: one patient's token sequence beside its OMOP rows.

omop_rows reads the person's rows, patients picks a sequence and dates its tokens, alignment puts each
token beside the row it stands for, render prints it, command is the command line.
"""
