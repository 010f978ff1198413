"""HTTP layer: the hot classify routes of both protocols, guards, schemas, logs."""
