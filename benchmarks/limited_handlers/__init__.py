"""The benchmark's handler package for the limited drain (OA_HANDLERS_PACKAGE=benchmarks.limited_handlers)."""
