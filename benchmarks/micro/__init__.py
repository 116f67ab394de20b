"""pytest-benchmark micro-benchmarks (`make bench-micro`): ring, records, store."""
