"""faeval: evaluate feedback-alignment-style learning rules.

The protocol (D1 scale growth, D2 reference validity, C direction stability,
D3 depth utility), the models it was calibrated on, and the datasets.
"""
from .models import ARCHS, LayeredModel, build_model
from .protocol import FAProtocol, Monitor, Report, Thresholds

__version__ = "0.1.0"

__all__ = ["ARCHS", "LayeredModel", "build_model", "FAProtocol", "Monitor", "Report", "Thresholds",
           "load_dataset", "Dataset", "DATASETS"]


def __getattr__(name):  # data.py is imported lazily: it is optional for protocol-only users
    if name in ("load_dataset", "Dataset", "DATASETS"):
        from . import data
        return getattr(data, name)
    raise AttributeError(f"module 'faeval' has no attribute {name!r}")
