"""The daemon's stages; runs as the spool's owner, treats incoming/ as hostile."""
