"""The benchmark's handler package (OA_HANDLERS_PACKAGE=benchmarks.handlers)."""
