"""Training a LayerComposer LoRA: layered datasets, locking-aware sampling, the trainer."""
