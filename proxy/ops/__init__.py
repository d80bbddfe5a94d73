"""Operating Airlock: the run configuration, the data dir, the control API, how the CLI shows the
log, and explaining a decision."""
