"""Training: the loop, its losses and augmentation, devices, data-parallel ranks, and the recipes stages train with."""
