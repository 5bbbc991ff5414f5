"""Data, augmentation, training, evaluation and export for spikeear models."""
