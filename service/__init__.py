"""The HTTP side: settings, signature, ingest, ledger, monitoring, and the `oa-webhooks` CLI."""
