"""Benchmarks that drive servers or worker pools (Table 3, overhead, batching, peers, soak)."""
