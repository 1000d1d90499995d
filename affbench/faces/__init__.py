"""Faces in frames: video decoding, MTCNN detection, the tracker, 5-point alignment and crops.

May import :mod:`affbench.runtime` and :mod:`affbench.errors` only; it knows nothing of shards,
datasets or training.
"""
