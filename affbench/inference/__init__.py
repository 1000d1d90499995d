"""Saved models on new faces: self-describing model bundles, ``affbench predict`` and its
per-frame timelines.

The top layer with reporting: may import every other package of the library.
"""
