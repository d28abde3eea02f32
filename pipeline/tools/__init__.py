"""The report stage and the commands around the pipeline: the CI gate (compare), the trend
(history), the sample data (demo)."""
