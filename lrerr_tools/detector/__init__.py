"""LRErr's detector (paper §III.C): `train-det` and what `score` loads to use it."""
