"""The study: every method trained at equal budget on the embedded data, benchmarked, and reported."""
