"""Recipes: real models on data that needs no download, each with a config in `configs/`."""
