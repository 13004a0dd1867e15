"""noether_ref: the NumPy twin of noether_core's compiled kernels, module for module.

``pyx/potentials.pyx`` ↔ ``potentials.py``, ``pyx/rules.pyx`` ↔ ``rules.py``, …  It is the
readable specification of what the kernels compute, the oracle the test suite compares
them against (same arithmetic, same random draws), and the "NumPy loop" baseline of the
benchmarks.  It is deliberately simple and slow; users import ``noether_core``.
"""
