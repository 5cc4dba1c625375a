"""Transports: how a queued message leaves (smtp relay, local maildir)."""
