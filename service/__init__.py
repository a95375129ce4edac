"""The receiver's service side, by concern.

`api/` is the request path, `store/` the Redis store both sides share, `ops/` what operators use
(the admin listener, the CLI, the console); settings and logs sit here at the top.
"""
