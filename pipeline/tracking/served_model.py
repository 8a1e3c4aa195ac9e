"""The model-from-code file of the logged classifiers: MLflow copies it into each logged model and runs it
at load time (instead of unpickling an object), so loading executes only this project's code."""

from mlflow.models import set_model

from pipeline.tracking.model import ClassifierModel

set_model(ClassifierModel())
