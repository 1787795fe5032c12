"""Datasets: load, validate (file:line errors), digest and format training records."""
