"""Dataset pipelines: one module per dataset with its layout, labels and quirks, plus sample data.

Installed as ``affbench.pipelines``. A pipeline knows where a dataset keeps its files and labels;
the work (decoding, detection, alignment, shard writing) is done by the ``affbench`` library.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetSpec:
    name: str  # the name on the command line and in manifests
    module: str  # the pipeline module, relative to this package
    description: str


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("disfa", "disfa", "DISFA: 27 subjects, 12 AU intensities per frame (left camera by default)"),
        DatasetSpec("bp4d", "bp4d", "BP4D-Spontaneous: 41 subjects x 8 tasks, 12 AU occurrences per coded frame (+5 intensities)"),
        DatasetSpec("caer-s", "caer_s", "CAER-S: ~70k TV-show stills, 7 emotion classes, train/test"),
        DatasetSpec("affwild2", "affwild2", "Aff-Wild2 (ABAW3): aligned video frames with AU, EXPR and VA labels"),
    )
}
