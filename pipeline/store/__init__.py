"""The run folder on disk: paths, the manifest, checkpoints and the schemas of what is written."""
