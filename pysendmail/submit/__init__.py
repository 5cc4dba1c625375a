"""The submission path: runs as the caller, imports only lean modules."""
