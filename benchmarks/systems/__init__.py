"""The systems under test. Peers (other projects' stores) live in ``benchmarks.peers``."""
