"""Speed and memory benchmarks (`make bench`); figures quoted in the README."""
