"""Recipes: real models on data that needs no download, each with a config in `paxtrain/configs/`
(`paxtrain fit char_rnn` from any directory)."""
