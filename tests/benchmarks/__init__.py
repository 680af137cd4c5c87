"""Benchmarks of the daemon against references measured in the same run: ``python -m
tests.benchmarks --size smoke`` (see ``__main__``)."""
