"""Prefect flows: thin wrappers over the library stages. Nothing imports this package."""
