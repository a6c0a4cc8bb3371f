"""Models: the built-in architectures (cifar.py), the factory that builds any of them or a user model, and
storage without pickled code."""
