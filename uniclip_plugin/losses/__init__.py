"""Parameter-free training objectives."""
