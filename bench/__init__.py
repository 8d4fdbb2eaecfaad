"""Benchmarks (not tests) of the write path, projection, convergence, check, search and memory.

Run ``python -m bench`` (``make bench``); results go to bench/results/.
"""
