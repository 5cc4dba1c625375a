"""``pysendmail doctor``: the deliverability checks an admin would run by hand, through DNS.

Contract:   ``check(cfg, domain, resolver)`` returns [(level, text)] with
            level OK, WARN or FAIL and, for anything not OK, the fix:
            MX present; exactly one SPF record, including every relay's
            provider include that sends for the domain; each [[dkim]]
            key of the domain published and equal to the key file; DMARC
            present, and aligned with how mail is signed and sent; the
            HELO name resolving, asked through dkimcmd.resolver
            (``--nameserver IP[:PORT]`` for tests and split-horizon DNS).
            ``pysendmail doctor`` exits 78 (EX_CONFIG)
            when a line is FAIL (a record configures the domain wrongly,
            as for 'dkim check'), else 0.  When no DNS server answers at
            all (timeouts, refused or unreachable sockets, no server in
            /etc/resolv.conf), ``check`` raises TempFailure "DNS is
            unreachable ..." (exit 75) instead of judging records it
            could not see: a HELO name is not "unresolvable" then.
Security:   answers come from the network: they are compared, never
            executed; a server's error for one name (SERVFAIL) is a WARN
            naming the query, not a crash.
See also:   RFC 7208 (SPF), RFC 6376 3.6 (DKIM key records), RFC 7489
            (DMARC alignment); pysendmail(8) doctor.
"""

from __future__ import annotations

import dns.exception
import dns.resolver

from pysendmail.admin import dkimcmd
from pysendmail.core import config
from pysendmail.core.errors import ConfigError, TempFailure

OK, WARN, FAIL = "OK", "WARN", "FAIL"


def resolver(nameserver: str | None) -> dns.resolver.Resolver:
    """dkimcmd.resolver, with "no server configured" said as doctor says an unreachable DNS."""
    try:
        return dkimcmd.resolver(nameserver)
    except dns.resolver.NoResolverConfiguration:
        raise TempFailure("DNS is unreachable: /etc/resolv.conf names no server; fix it, or ask a server "
                          "with --nameserver IP[:PORT]") from None


def unreachable(exc: dns.exception.DNSException) -> bool:
    """True when no server sent any reply (a timeout, a refused or unreachable socket).

    A reply that is an error for one name (SERVFAIL, REFUSED) comes from a
    reachable server: dnspython lists each server's reply beside its error.
    """
    if isinstance(exc, dns.exception.Timeout):
        return True
    if isinstance(exc, dns.resolver.NoNameservers):
        tried = exc.kwargs.get("errors") or []
        return all(len(entry) < 5 or entry[4] is None for entry in tried)
    return False


def _servers(res: dns.resolver.Resolver) -> str:
    port = "" if res.port == 53 else f" port {res.port}"
    return ", ".join(str(n) for n in res.nameservers) + port


def _resolve(res: dns.resolver.Resolver, name: str, rdtype: str) -> dns.resolver.Answer:
    """res.resolve, except that no answer from any server ends the whole check (TempFailure, exit 75)."""
    try:
        return res.resolve(name, rdtype)
    except dns.exception.DNSException as exc:
        if unreachable(exc):
            raise TempFailure(f"DNS is unreachable: no answer from {_servers(res)} (asked for {rdtype} {name}); "
                              "check the network and /etc/resolv.conf, or ask another server with "
                              "--nameserver IP[:PORT], then run doctor again") from None
        raise


def _txt(res: dns.resolver.Resolver, name: str) -> list[str] | None:
    """TXT strings at ``name`` (each record's character-strings joined); [] for none; None on failure."""
    try:
        answer = _resolve(res, name, "TXT")
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException:
        return None
    return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]


def _failure(exc: dns.exception.DNSException) -> str:
    """What a reachable server's error was, in words (not dnspython's class name)."""
    if isinstance(exc, dns.resolver.NoNameservers):
        return "the DNS server answered with an error (SERVFAIL or REFUSED)"
    return str(exc) or "no usable answer"


def _tags(record: str) -> dict[str, str]:
    out = {}
    for part in record.split(";"):
        key, _, value = part.strip().partition("=")
        if key:
            out[key.strip().lower()] = "".join(value.split())
    return out


def _relays(cfg: config.Config) -> list[object]:
    if not cfg.relay_configured:
        return []
    from pysendmail.daemon import routes

    return list(routes.resolve(cfg).relays.values())


def default_domain(cfg: config.Config) -> str | None:
    if cfg.dkim_keys:
        return cfg.dkim_keys[0].domain
    for s in _relays(cfg):
        account = getattr(s, "account", None)
        if account:
            return str(account).rpartition("@")[2]
    return None


