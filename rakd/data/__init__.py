"""Reasoning tasks: the built-in generator, file loaders, prompt format, and the prep stage."""
