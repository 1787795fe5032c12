"""Developer tools: tiny offline models and sample data for tests, demos and benchmarks."""
