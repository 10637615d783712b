"""Data sources (decoded, cached uint8 arrays) and batched augmentations."""
