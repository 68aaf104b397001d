"""The benchmark: clip_benchmark zero-shot classification and retrieval, a CPU linear probe, and the report."""