def check(cfg: config.Config, domain: str, res: dns.resolver.Resolver) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    from pysendmail.daemon import dkim

    # MX: without one, replies and bounces to the domain have nowhere to go.
    try:
        mx = _resolve(res, domain, "MX")
        out.append((OK, f"MX {domain}: {', '.join(sorted(str(r.exchange).rstrip('.') for r in mx))}"))
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        out.append((WARN, f"MX {domain}: none; replies and bounces cannot reach {domain}: publish an MX record"))
    except dns.exception.DNSException as exc:
        out.append((WARN, f"MX {domain}: lookup failed ({_failure(exc)}); run doctor again later"))

    # SPF: exactly one v=spf1 record (RFC 7208 4.5), including each provider that sends for the domain.
    includes = []
    for s in _relays(cfg):
        preset = getattr(s, "preset", None)
        if preset is not None and preset.spf_include:
            includes.append((getattr(s, "name"), preset.spf_include))
    txt = _txt(res, domain)
    if txt is None:
        out.append((WARN, f"SPF {domain}: TXT lookup failed"))
    else:
        spf = [t for t in txt if t.lower().startswith("v=spf1")]
        if not spf:
            need = " ".join(f"include:{i}" for _, i in includes)
            out.append((FAIL, f"SPF {domain}: no SPF record; publish {domain}. TXT \"v=spf1 {need + ' ' if need else ''}~all\""))
        elif len(spf) > 1:
            out.append((FAIL, f"SPF {domain}: {len(spf)} SPF records (receivers treat that as an error); merge them into one"))
        else:
            terms = spf[0].lower().split()
            missing = [(n, i) for n, i in includes if f"include:{i}" not in terms and f"redirect={i}" not in terms]
            for name, inc in missing:
                out.append((FAIL, f"SPF {domain}: does not include {inc} (route {name}); add include:{inc} "
                                  f"before the all term of \"{spf[0]}\""))
            if not missing:
                out.append((OK, f"SPF {domain}: {spf[0]}"))

    # DKIM: each key of this domain published, and the same key.
    signed = False
    for table in cfg.dkim_keys:
        if table.domain.lower() != domain.lower():
            continue
        signed = True
        name = f"{table.selector}._domainkey.{domain}"
        try:
            # The daemon's own reader and checks (dkim.py), and the record
            # 'pysendmail dkim keygen' prints.
            key, _ = dkim.load_key(table, cfg.path or "the configuration", fast=False)
        except ConfigError as exc:
            out.append((FAIL, f"DKIM {name}: {exc}"))
            continue
        # The comparison 'pysendmail dkim check' makes (k=, revoked, one
        # record per name, the key's numbers rather than its base64 text).
        verdict, sentence = dkimcmd.check_one(key, res)
        if verdict == "dnserror":
            out.append((WARN, f"DKIM {name}: TXT lookup failed"))
        elif verdict == "missing":
            out.append((FAIL, f"DKIM {name}: not published; publish {dkim.zone_line(key)}"))
        elif verdict == "mismatch":
            why = sentence.split(": ", 1)[-1].removesuffix("; publish the record below")
            out.append((FAIL, f"DKIM {name}: the published key is not the key in {table.key_file} ({why}); "
                              f"publish {dkim.zone_line(key)} (or a new selector)"))
        else:
            out.append((OK, f"DKIM {name}: published and matches {table.key_file}"))
    if not signed:
        out.append((WARN, f"DKIM {domain}: pysendmail signs nothing for {domain}; 'pysendmail setup --dkim {domain}' "
                          "makes a key (or rely on the provider's own signature)"))

    # DMARC: present, and aligned: our DKIM d= is the From domain when we sign for it.
    found = _txt(res, f"_dmarc.{domain}")
    if found is None:
        out.append((WARN, f"DMARC _dmarc.{domain}: TXT lookup failed"))
    else:
        dmarc = [t for t in found if t.lower().startswith("v=dmarc1")]
        if not dmarc:
            out.append((WARN, f"DMARC _dmarc.{domain}: none; start with _dmarc.{domain}. TXT "
                              f"\"v=DMARC1; p=none; rua=mailto:postmaster@{domain}\""))
        else:
            policy = _tags(dmarc[0]).get("p", "none")
            if policy != "none" and not signed:
                out.append((WARN, f"DMARC _dmarc.{domain}: p={policy} but pysendmail does not sign for {domain}; "
                                  "mail passes only if the provider's SPF or DKIM aligns: add a [[dkim]] key"))
            else:
                out.append((OK, f"DMARC _dmarc.{domain}: p={policy}" + (", aligned by our DKIM signature" if signed else "")))

    # HELO: a name that does not resolve is a spam signal.
    from pysendmail.daemon.qmgr import helo_name

    helo = helo_name(cfg)
    if helo == "localhost" or "." not in helo:
        out.append((FAIL, f"HELO {helo}: not a fully qualified domain name; providers may refuse or score such "
                          "mail as spam: set relay.helo (or host.name) to this host's public name, one with an "
                          "A record"))
        return out
    addresses = []
    failed: dns.exception.DNSException | None = None
    for rdtype in ("A", "AAAA"):
        try:
            addresses += [r.to_text() for r in _resolve(res, helo, rdtype)]
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            pass
        except dns.exception.DNSException as exc:
            failed = exc
    if addresses:
        out.append((OK, f"HELO {helo}: resolves to {', '.join(addresses)}"))
    elif failed is not None:
        out.append((WARN, f"HELO {helo}: lookup failed ({_failure(failed)}); run doctor again later"))
    else:
        out.append((FAIL, f"HELO {helo}: does not resolve; set relay.helo (or host.name) to a name with an A record"))
    return out
