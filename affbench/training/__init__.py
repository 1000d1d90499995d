"""Training one model: the tasks it learns, fit, the step, losses, settings, checkpoints, DDP,
evaluation on rows and TensorBoard scalars.

May import :mod:`affbench.encoders`, :mod:`affbench.scoring`, :mod:`affbench.data` and below.
"""
