"""The handler package of the failover drill (tests/failover_drill.py): one probe that notes each run."""
