"""Human-facing commands: pysendmail, mailq, newaliases."""
