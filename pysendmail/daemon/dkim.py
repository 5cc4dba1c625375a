"""DKIM keys and signing: load and check the [[dkim]] keys, sign the wire bytes.

Contract:   ``Signer.from_config(cfg)`` loads every ``[[dkim]]`` key once
            (per start or SIGHUP reload) and checks it: unreadable, readable
            by group or others, not a private key, the wrong kind for
            ``algorithm``, RSA under 1024 bits are each a ConfigError with
            one sentence (exit 78); RSA under 2048 bits is a warning in
            ``signer.warnings``.  ``signer.sign(message)`` returns the
            DKIM-Signature fields to put before ``message`` (CRLF bytes,
            exactly what goes on the wire): one per key of the From
            domain, or of the nearest parent domain whose table says
            ``subdomains = true``; RSA and Ed25519 together when both are
            configured (RFC 8463 dual signing).  relaxed/relaxed; the
            configured header names are signed as many times as they occur,
            From, To and Subject once more (oversigning: nobody can add a
            second one after us without breaking the signature).
            ``txt_record(key)`` is the DNS TXT value that publishes a key.
            ``parse_for_dkimpy`` is dkimpy's header parse in linear time
            (dkimpy's own is quadratic in the lines of one field).
Security:   private keys never reach a log or an exception text; a key file
            is judged by core/trust.py's rule for secrets (owned by root,
            the daemon's user or us; nobody else may read it, write it or
            a directory above it) and refused rather than used.
Crashes:    nothing on disk; a crash mid-signing leaves the message queued.
See also:   RFC 6376 (DKIM), RFC 8301 (key sizes, no SHA-1), RFC 8463
            (Ed25519); dkimpy, whose header selection and signature field
            we use unchanged, and whose relaxed canonicalisation we
            reproduce (relaxed_body, relaxed_headers) without its regular
            expressions.

Speed: dkimpy computes the RSA private-key operation in pure Python
(about 8 ms for 2048 bits).  When the ``cryptography`` package is there we
keep dkimpy for everything (canonicalisation, header selection, the hash,
the DKIM-Signature field) and hand only that operation, RSASSA-PKCS1-v1_5
over dkimpy's SHA-256 digest, to OpenSSL.  PKCS#1 v1.5 is deterministic, so
both give the same bytes (tests compare them, and an independent verifier
checks the result).  XXX: dkimpy offers no hook for it, so we replace the
two names its sign() looks up in the ``dkim`` module
(RSASSA_PKCS1_v1_5_sign, parse_pem_private_key) with wrappers that fall
back to dkimpy's own functions for any key not registered here; a dkimpy
without those names is detected and signs at its own speed.
dkimpy's relaxed canonicalisation runs one re.sub match per run of white
space: for a 10 KB text that cost as much as the RSA step.  While we sign,
``relaxed_body`` and ``relaxed_headers`` do the same with bytes methods
(the signature is byte for byte dkimpy's: tests compare them); a signature
now costs about the RSA step.
"""

from __future__ import annotations

import base64
import importlib
import os
import pwd
import stat
import sys
import threading
import types
from dataclasses import dataclass, field
from typing import Any

from pysendmail.core import config, log, rfc5322, sections, trust
from pysendmail.core.errors import ConfigError


def _import_dkimpy() -> Any:
    """dkimpy, without the dnspython it imports for verifying (about 40 ms of every daemon start, and its memory).

    dkimpy's __init__ runs ``from dkim.dnsplug import get_txt`` to look
    keys up when it verifies; the daemon only signs.  While dkimpy loads,
    a stand-in ``dkim.dnsplug`` sits in sys.modules; its get_txt (which
    dkimpy keeps as its default DNS function) loads the real module on its
    first call, and nothing else ever sees the stand-in, so a verification
    that uses DNS in this process still works.
    """
    if "dkim" in sys.modules or "dkim.dnsplug" in sys.modules:
        import dkim

        return dkim
    stand_in = types.ModuleType("dkim.dnsplug")

    def get_txt(name: bytes, timeout: float = 5) -> Any:
        if sys.modules.get("dkim.dnsplug") is stand_in:
            del sys.modules["dkim.dnsplug"]
        return importlib.import_module("dkim.dnsplug").get_txt(name, timeout=timeout)

    stand_in.get_txt = get_txt  # type: ignore[attr-defined]
    sys.modules["dkim.dnsplug"] = stand_in
    try:
        import dkim
    finally:
        if sys.modules.get("dkim.dnsplug") is stand_in:
            del sys.modules["dkim.dnsplug"]
    return dkim


