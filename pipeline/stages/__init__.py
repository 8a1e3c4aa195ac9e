"""Thin entry points of the DVC stages that are neither a MONAI bundle nor a `python -m pipeline` command:
the launcher every stage runs through, the teacher / baseline / HDKD report and the data-efficiency
summary. Command line: `python -m pipeline.stages --help`."""
