"""The container's commands, one module each: `train` (the SageMaker entrypoint), `predict`, `prepare`.

The scripts in `code/` (`train.py`, `predict.py`, `prepare.py`) only call these modules' `main`.
"""
