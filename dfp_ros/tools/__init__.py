"""Tools built on the library: the `dfp` command (cli), the demos and the benchmarks.

Nothing in the library (data, learning, runtime, sim, nodes) imports from here; graph.py holds the
helpers every tool uses to run node processes on a private DDS graph.
"""
