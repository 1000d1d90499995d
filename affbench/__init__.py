"""affbench: reproducible preprocessing, training and scoring for facial AU and emotion recognition.

Data flows one way (see DESIGN.md): raw dataset -> pipelines -> video/faces -> shards -> data ->
train -> metrics -> results. This package holds everything reusable; dataset knowledge lives in
``affbench.pipelines`` and benchmark suites in ``affbench.benchmarks``.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("affbench")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from affbench.errors import AffbenchError

__all__ = ["AffbenchError", "__version__", "load_model"]


def __getattr__(name: str):
    # Lazy: ``import affbench`` stays light (no torch) until a model is loaded.
    if name == "load_model":
        from affbench.predict import load_model

        return load_model
    raise AttributeError(f"module 'affbench' has no attribute {name!r}")
