"""Edge validation and packaging: runtimes, gates, manifests. Imports `rakd` only."""
