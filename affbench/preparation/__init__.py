"""The engine of ``affbench prepare``: units of work run resumably on joblib or Dask workers,
and faces followed through frame sequences into shard rows.

Used by the dataset pipelines; may import :mod:`affbench.shards`, :mod:`affbench.faces` and below.
"""
