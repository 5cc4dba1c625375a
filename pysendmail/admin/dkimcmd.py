"""``pysendmail dkim keygen`` and ``pysendmail dkim check``: make a key, check its DNS record.

Contract:   ``keygen`` writes a new private key (RSA, 2048 bits by default,
            or Ed25519) with mode 0600 and, run as root, owned by the
            daemon's user; it never overwrites a file; it prints the TXT
            record to publish, split in strings of at most 255 octets, and
            the [[dkim]] table to add.  ``check`` looks up
            ``<selector>._domainkey.<domain>`` for every configured key (or
            those of ``--domain``) with dnspython and says, one line per
            key, whether the published record matches it; exit 0 when all
            match, 78 when one is missing or different, 75 when DNS could
            not answer.  The resolver is the system's, or ``--nameserver
            IP[:PORT]`` / ``$PYSENDMAIL_NAMESERVER`` (for tests and for
            checking an authoritative server before the record spreads).
Security:   the key is created O_EXCL|O_NOFOLLOW with mode 0600 before a
            byte of it is written: no window in which others can read it.
See also:   RFC 6376 3.6 (key records), RFC 8463; opendkim-genkey(8) and
            opendkim-testkey(8), which do the same for OpenDKIM.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys

from pysendmail.core import config, durable, errors

# pysendmail.daemon.dkim brings dkimpy, and dkimpy brings dnspython (about
# 14 MB): every pysendmail command builds the parser that names 'dkim',
# the daemon among them, so each function below imports it when it runs.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import dns.resolver

    from pysendmail.daemon import dkim

NAMESERVER_ENV = "PYSENDMAIL_NAMESERVER"


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:  # Any: cli's parser class
    p = sub.add_parser("dkim", help="make a DKIM key (keygen) or check its DNS record (check)")
    dsub = p.add_subparsers(dest="dkim_action", metavar="action", required=True, parser_class=type(p))
    k = dsub.add_parser("keygen", help="write a new private key and print the TXT record to publish")
    k.add_argument("--domain", required=True, help="the signing domain (d=), e.g. example.org")
    k.add_argument("--selector", required=True, help="the selector (s=), e.g. mail or 2026a")
    k.add_argument("--algorithm", default="rsa", choices=["rsa", "ed25519", "rsa-sha256", "ed25519-sha256"])
    k.add_argument("--bits", type=int, help="RSA key size (default 2048; at least 1024)")
    k.add_argument("--output", help="key file (default: dkim/<domain>.<selector>.key beside the config)")
    c = dsub.add_parser("check", help="say whether the published DNS record matches each configured key")
    c.add_argument("--domain", help="check only this domain's keys")
    c.add_argument("--nameserver", help=f"ask this server (IP or IP:PORT) instead of the system's (also ${NAMESERVER_ENV})")


def run(cfg: config.Config, args: argparse.Namespace) -> int:
    if args.dkim_action == "keygen":
        return keygen(cfg, args.domain, args.selector, args.algorithm, args.bits, args.output)
    return check(cfg, args.domain, args.nameserver or os.environ.get(NAMESERVER_ENV) or None)


def check_config(cfg: config.Config) -> None:
    """Load every key as the daemon would (``pysendmail config check``); print warnings."""
    if cfg.dkim:
        from pysendmail.daemon import dkim

        for text in dkim.Signer.from_config(cfg).warnings:
            sys.stderr.write(f"pysendmail: {text}\n")


# ---------------------------------------------------------------- keygen
def _default_output(cfg: config.Config, domain: str, selector: str) -> str:
    base = os.path.dirname(cfg.path) if cfg.path else config.user_dir("config")
    return os.path.join(base, "dkim", f"{domain}.{selector}.key")


def _check_names(domain: str, selector: str) -> str:
    domain = domain.rstrip(".").lower()
    if not domain or "." not in domain or not all(c.isalnum() or c in "-." for c in domain):
        raise errors.UsageError(f"--domain {domain!r} is not a domain name such as example.org")
    if not selector or not all(c.isalnum() or c in "-." for c in selector):
        raise errors.UsageError(f"--selector {selector!r} must be letters, digits, '-' or '.' (e.g. mail or 2026a)")
    return domain


def new_key(algorithm: str, bits: int | None) -> tuple[bytes, str, str | None]:
    """(PKCS#8 PEM of a fresh key, algorithm as configured, warning or None)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    from pysendmail.daemon import dkim

    algorithm = "ed25519-sha256" if algorithm.startswith("ed25519") else "rsa-sha256"
    warning = None
    if algorithm == "ed25519-sha256":
        if bits is not None:
            raise errors.UsageError("--bits is for RSA keys; an Ed25519 key has a fixed size")
        key: object = ed25519.Ed25519PrivateKey.generate()
    else:
        bits = 2048 if bits is None else bits
        if bits < dkim.MIN_BITS or bits > 8192:
            raise errors.UsageError(f"--bits {bits}: receivers ignore RSA keys under 1024 bits (RFC 8301); use 2048")
        if bits < dkim.GOOD_BITS:
            warning = f"warning: {bits} bits is weak; 2048 is the size to use (RFC 8301)"
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    assert isinstance(key, (rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return pem, algorithm, warning


def make_key(domain: str, selector: str, algorithm: str, bits: int | None, path: str,
             owner: tuple[int, int] | None) -> tuple[dkim.Key, str | None]:
    """Generate a key, write it (write_key), and return it as the daemon will load it, with any warning.

    ``pysendmail dkim keygen`` and ``pysendmail setup --dkim`` both come here:
    one way to make a key, one file layout, one record.
    """
    from pysendmail.daemon import dkim

    domain = _check_names(domain, selector)
    pem, algorithm, warning = new_key(algorithm, bits)
    write_key(path, pem, owner)
    private, public, size, _ = dkim.parse_private_key(pem, path, domain, algorithm)
    return dkim.Key(domain, selector, algorithm, path, dkim.DEFAULT_HEADERS, False, private, public, size), warning


def keygen(cfg: config.Config, domain: str, selector: str, algorithm: str, bits: int | None, output: str | None) -> int:
    from pysendmail.daemon import dkim

    domain = _check_names(domain, selector)
    path = os.path.abspath(output or _default_output(cfg, domain, selector))
    made, warning = make_key(domain, selector, algorithm, bits, path, daemon_owner(cfg))
    algorithm, size = made.algorithm, made.bits
    owner = _owner_name(path)
    out = sys.stdout
    if warning:
        sys.stderr.write(f"pysendmail: {warning}\n")
    desc = f"{algorithm}, {size} bits" if algorithm == "rsa-sha256" else algorithm
    out.write(f"wrote {path} ({desc}, mode 0600, owner {owner})\n\n")
    out.write(f"Publish this TXT record at {made.name} (strings of at most 255 octets):\n\n")
    out.write(dkim.zone_line(made) + "\n\n")
    out.write("Then add to the configuration, reload the daemon, and run 'pysendmail dkim check':\n\n")
    out.write(f'[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\nkey_file = "{path}"\n')
    if algorithm != "rsa-sha256":
        out.write(f'algorithm = "{algorithm}"\n')
    return 0


def _owner_name(path: str) -> str:
    import pwd

    uid = os.stat(path).st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def daemon_owner(cfg: config.Config) -> tuple[int, int] | None:
    """Run as root: the daemon user's (uid, gid), who alone must read a key; else None (the caller's own)."""
    if os.geteuid() != 0:
        return None
    from pysendmail.admin.privileges import spool_owner

    uid, gid, _ = spool_owner(cfg)
    return uid, gid


def write_key(path: str, pem: bytes, owner: tuple[int, int] | None) -> None:
    """Create ``path`` holding ``pem``: never over an existing file, mode 0600, owned by ``owner`` when given.

    Written whole under a temporary name (0600 from open() on, before a
    byte is written; dkim.py refuses a key that group or others can read)
    and linked into place (durable.publish, replace=False): a crash never
    leaves a half-written key that keygen would then refuse to replace.
    """
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, 0o755, exist_ok=True)
        if os.path.lexists(path):
            raise FileExistsError(path)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        durable.publish(tmp, path, pem, owner=owner, replace=False)  # a stale tmp of ours is overwritten
    except FileExistsError:
        raise errors.CantCreateError(
            f"{path} already exists: keygen never overwrites a key; choose another --selector or --output"
        ) from None
    except OSError as exc:
        raise errors.from_oserror(exc, f"create the key file {path}") from None


# ---------------------------------------------------------------- check
def resolver(nameserver: str | None) -> dns.resolver.Resolver:
    """The system's resolver, or one that asks only ``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` (dkim check, doctor)."""
    import dns.resolver

    if not nameserver:
        return dns.resolver.Resolver()
    host, port = nameserver, 53
    if nameserver.startswith("["):  # [::1]:5353
        host, _, rest = nameserver[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else 53
    elif nameserver.count(":") == 1:
        host, _, p = nameserver.partition(":")
        if not p.isdigit():
            raise errors.UsageError(f"nameserver {nameserver!r} must be IP or IP:PORT")
        port = int(p)
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise errors.UsageError(f"nameserver {nameserver!r} must be an IP address, optionally with :PORT") from None
    res = dns.resolver.Resolver(configure=False)
    res.nameservers = [host]
    res.port = port
    res.timeout = res.lifetime = 5.0
    return res


def _tags(record: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in record.split(";"):
        if "=" in item:
            k, v = item.split("=", 1)
            tags[k.strip()] = "".join(v.split())
    return tags


def _same_public(published: bytes, key: dkim.Key) -> bool:
    if published == key.public:
        return True
    if key.algorithm == "rsa-sha256":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        try:
            theirs = serialization.load_der_public_key(published)
            ours = serialization.load_der_public_key(key.public)
        except (ValueError, TypeError):
            return False
        if not isinstance(theirs, rsa.RSAPublicKey) or not isinstance(ours, rsa.RSAPublicKey):
            return False
        return theirs.public_numbers() == ours.public_numbers()
    return False


def check_one(key: dkim.Key, res: dns.resolver.Resolver) -> tuple[str, str]:
    """(verdict, sentence): verdict is ok, missing, mismatch or dnserror."""
    import dns.exception
    import dns.resolver

    name = key.name
    try:
        answer = res.resolve(name, "TXT")
    except dns.resolver.NXDOMAIN:
        return "missing", f"MISSING  {name}: no such name in DNS; publish the record below"
    except dns.resolver.NoAnswer:
        return "missing", f"MISSING  {name}: the name exists but has no TXT record; publish the record below"
    except dns.exception.DNSException as exc:
        return "dnserror", f"DNSERROR {name}: the lookup failed ({exc}); try again, or ask another server with --nameserver"
    records = [b"".join(r.strings).decode("ascii", "replace") for r in answer]
    dkims = [r for r in records if _tags(r).get("v", "DKIM1") == "DKIM1" and "p" in _tags(r)]
    if not dkims:
        return "missing", f"MISSING  {name}: its TXT records hold no DKIM key (no p= tag); publish the record below"
    if len(dkims) > 1:
        return "mismatch", f"MISMATCH {name}: {len(dkims)} DKIM records at one name; receivers may pick either: keep one"
    tags = _tags(dkims[0])
    want = "rsa" if key.algorithm == "rsa-sha256" else "ed25519"
    if not tags["p"]:
        return "mismatch", f"MISMATCH {name}: the record is revoked (empty p=); publish the record below"
    if tags.get("k", "rsa").lower() != want:
        return "mismatch", f"MISMATCH {name}: the record says k={tags.get('k', 'rsa')} but {key.path} is an {want} key"
    try:
        published = base64.b64decode(tags["p"], validate=True)
    except ValueError:
        return "mismatch", f"MISMATCH {name}: p= is not valid base64; publish the record below"
    if not _same_public(published, key):
        return "mismatch", f"MISMATCH {name}: the published key is not the public half of {key.path}; publish the record below"
    return "ok", f"OK       {name}: publishes the key of {key.path} ({key.algorithm})"


def check(cfg: config.Config, domain: str | None, nameserver: str | None) -> int:
    from pysendmail.daemon import dkim

    where = cfg.path or "the configuration"
    tables = [t for t in cfg.dkim_keys if domain is None or t.domain.rstrip(".").lower() == domain.rstrip(".").lower()]
    if not tables:
        what = f"for {domain} " if domain else ""
        raise errors.ConfigError(f"no [[dkim]] key {what}in {where}: make one with 'pysendmail dkim keygen'")
    res = resolver(nameserver)
    worst = 0
    for table in tables:
        key, warnings = dkim.load_key(table, where, fast=False)
        for text in warnings:
            sys.stderr.write(f"pysendmail: {text}\n")
        verdict, sentence = check_one(key, res)
        sys.stdout.write(sentence + "\n")
        if verdict in ("missing", "mismatch"):
            sys.stdout.write("         " + dkim.zone_line(key) + "\n")
            worst = errors.EX_CONFIG
        elif verdict == "dnserror" and worst == 0:
            worst = errors.EX_TEMPFAIL
    return worst
