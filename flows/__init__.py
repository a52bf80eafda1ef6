"""Prefect flows: thin wrappers over the registry stages. Only the composition root (`rakd run`) imports it."""
