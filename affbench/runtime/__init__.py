"""How work runs: atomic files, folder locks, processes, progress, devices and the Dask cluster.

The lowest layer: it imports nothing from affbench but :mod:`affbench.errors`, and every other
package may import it.
"""
