"""Everything that writes to MLflow during a run: run context, params, dataset inputs, metrics, plots."""
