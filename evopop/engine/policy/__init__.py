"""The policy's pure decisions: which individuals a generation develops (`specs`), who survives
(`selection`), who trains on under successive halving (`halving`), when a run stops (`stopping`), how
the environment adapts per lineage (`adaptation`). Functions of the records they are given; they
write nothing (the controller records what they decide)."""
