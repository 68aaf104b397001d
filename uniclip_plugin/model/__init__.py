"""Plugin model classes (open_clip ``CLIP`` subclasses, selected by a marker key in the model config)."""
