"""Local servers that speak vendors' documented wire formats, for tests and benchmarks."""
