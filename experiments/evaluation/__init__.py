"""Evaluation at the paper's scale. Generation: GenEval with a detector (`geneval.py`), FID (`fid.py`), the image
layouts both read and the batch generator writes (`layout.py`), prompt files (`prompt_files.py`), batch
generation (`batch.py`), preset sections (`settings.py`), reports beside the paper's numbers (`report.py`), tiny
hub-format models for tests (`tiny.py`)."""
