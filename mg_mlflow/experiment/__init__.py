"""The experiment loop: comparing runs (``compare``) and hyperparameter sweeps (``sweep``)."""
