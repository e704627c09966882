"""faeval: evaluate feedback-alignment-style learning rules.

The protocol (D1 scale growth, D2 reference validity, C direction stability,
D3 depth utility), the models it was calibrated on, the learning rules, the
training loop and run store, and the datasets. It needs torch and numpy (plus
tqdm and cloudpickle, both small) and never imports :mod:`faeval.book`, the
machinery that builds the book (profiles, chapters, claims, figures), which
needs the ``book`` extra.
"""
from .adapt import Layered, layered
from .methods import METHODS, Method, build_method, register_method
from .models import ARCHS, LayeredModel, build_model, register_arch
from .protocol import FAProtocol, Monitor, Report, Thresholds

__version__ = "0.1.0"

__all__ = ["ARCHS", "LayeredModel", "build_model", "register_arch", "layered", "Layered",
           "FAProtocol", "Monitor", "Report", "Thresholds",
           "METHODS", "Method", "build_method", "register_method",
           "load_dataset", "Dataset", "DATASETS", "fit", "Run", "experiment", "load_run", "list_runs", "fit_many",
           "Snapshot"]

_LAZY = {"load_dataset": "data", "Dataset": "data", "DATASETS": "data", "fit": "train", "Run": "train",
         "experiment": "store", "load_run": "store", "list_runs": "store",
         "fit_many": "schedule", "Snapshot": "snapshot"}
_SUBMODULES = ("analysis", "many", "diagnostics", "store", "data", "train", "config", "schedule", "methods", "models",
               "protocol", "adapt", "snapshot", "tap", "errors", "seeds", "usercode")
#: names of the book's machinery, which faeval exported before it moved to faeval.book (an error says where)
_MOVED = ("get_profile", "profile_from", "PROFILES", "Claims", "check_claims", "paper", "plots", "pitfalls",
          "calibration", "profiles", "claims", "experiments", "head", "tables", "discrepancies", "chapters")


def __getattr__(name):  # data, training and the store load lazily: protocol-only users need none of them
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in _SUBMODULES:        # fe.analysis, fe.store, ... without a separate import
        import importlib
        return importlib.import_module(f".{name}", __name__)
    if name in _MOVED:
        raise AttributeError(f"faeval.{name} is part of the book's machinery: `import faeval.book as fb`, then "
                             f"fb.{name} (needs the 'book' extra: pip install 'faeval[book]')")
    raise AttributeError(f"module 'faeval' has no attribute {name!r}")
