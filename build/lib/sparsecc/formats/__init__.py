"""Storage formats: pure numpy pack/unpack, no torch."""
