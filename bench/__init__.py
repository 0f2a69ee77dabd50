"""Benchmarks of the real `gateway run` process against real servers (`make bench`)."""
