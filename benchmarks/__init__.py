"""wirestate benchmarks: wirestate against its peers, measured in one run.

Run ``python -m benchmarks`` (``--quick`` for a short run); see README.md here.
"""
