"""`make bench`: the throughput, latency, loss and memory measurements of issue 6 (see run.py)."""
