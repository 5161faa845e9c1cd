"""``python -m benchmarks``: run every phase and print the table."""

from benchmarks.runner import main

main()
