"""Load generation and serving benchmarks (traffic only to the URL given; default 127.0.0.1)."""
