"""The route layer: which account a message leaves through, and each account's state.

Contract:   ``Router`` (router.py) is the relay's Transport: it plans each
            delivery attempt once and delivers through a ``Route``
            (route.py), which owns one account's settings, health (pause,
            hold, down), sending budget (ratelimit.py) and SMTP session.
            ``FileRouteStore`` (state.py) is the only code that reads or
            writes spool/state/routes.json.
See also:   ../routes.py (settings and rules), ../transport/ (the sessions),
            ../qmgr.py (the caller).
"""
