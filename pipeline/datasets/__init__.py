"""Datasets: readers of the sources (catalog, imagefolder, binary, downloads), splits, and the data artifact."""
