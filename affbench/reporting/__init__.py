"""What a run reports: result records, the tidy export, paper-style tables, published numbers
and plots.

May import :mod:`affbench.scoring` and below; it never trains or runs a model.
"""
