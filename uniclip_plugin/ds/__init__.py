"""The DeepSpeed (ZeRO-1/2/3) trainer, its step checkpoints and the export to a plain open_clip checkpoint."""
