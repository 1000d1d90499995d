"""How predictions are scored: metrics, the metric registry, evaluation protocols as data,
task scoring and trivial baselines.

Pure numpy/pandas over arrays and label tables; may import :mod:`affbench.shards` and below, never
training or reporting.
"""