dkimpy = _import_dkimpy()

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
DEFAULT_HEADERS = (
    "from", "to", "cc", "subject", "date", "message-id", "reply-to", "mime-version",
    "content-type", "content-transfer-encoding", "list-unsubscribe", "list-unsubscribe-post",
)
OVERSIGN = ("from", "to", "subject")
MIN_BITS, GOOD_BITS = 1024, 2048

# The fast path's registry: RSA modulus -> cryptography key; PEM bytes ->
# dkimpy's parsed form (dkimpy parses the PEM on every sign otherwise).
_FAST_KEYS: dict[int, Any] = {}
_PARSED: dict[bytes, Any] = {}


def _install_fast_rsa() -> bool:
    """Wrap dkimpy's RSA step and PEM parser (see the module docstring)."""
    try:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, utils
    except ImportError:
        return False
    pure_sign = getattr(dkimpy, "RSASSA_PKCS1_v1_5_sign", None)
    pure_parse = getattr(dkimpy, "parse_pem_private_key", None)
    if pure_sign is None or pure_parse is None:
        return False
    if getattr(pure_sign, "_pysendmail", False):
        return True

    def fast_sign(hash: Any, private_key: Any) -> Any:
        key = _FAST_KEYS.get(int(private_key.get("modulus") or 0)) if isinstance(private_key, dict) else None
        if key is None or getattr(hash, "name", "") != "sha256":
            return pure_sign(hash, private_key)
        return key.sign(hash.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))

    def cached_parse(data: bytes) -> Any:
        parsed = _PARSED.get(data)
        return parsed if parsed is not None else pure_parse(data)

    fast_sign._pysendmail = True  # type: ignore[attr-defined]
    dkimpy.RSASSA_PKCS1_v1_5_sign = fast_sign
    dkimpy.parse_pem_private_key = cached_parse
    return True


FAST_RSA = _install_fast_rsa()


def relaxed_body(body: bytes) -> bytes:
    """dkimpy's relaxed body canonicalisation (RFC 6376 3.4.4), with bytes methods instead of re.sub.

    dkimpy rewrites every run of white space with a regular expression:
    one match, and one Python-level replacement, per run, which for a
    10 KB text is about as much CPU as the RSA signature itself.  Here a
    run becomes one space by halving (a tab is a space first), then the
    one space left before each CRLF goes; that is dkimpy's result
    (tests/unit/test_dkim_sign.py compares both on many shapes).  Linear
    in the body times the log of its longest run.  The end of the body is
    dkimpy's own code.
    """
    body = _one_space(body).replace(b" \r\n", b"\r\n")
    return _correct_empty_body(_strip_trailing_lines(body))  # type: ignore[no-any-return]


def _one_space(data: bytes) -> bytes:
    """Every run of spaces and tabs as one space: a tab becomes a space, then runs halve."""
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    while b"  " in data:
        data = data.replace(b"  ", b" ")
    return data


def relaxed_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """dkimpy's relaxed header canonicalisation (RFC 6376 3.4.2), without regular expressions.

    Unfolding removes CRLF and lone LF, as dkimpy's ``\\r?\\n`` does; runs of
    white space become one space; the value is stripped; the name is
    lower-cased and stripped at its end.
    """
    out = []
    for name, value in headers:
        value = _one_space(value.replace(b"\r\n", b"").replace(b"\n", b""))
        out.append((name.lower().rstrip(), value.strip() + b"\r\n"))
    return out


# While _sign_with runs (and only then: verification and other callers get
# dkimpy's own code), relaxed canonicalisation is ours (above), and the
# body's result is kept for that body object and algorithm: dual signing
# (RSA + Ed25519) would otherwise canonicalise the same body twice.
_canon = threading.local()
_canonicalization = getattr(dkimpy, "canonicalization", None)
_RELAXED = getattr(_canonicalization, "Relaxed", None)
_strip_trailing_lines: Any = getattr(_canonicalization, "strip_trailing_lines", None)
_correct_empty_body: Any = getattr(_canonicalization, "correct_empty_body", None)


