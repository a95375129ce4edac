"""The Redis store that the API, the worker and the operator commands share.

`ledger` (one hash per event, written with its job in one script) and `queue` (arq's keys and the
Redis clients); `batching` (many callers' scripts in one round trip); the event history's queries
(`history`, with `summary` and `records`), `replay`, `dlq`, `held`, `trim` and `stats`; and the Lua
scripts in `lua/`, one file each, loaded by `scripts`.
"""
