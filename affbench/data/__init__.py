"""Prepared datasets as training reads them: label tables, the row-group-aware loader, the
augmentation of one crop and the decoded-pixel cache.

May import :mod:`affbench.shards`, :mod:`affbench.faces` and below.
"""
