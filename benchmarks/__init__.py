"""The benchmarks behind benchmarks/RESULTS.md, run from the repository root as ``python -m benchmarks.<script>``."""