def _install_fast_canon() -> None:
    policy = getattr(dkimpy, "CanonicalizationPolicy", None)
    pure_body = getattr(policy, "canonicalize_body", None)
    pure_headers = getattr(policy, "canonicalize_headers", None)
    if policy is None or pure_body is None or pure_headers is None or getattr(pure_body, "_pysendmail", False):
        return
    # A dkimpy without these names canonicalises at its own speed (still cached).
    fast = _RELAXED is not None and _strip_trailing_lines is not None and _correct_empty_body is not None

    def canon_body(self: Any, body: bytes) -> Any:
        memo = getattr(_canon, "memo", None)
        if memo is None:
            return pure_body(self, body)
        key = (id(body), self.body_algorithm)
        if key not in memo:
            # body kept alive: its id stays unique
            memo[key] = (body, relaxed_body(body) if fast and self.body_algorithm is _RELAXED else pure_body(self, body))
        return memo[key][1]

    def canon_headers(self: Any, headers: Any) -> Any:
        if fast and self.header_algorithm is _RELAXED and getattr(_canon, "memo", None) is not None:
            return relaxed_headers(headers)
        return pure_headers(self, headers)

    canon_body._pysendmail = True  # type: ignore[attr-defined]
    policy.canonicalize_body = canon_body
    policy.canonicalize_headers = canon_headers


_install_fast_canon()


def parse_for_dkimpy(message: bytes) -> tuple[list[list[bytes]], bytes] | None:
    """``dkimpy.rfc822_parse(message)`` computed in linear time; None where we would differ.

    dkimpy appends each continuation line to its field's value (a copy of
    the whole value per line: quadratic in the lines of one field, 17 s for
    a 2 MB folded Subject).  This gives the same (headers, body) for a CRLF
    message by collecting each field's lines and joining them once; for
    anything else (a bare LF, a first line that is a continuation, a line
    dkimpy would refuse) it returns None and dkimpy parses as before.
    tests/unit/test_dkim_sign.py compares both on many shapes.
    """
    if b"\n" in message.replace(b"\r\n", b""):
        return None
    lines = message.split(b"\r\n")
    headers: list[list[bytes]] = []
    pieces: list[bytes] = []
    name = b""
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line:
            i += 1
            break
        if line[0] in (9, 32):
            if not pieces:
                return None
            pieces += [line, b"\r\n"]
        else:
            colon = line.find(b":")
            if colon <= 0 or not all(33 <= c <= 126 for c in line[:colon]):
                if line.startswith(b"From "):
                    i += 1
                    continue
                return None
            if pieces:
                headers.append([name, b"".join(pieces)])
            name = line[:colon]
            pieces = [line[colon + 1 :], b"\r\n"]
        i += 1
    if pieces:
        headers.append([name, b"".join(pieces)])
    return headers, b"\r\n".join(lines[i:])


@dataclass(frozen=True)
class Key:
    domain: str
    selector: str
    algorithm: str  # rsa-sha256 | ed25519-sha256
    path: str
    headers: tuple[str, ...]
    subdomains: bool
    private: bytes = field(repr=False)  # what dkimpy's sign() takes: PEM (RSA) or base64 seed (Ed25519)
    public: bytes  # DER SubjectPublicKeyInfo (RSA) or the raw 32 octets (Ed25519)
    bits: int

    @property
    def name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}"


def txt_record(key: Key) -> str:
    """The TXT value to publish at ``key.name`` (RFC 6376 3.6.1, RFC 8463 4)."""
    kind = "rsa" if key.algorithm == "rsa-sha256" else "ed25519"
    return f"v=DKIM1; k={kind}; p={base64.b64encode(key.public).decode('ascii')}"


def split_txt(value: str, size: int = 255) -> list[str]:
    """A TXT value as the character-strings of at most 255 octets DNS needs (RFC 1035 3.3)."""
    raw = value.encode("ascii")
    return [raw[i : i + size].decode("ascii") for i in range(0, len(raw), size)]


def zone_line(key: Key) -> str:
    """``name IN TXT ( "..." "..." )``: the record as a zone file (or a DNS panel) takes it."""
    strings = " ".join(f'"{s}"' for s in split_txt(txt_record(key)))
    return f"{key.name}. IN TXT ( {strings} )"


