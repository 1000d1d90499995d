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

__all__ = ["AffbenchError", "__version__"]
