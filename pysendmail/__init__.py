"""pysendmail: a sendmail drop-in that queues durably and relays with DKIM.

Kept empty on purpose: the submission path imports this package first, and
every import here would be paid by each caller of sendmail.
"""

__version__ = "0.1.0"
