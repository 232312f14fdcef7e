"""The evaluation library the scripts are built from: datasets, metrics, records, pictures, transfer, the
flags, the per-batch work and the loop (one concept per module)."""
