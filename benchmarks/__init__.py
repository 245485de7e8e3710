"""ipchannel benchmarks: every scenario beside the baseline it is compared with, measured in the same run.

Run ``python -m benchmarks`` (full, under 10 minutes) or ``python -m benchmarks --quick`` (about a minute).
Benchmarks are not tests: nothing in ``tests/`` asserts on speed.
"""
