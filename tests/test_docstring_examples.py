"""Every ``Examples`` section in the library's docstrings runs and prints what it says.

The examples are part of the documented API (numpydoc, scikit-learn style); a stale one misleads
the reader who copies it.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import affbench

# The measuring tools are scripts with heavy imports and no examples.
_SKIPPED_PREFIXES = ("affbench.benchmarks.speed", "affbench.benchmarks.quality")


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(affbench.__path__, "affbench."):
        if info.name.startswith(_SKIPPED_PREFIXES):
            continue
        module = importlib.import_module(info.name)
        if any(test.examples for test in doctest.DocTestFinder().find(module)):
            names.append(info.name)
    return names


MODULES = _modules_with_examples()


def test_the_documented_modules_have_examples():
    # The metrics and the shard format are the API people call first; they must stay exemplified.
    assert {"affbench.scoring.metrics", "affbench.shards.writer", "affbench.shards.schema"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output above)"
