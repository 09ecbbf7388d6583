"""Offline sample data and provider emulators, for the demo, the tests and the benchmarks."""
