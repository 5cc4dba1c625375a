"""``pysendmail oauth login [--relay NAME]``: sign a relay's account in with OAuth2, from a headless server.

Contract:   ``login(cfg, name, out, answer)`` runs the relay's flow
            (daemon/oauth.py): the device authorization grant (RFC 8628)
            where the provider has a device endpoint (Microsoft, Yandex),
            else the browser flow with PKCE (RFC 7636; Google), printing
            exactly what the user must open and type, then stores the
            refresh token in the relay's token file for the daemon.  When
            the route was held for want of a login, it is resumed (in the
            running daemon too, as 'pysendmail route resume' does), so the
            mail waiting for it goes at once.  ``--relay`` may be left out
            when exactly one relay has auth = "oauth2".  Exit 0 when
            stored; 75 when the flow failed or timed out (nothing stored);
            78 for a relay without auth = "oauth2" or a bad oauth_* key;
            64 for an unknown relay.
Security:   run as root, the token file is created with the daemon's
            user as owner, mode 0600, through a temporary name; the token
            is never printed, the code the user types is.  The pasted
            redirect address must carry the state of this attempt.
See also:   pysendmail(8) oauth; daemon/oauth.py; pysendmail.toml(5) oauth_*.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, TextIO

from pysendmail.core import config, errors

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysendmail.daemon.routes import RelaySettings


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("oauth", help="OAuth2 sign-in for a relay with auth = \"oauth2\" (login)")
    osub = p.add_subparsers(dest="oauth_action", metavar="action", required=True, parser_class=type(p))
    lg = osub.add_parser("login", help="run the provider's device or browser (PKCE) flow and store the refresh "
                                       "token for the daemon")
    lg.add_argument("--relay", metavar="NAME", help="the relay ('default' for [relay]); default: the only one "
                                                    "with auth = \"oauth2\"")


def pick_relay(cfg: config.Config, name: str | None) -> tuple[str, RelaySettings]:
    """(name, RelaySettings) of the relay to sign in."""
    from pysendmail.daemon import routes

    if not cfg.relay_configured:
        raise errors.ConfigError("no relay is configured: run 'pysendmail setup --provider NAME --user ADDRESS "
                                 "--oauth' first")
    relays = routes.resolve(cfg).relays
    oauth2 = [n for n, s in relays.items() if str(s.values.get("auth") or "").lower() == "oauth2"]
    if name is None:
        if len(oauth2) != 1:
            which = f"one of {', '.join(oauth2)}" if oauth2 else "a relay"
            raise errors.UsageError(f"name the relay with --relay ({which}); "
                                    + ("" if oauth2 else "none has auth = \"oauth2\""))
        name = oauth2[0]
    if name not in relays:
        raise errors.UsageError(f"no relay named {name!r}; the relays are {', '.join(relays)}")
    s = relays[name]
    if name not in oauth2:
        raise errors.ConfigError(f"{s.where} does not have auth = \"oauth2\", so it needs no OAuth2 login")
    return name, s


def login(cfg: config.Config, name: str | None, out: TextIO, answer: Callable[[], str]) -> int:
    from pysendmail.daemon import oauth

    name, s = pick_relay(cfg, name)
    settings = oauth.settings(s.values, s.where, name, s.provider)
    assert settings is not None
    if settings.flow == "device":
        oauth.login_device(settings, out)
    else:
        oauth.login_pkce(settings, out, answer)
    state = oauth.read_state(settings)
    out.write(f"{s.where}: signed in; refresh token stored in {settings.token_file} "
              f"({oauth.describe(state)})\n")
    out.flush()
    _resume_if_held(cfg, name)
    return 0


def _resume_if_held(cfg: config.Config, name: str) -> None:
    """A route held for want of a login goes again now; a provider's pause is left alone."""
    import os
    import time

    from pysendmail.admin import routecmd
    from pysendmail.core import layout
    from pysendmail.daemon.routing.state import describe, open_store

    spool = layout.Spool(cfg.spool_path)
    if not os.path.isdir(spool.state):
        return
    try:
        state, _, _ = describe(open_store(spool).load().get(name, {}), time.time())
    except (OSError, errors.PysendmailError):
        return
    if state == "held":
        routecmd.cmd_resume(cfg, name)


def run(cfg: config.Config, args: argparse.Namespace) -> int:
    return login(cfg, args.relay, sys.stdout, sys.stdin.readline)
