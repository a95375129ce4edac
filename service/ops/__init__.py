"""What operators use, on the admin listener and at the command line.

`admin` (the admin listener's app: `/metrics`, `/readyz` and the console), `metrics` (the
Prometheus exposition), `monitoring` (liveness and readiness), `cli/` (the `oa-webhooks`
command) and `console/` (the operator console).
"""
