"""faeval: evaluate feedback-alignment-style learning rules.

The protocol (D1 scale growth, D2 reference validity, C direction stability,
D3 depth utility), the models it was calibrated on, the learning rules, the
training loop and run store, and the datasets.
"""
from .adapt import Layered, layered
from .methods import METHODS, Method, build_method, register_method
from .models import ARCHS, LayeredModel, build_model, register_arch
from .protocol import FAProtocol, Monitor, Report, Thresholds

__version__ = "0.1.0"

__all__ = ["ARCHS", "LayeredModel", "build_model", "register_arch", "layered", "Layered",
           "FAProtocol", "Monitor", "Report", "Thresholds",
           "METHODS", "Method", "build_method", "register_method",
           "load_dataset", "Dataset", "DATASETS", "fit", "Run", "experiment", "load_run", "list_runs",
           "get_profile", "profile_from", "PROFILES", "Claims", "check_claims", "paper", "fit_many", "Snapshot"]

_LAZY = {"load_dataset": "data", "Dataset": "data", "DATASETS": "data", "fit": "train", "Run": "train",
         "experiment": "store", "load_run": "store", "list_runs": "store",
         "fit_many": "schedule", "get_profile": "profiles", "PROFILES": "profiles", "Claims": "claims",
         "paper": "claims", "check_claims": "chapters", "Snapshot": "snapshot", "profile_from": "profiles"}
_SUBMODULES = ("analysis", "plots", "many", "diagnostics", "pitfalls", "calibration", "store", "profiles", "claims",
               "data", "train", "config", "schedule", "experiments", "methods", "models", "protocol", "adapt",
               "head", "snapshot", "tap", "errors", "tables", "discrepancies", "chapters")


def __getattr__(name):  # data, training and the store load lazily: protocol-only users need none of them
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:        # fe.analysis, fe.plots, ... without a separate import
        import importlib
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'faeval' has no attribute {name!r}")
