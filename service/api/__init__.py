"""The API: the HTTP side, in the order a webhook takes it.

`listeners` (the public and admin listeners, `oa-webhooks api`) and `processes` (several API
processes on one port) -> `server` (uvicorn's httptools protocol with head and body guards) ->
`app` (the public app) -> `ingest` (read capped body, verify, parse, record, respond), which calls
`signature` (HMAC-SHA256 on the raw bytes) and `envelope` (strict JSON). `state` holds what a
process opens at start-up: the settings and its Redis clients.
"""
