"""Commands around the pipeline: the CI gate (compare), the sample data (demo)."""
