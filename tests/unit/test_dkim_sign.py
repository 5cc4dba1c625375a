"""The signer: OpenSSL's RSA step gives dkimpy's exact signature; which key signs what."""

from __future__ import annotations

import os
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from pysendmail.core import config
from pysendmail.daemon import dkim

MESSAGE = (b"From: A <a@example.org>\r\nTo: b@example.net\r\nSubject: s\r\nDate: Tue, 01 Dec 2026 12:00:00 +0000\r\n"
           b"\r\nbody\r\n")


def write_key(path: Path, key: object) -> Path:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, pem)
    os.close(fd)
    return path


def table(path: Path, domain: str = "example.org", algorithm: str = "rsa-sha256", selector: str = "s",
          subdomains: bool = False) -> dict[str, object]:
    return config.dkim_view({"domain": domain, "selector": selector, "key_file": str(path), "algorithm": algorithm,
                              "headers": None, "subdomains": subdomains})


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dkimpy.time, "time", lambda: 1_800_000_000.0)


def test_openssl_rsa_step_gives_the_same_signature_as_dkimpys_pure_python(tmp_path: Path, frozen_clock: None) -> None:
    assert dkim.FAST_RSA
    path = write_key(tmp_path / "k", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    slow, _ = dkim.load_key(table(path), "test", fast=False)
    pure = dkim.Signer([slow]).sign(MESSAGE)[0]
    fast_key, _ = dkim.load_key(table(path), "test", fast=True)
    try:
        fast = dkim.Signer([fast_key]).sign(MESSAGE)[0]
    finally:
        dkim._FAST_KEYS.clear()
        dkim._PARSED.clear()
    assert fast == pure and b"a=rsa-sha256" in fast
    assert dkimpy.verify(fast + MESSAGE, dnsfunc=lambda name, timeout=5: b"v=DKIM1; k=rsa; p="
                         + __import__("base64").b64encode(slow.public)) is True


def test_keys_for_the_from_domain_and_for_subdomains_only_when_asked(tmp_path: Path) -> None:
    r = write_key(tmp_path / "r", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    e = write_key(tmp_path / "e", ed25519.Ed25519PrivateKey.generate())
    k1, _ = dkim.load_key(table(r, "example.org"), "t")
    k2, _ = dkim.load_key(table(e, "example.org", "ed25519-sha256", "ed"), "t")
    k3, _ = dkim.load_key(table(r, "example.net", subdomains=True), "t")
    signer = dkim.Signer([k1, k2, k3])
    assert [k.algorithm for k in signer.keys_for("example.org")] == ["ed25519-sha256", "rsa-sha256"]
    assert signer.keys_for("news.example.org") == []  # no subdomains = true
    assert signer.keys_for("a.b.example.net") == [k3]
    assert signer.keys_for("net") == [] and signer.keys_for(None) == []
    fields, used = signer.sign(MESSAGE)
    assert used == [k2, k1] and fields.count(b"DKIM-Signature:") == 2
    assert signer.sign(MESSAGE.replace(b"a@example.org", b"a@example.com")) == (b"", [])


@pytest.mark.parametrize("value, domain", [
    (b" A <a@Example.ORG>", "example.org"), (b" a@example.org (comment)", "example.org"),
    (b' "x, y" <a@example.org>, b@example.net', "example.org"), (b" undisclosed:;", None), (b" root", None),
])
def test_from_domain(value: bytes, domain: str | None) -> None:
    assert dkim.from_domain(b"To: x@y.z\r\nFrom:" + value + b"\r\n\r\nbody\r\n") == domain


def test_txt_record_splits_in_255_octet_strings(tmp_path: Path) -> None:
    path = write_key(tmp_path / "k", rsa.generate_private_key(public_exponent=65537, key_size=4096))
    key, _ = dkim.load_key(table(path), "t")
    record = dkim.txt_record(key)
    strings = dkim.split_txt(record)
    assert "".join(strings) == record and all(len(s) == 255 for s in strings[:-1]) and len(strings[-1]) <= 255
    assert dkim.zone_line(key).startswith('s._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; p=')


def test_dual_signing_canonicalises_the_body_once_and_caches_nothing_afterwards(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rsa_key, _ = dkim.load_key(table(write_key(tmp_path / "r", rsa.generate_private_key(
        public_exponent=65537, key_size=2048))), "test")
    ed_key, _ = dkim.load_key(table(write_key(tmp_path / "e", ed25519.Ed25519PrivateKey.generate()),
                                    algorithm="ed25519-sha256", selector="e"), "test")
    runs: list[bytes] = []
    fast = dkim.relaxed_body
    monkeypatch.setattr(dkim, "relaxed_body", lambda body: runs.append(body) or fast(body))
    algorithm = dkimpy.canonicalization.Relaxed
    pure_runs: list[bytes] = []
    pure = algorithm.canonicalize_body
    monkeypatch.setattr(algorithm, "canonicalize_body", staticmethod(lambda body: pure_runs.append(body) or pure(body)))

    fields, used = dkim.Signer([rsa_key, ed_key]).sign(MESSAGE)

    assert len(used) == 2 and len(runs) == 1 and pure_runs == []
    bhs = [line.split(b"bh=", 1)[1].split(b";", 1)[0] for line in fields.split(b"DKIM-Signature:")[1:]]
    assert len(bhs) == 2 and bhs[0] == bhs[1]
    # Outside signing (a verification, say) every call is dkimpy's own, afresh.
    policy = dkimpy.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
    policy.canonicalize_body(b"a  b \r\n")
    policy.canonicalize_body(b"a  b \r\n")
    assert len(runs) == 1 and len(pure_runs) == 2


# ------------------------------------------------------------ relaxed canonicalisation without re.sub
SHAPES = [
    b"", b"\r\n", b"\r\n\r\n\r\n", b"a", b"a\r\n", b"a \r\n", b"a\t\r\n", b" \t \r\n", b"a  b\t\tc \t d\r\n\r\n",
    b"x \r \r\n", b"x\r\r\n", b"x \n y\n\n", b"  lead\r\n  \r\n\t\r\n", b"a" + b" " * 1025 + b"b\r\n",
    b"end with spaces   ", b"tab\tonly", b"\r\n \r\n", b"a\r\n\r\n \r\n", b"\x00 \xff\t\x0b \x0c\r\n",
    b"".join(b"%06d The quick brown fox  jumps\t over the lazy dog. \r\n" % i for i in range(200)),
]


def _random_shapes(n: int = 400) -> list[bytes]:
    import random

    rnd = random.Random(13)
    alphabet = [b" ", b"\t", b"\r", b"\n", b"\r\n", b"a", b"b", b"\x0b", b"\xc3\xa9"]
    return [b"".join(rnd.choice(alphabet) for _ in range(rnd.randrange(0, 40))) for _ in range(n)]


@pytest.mark.parametrize("body", SHAPES + _random_shapes())
def test_relaxed_body_gives_dkimpys_result(body: bytes) -> None:
    assert dkim.relaxed_body(body) == dkimpy.canonicalization.Relaxed.canonicalize_body(body)


@pytest.mark.parametrize("value", SHAPES + _random_shapes())
def test_relaxed_headers_give_dkimpys_result(value: bytes) -> None:
    headers = [(b"Subject ", value), (b"X-Tab\t", b" " + value + b"\r\n"), (b"FROM", value + b"\r\n\tmore\r\n")]
    assert dkim.relaxed_headers(headers) == dkimpy.canonicalization.Relaxed.canonicalize_headers(headers)


@pytest.mark.parametrize("message", [
    MESSAGE,
    b"From: A <a@example.org>\r\nSubject:  two   spaces\t and a tab \r\n\tfolded\r\nTo: b@example.net\r\n\r\n"
    b"line  with \t runs \r\n\r\ntrailing \r\n\r\n\r\n",
    b"From: a@example.org\r\n\r\n",
    b"From: a@example.org\r\nSubject: x\r\n\r\nbare \n LF\t\r\n",  # dkimpy's own parse (ours gives None)
])
def test_fast_canonicalisation_signs_exactly_as_dkimpy(tmp_path: Path, frozen_clock: None,
                                                         monkeypatch: pytest.MonkeyPatch, message: bytes) -> None:
    key, _ = dkim.load_key(table(write_key(tmp_path / "k", ed25519.Ed25519PrivateKey.generate()),
                                 algorithm="ed25519-sha256"), "test")
    signer = dkim.Signer([key])
    fast = signer.sign(message)[0]
    # dkimpy's own canonicalisation: no memo, so the wrappers call it.
    monkeypatch.setattr(dkim, "_canon", __import__("threading").local())
    monkeypatch.setattr(signer, "_sign_with", lambda keys, msg: b"".join(
        dkimpy.DKIM(msg, linesep=b"\r\n").sign(k.selector.encode(), k.domain.encode(), k.private,
                                               signature_algorithm=k.algorithm.encode(),
                                               canonicalize=(b"relaxed", b"relaxed"),
                                               include_headers=[h.encode() for h in _include(msg, k)])
        for k in keys))
    assert fast == signer.sign(message)[0] and b"bh=" in fast


def _include(message: bytes, key: dkim.Key) -> list[str]:
    present: dict[str, int] = {}
    for name, _ in dkimpy.rfc822_parse(message)[0]:
        low = name.decode().lower()
        present[low] = present.get(low, 0) + 1
    return [h for h in key.headers for _ in range(present.get(h, 0) + (1 if h in dkim.OVERSIGN else 0))]


# ------------------------------------------------------------ linear header parse for dkimpy (issue 10)
@pytest.mark.parametrize(
    "message",
    [
        MESSAGE,
        b"From: a@example.org\r\nSubject: start\r\n" + b" x\r\n" * 2000 + b"\r\nbody\r\n",
        b"From: a@example.org\r\nX-Tab:\r\n\tv\r\n\r\n\r\nbody\r\n\r\n",
        b"From x@y Mon Jan  1\r\nFrom: a@example.org\r\n\r\nb\r\n",
        b"From: a@example.org\r\nX: y",  # no body, no final CRLF
        b"From: a@example.org\r\nA:b:c\r\n\r\n",
        b"",
    ],
)
def test_parse_for_dkimpy_gives_dkimpys_result_when_the_message_is_crlf(message: bytes) -> None:
    assert dkim.parse_for_dkimpy(message) == tuple(dkimpy.rfc822_parse(message))


@pytest.mark.parametrize("message", [b" lead: x\r\n\r\n", b"From: a\nSubject: lf\n\nb\n", b"Bad line\r\n\r\n",
                                     b"Subject :x\r\n\r\n"])
def test_parse_for_dkimpy_leaves_it_to_dkimpy_when_the_message_is_unusual(message: bytes) -> None:
    assert dkim.parse_for_dkimpy(message) is None


def test_the_signer_loads_without_dnspython_and_dkimpys_dns_lookup_still_loads_it() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pysendmail.daemon import dkim\n"
        "assert not any(m == 'dns' or m.startswith('dns.') for m in sys.modules), 'dnspython imported'\n"
        "assert 'dkim.dnsplug' not in sys.modules\n"
        "lookup = dkim.dkimpy.load_pk_from_dns.__defaults__[0]\n"
        "assert lookup(b'\\xff') is None\n"  # not UTF-8: dkimpy's real get_txt answers without asking DNS
        "real = sys.modules['dkim.dnsplug']\n"
        "assert 'dns.resolver' in sys.modules and real.__file__.endswith('dnsplug.py')\n"
        "assert dkim.dkimpy.dnsplug is real\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_an_rsa_key_whose_halves_do_not_match_is_refused_at_load(tmp_path: Path) -> None:
    """Keys are loaded without OpenSSL's (slow) validation: one signature checks them instead."""
    good = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    # The private exponent of another key with the same public half: the
    # file parses, but what it signs does not verify.
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_numbers()
    broken = rsa.RSAPrivateNumbers(good.p, good.q, other.d, good.dmp1, other.dmq1, good.iqmp, good.public_numbers)
    key = broken.private_key(unsafe_skip_rsa_key_validation=True)
    path = write_key(tmp_path / "k", key)
    with pytest.raises(dkim.ConfigError, match="is not a valid RSA key"):
        dkim.load_key(table(path), "test")
    path.unlink()
    write_key(path, good.private_key())
    assert dkim.load_key(table(path), "test")[0].bits == 2048
