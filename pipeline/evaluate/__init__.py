"""Evaluation of trained networks.

- ``metrics``: ``classification_report`` (accuracy, balanced accuracy, macro-F1, per-class sensitivity,
  specificity and AUC, macro AUC, ECE, confusion matrix) with patient-level bootstrap CIs.
- ``plots``: confusion matrix, ROC, reliability and training-curve PNGs; DVC plot data.
- ``handler``: ``ClassificationReportHandler`` for MONAI evaluators (files + MLflow).
- ``complexity``: parameter count, forward GFLOPs, CPU latency.

Submodules are imported directly (``from pipeline.evaluate.metrics import classification_report``) so
that plotting code does not pull in MLflow and the handler does not pull in the networks.
"""
