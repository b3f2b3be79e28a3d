"""What the test suites and the benchmarks share: browsers, interop peers, databases, seeders.

This package is the one public home of test infrastructure. `tests/*/` suites and `bench/`
import from here; nothing here imports a suite's fixtures, and nothing in the product
(`policy/`, `relay/`, `signaling/`) imports from here.
"""
