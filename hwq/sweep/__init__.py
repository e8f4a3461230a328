"""Sweeps: the spec (values only), one cell's pipeline, the runner, the single-writer store with
its journal, executors (local pool, Dask) and the named grids of the paper's protocol."""
