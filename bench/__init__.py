"""Speed and memory benchmarks of every model (`make bench`)."""
