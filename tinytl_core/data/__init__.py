"""Datasets for short adaptations: procedural primitives, built-in sets, torchvision sets, user folders."""
