"""affbench: reproducible preprocessing, training and scoring for facial AU and emotion recognition.

Data flows one way (docs/architecture.md): raw dataset -> ``affbench.pipelines`` -> ``faces`` ->
``shards`` (via ``preparation``) -> ``data`` -> ``training`` (with ``encoders``, scored by ``scoring``)
-> ``reporting``; ``inference`` runs saved models on new faces. This package holds everything
reusable; dataset knowledge lives in ``affbench.pipelines`` and benchmark suites in
``affbench.benchmarks``.
"""

from typing import TYPE_CHECKING

from affbench.errors import AffbenchError
from affbench.runtime.version import __version__

if TYPE_CHECKING:  # imported by __getattr__ when first used
    from affbench.inference.predict import load_model

__all__ = ["AffbenchError", "__version__", "load_model"]


def __getattr__(name: str) -> object:
    # Lazy: ``import affbench`` stays light (no torch) until a model is loaded.
    if name == "load_model":
        from affbench.inference.predict import load_model

        return load_model
    raise AttributeError(f"module 'affbench' has no attribute {name!r}")
