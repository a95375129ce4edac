"""The benchmark's handler package for the ordered drain (OA_HANDLERS_PACKAGE=benchmarks.ordered_handlers)."""