def _who() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def read_private_key(path: str, domain: str, algorithm: str) -> tuple[bytes, bytes, int, Any]:
    """(dkimpy form, public octets, bits, cryptography key or None); ConfigError says what is wrong."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read(1 << 20)
    except OSError as exc:
        raise ConfigError(
            f"DKIM key {path} for {domain} cannot be read ({exc.strerror}): "
            f"make it readable by the daemon's user ({_who()}) and nobody else"
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"DKIM key {path} for {domain} is not a regular file: point dkim.key_file at the key itself")
    problem = trust.secret(st, path, f"DKIM key {{}} for {domain}")
    if problem:
        # The one rule for secrets (core/trust.py): a key someone else can
        # read lets them sign as the domain; one they can write, choose it.
        raise ConfigError(problem)
    return parse_private_key(data, path, domain, algorithm)


def parse_private_key(data: bytes, path: str, domain: str, algorithm: str) -> tuple[bytes, bytes, int, Any]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    what = f"DKIM key {path} for {domain}"
    key: Any
    if b"-----BEGIN" in data:
        if b"PUBLIC KEY-----" in data and b"PRIVATE KEY-----" not in data:
            raise ConfigError(f"{what} holds a public key: dkim.key_file must name the private key")
        if b"ENCRYPTED" in data:
            raise ConfigError(f"{what} is protected by a passphrase the daemon cannot type: store it unencrypted, mode 0600")
        try:
            # OpenSSL's RSA key validation (primality of p and q and the
            # rest) is 30-50 ms of every daemon start for a 2048-bit key.
            # What matters here, that the private half signs what the
            # public half verifies, is checked below with one signature.
            try:
                key = serialization.load_pem_private_key(data, password=None, unsafe_skip_rsa_key_validation=True)
            except TypeError:  # cryptography < 39 (Debian 12 has 38) has no such option: it validates
                key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigError(
                f"{what} is not a private key in PEM form: make one with 'pysendmail dkim keygen'"
            ) from None
    else:
        # dkimpy's dknewkey writes an Ed25519 key as its 32-octet seed in base64.
        try:
            seed = base64.b64decode(data.strip(), validate=True)
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise ConfigError(f"{what} is not a private key in PEM form: make one with 'pysendmail dkim keygen'")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    if isinstance(key, rsa.RSAPrivateKey):
        if algorithm != "rsa-sha256":
            raise ConfigError(f'{what} is an RSA key but dkim.algorithm is {algorithm}: set algorithm = "rsa-sha256"')
        bits = key.key_size
        if not _rsa_consistent(key):
            raise ConfigError(f"{what} is not a valid RSA key (its signatures do not verify with its own public key): "
                              "make a new one with 'pysendmail dkim keygen'")
        if bits < MIN_BITS:
            raise ConfigError(
                f"{what} has only {bits} bits, and receivers ignore RSA keys under {MIN_BITS} bits (RFC 8301): "
                "make a 2048-bit key with 'pysendmail dkim keygen'"
            )
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem, public, bits, key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        if algorithm != "ed25519-sha256":
            raise ConfigError(
                f'{what} is an Ed25519 key but dkim.algorithm is {algorithm}: set algorithm = "ed25519-sha256"'
            )
        seed = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return base64.b64encode(seed), public, 256, None
    raise ConfigError(f"{what} is a {type(key).__name__.lstrip('_')}, but DKIM signs with RSA or Ed25519 keys only")


def _rsa_consistent(key: Any) -> bool:
    """True when ``key`` signs what its public key verifies (a key loaded without OpenSSL's validation)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    probe = b"pysendmail DKIM key check"
    try:
        signature = key.sign(probe, padding.PKCS1v15(), hashes.SHA256())
        key.public_key().verify(signature, probe, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def load_key(table: sections.DkimConfig, where: str, fast: bool = True) -> tuple[Key, list[str]]:
    """One [[dkim]] table's key, checked; (key, warnings)."""
    domain = table.domain.rstrip(".").lower()
    algorithm = table.algorithm or "rsa-sha256"
    path = table.key_file
    headers = tuple(h.lower() for h in table.headers) if table.headers is not None else DEFAULT_HEADERS
    if "from" not in headers:
        raise ConfigError(f"dkim.headers for {domain} in {where} must include From (RFC 6376 5.4)")
    refused = sorted(set(headers) & {"dkim-signature", "received", "return-path", "bcc", "resent-bcc"})
    if refused:
        raise ConfigError(f"dkim.headers for {domain} in {where} must not name {', '.join(refused)}: "
                          "those change in transit or must not be signed")
    private, public, bits, fast_key = read_private_key(path, domain, algorithm)
    key = Key(domain, table.selector, algorithm, path, headers, table.subdomains, private, public, bits)
    warnings = []
    if algorithm == "rsa-sha256" and bits < GOOD_BITS:
        warnings.append(
            f"warning: DKIM key {path} for {domain} has {bits} bits; 2048 is the size to use (RFC 8301): "
            "make a new key with 'pysendmail dkim keygen' and publish it under a new selector"
        )
    if fast and fast_key is not None and FAST_RSA:
        _FAST_KEYS[fast_key.private_numbers().public_numbers.n] = fast_key
        _PARSED[private] = dkimpy.crypto.parse_pem_private_key(private)
    return key, warnings


def from_domain(message: bytes, header_from: str | None = None) -> str | None:
    """The domain of the (first) From address, lower case, or None; ``header_from``: already parsed."""
    addr = header_from if header_from is not None else rfc5322.first_from(message)
    if addr and "@" in addr:
        return addr.rsplit("@", 1)[1].rstrip(">").strip("[]").lower()
    return None


class Signer:
    def __init__(self, keys: list[Key], warnings: list[str] | None = None) -> None:
        self.keys = keys
        self.warnings = warnings or []
        self.by_domain: dict[str, list[Key]] = {}
        for key in keys:
            self.by_domain.setdefault(key.domain, []).append(key)
        for group in self.by_domain.values():
            # Ed25519 first, RSA last: a verifier that stops at the first
            # signature it understands still finds the RSA one.
            group.sort(key=lambda k: k.algorithm != "ed25519-sha256")

    @classmethod
    def from_config(cls, cfg: config.Config, fast: bool = True) -> Signer:
        where = cfg.path or "the configuration"
        keys: list[Key] = []
        warnings: list[str] = []
        seen: set[tuple[str, str]] = set()
        for table in cfg.dkim_keys:
            key, warns = load_key(table, where, fast)
            if (key.domain, key.algorithm) in seen:
                raise ConfigError(f"two [[dkim]] tables in {where} give {key.domain} an {key.algorithm} key: keep one")
            seen.add((key.domain, key.algorithm))
            keys.append(key)
            warnings += warns
        signer = cls(keys, warnings)
        for key in keys:
            signer.self_test(key)
        return signer

    def self_test(self, key: Key) -> None:
        """Sign a small message with ``key`` now, so a key dkimpy refuses fails at start, not per message."""
        probe = f"From: probe@{key.domain}\r\nSubject: probe\r\n\r\nprobe\r\n".encode()
        try:
            self._sign_with([key], probe)
        except dkimpy.DKIMException as exc:
            raise ConfigError(f"DKIM key {key.path} for {key.domain} cannot sign: {exc}") from None

    def keys_for(self, domain: str | None) -> list[Key]:
        """The keys of ``domain``, else of its nearest parent that signs for subdomains."""
        if not domain:
            return []
        if domain in self.by_domain:
            return self.by_domain[domain]
        labels = domain.split(".")
        for i in range(1, len(labels) - 1):
            parent = ".".join(labels[i:])
            keys = [k for k in self.by_domain.get(parent, []) if k.subdomains]
            if keys:
                return keys
        return []

    def sign(self, message: bytes, *, header_from: str | None = None) -> tuple[bytes, list[Key]]:
        """(DKIM-Signature fields to prepend, keys used); (b"", []) when no key fits."""
        keys = self.keys_for(from_domain(message, header_from))
        if not keys:
            return b"", []
        return self._sign_with(keys, message), keys

    def _sign_with(self, keys: list[Key], message: bytes) -> bytes:
        parsed = parse_for_dkimpy(message)
        if parsed is None:
            signer = dkimpy.DKIM(message, linesep=b"\r\n")
        else:
            # XXX: sets the two attributes dkimpy's set_message fills
            # (headers, body); a dkimpy that renames them fails the
            # signature tests, not silently.
            signer = dkimpy.DKIM(None, linesep=b"\r\n")
            signer.headers, signer.body = parsed
        present: dict[str, int] = {}
        for name, _ in signer.headers:
            low = name.decode("ascii", "replace").lower()
            present[low] = present.get(low, 0) + 1
        out = []
        _canon.memo = {}
        try:
            for key in keys:
                include = []
                for h in key.headers:
                    include += [h] * (present.get(h, 0) + (1 if h in OVERSIGN else 0))
                out.append(
                    signer.sign(
                        key.selector.encode(), key.domain.encode(), key.private,
                        signature_algorithm=key.algorithm.encode(), canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=[h.encode() for h in include],
                    )
                )
        finally:
            _canon.memo = None
        return b"".join(out)


def log_warnings(signer: Signer) -> None:
    for text in signer.warnings:
        log.log(text)
