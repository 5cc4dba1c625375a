"""Independent DKIM verifiers, not dkimpy: Perl's Mail::DKIM and OpenDKIM.

Both ask the fake DNS server (tests/fakes/dns.py) for keys over real DNS:
Mail::DKIM through Net::DNS pointed at 127.0.0.1:PORT (tests/fakes/
dkimverify.pl); OpenDKIM's test mode (``opendkim -t``) through libunbound,
told by its ResolverConfiguration to forward every query to 127.0.0.1@PORT.

Debian 12's Mail::DKIM (1.20230212) knows rsa-sha1 and rsa-sha256 only: it
reports an ed25519-sha256 signature "invalid (unsupported algorithm)"
without asking DNS.  Debian 12's OpenDKIM (2.11.0~beta2) verifies both RSA
and Ed25519 (RFC 8463), so Ed25519 signatures are checked with it.

Each returns a list of (result, domain, selector, algorithm) per signature.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def mail_dkim(message: bytes, dns_port: int) -> list[tuple[str, str, str, str]]:
    if shutil.which("perl") is None or subprocess.run(["perl", "-MMail::DKIM::Verifier", "-e", "1"],
                                                      capture_output=True).returncode != 0:
        pytest.fail("Mail::DKIM is not installed: apt-get install libmail-dkim-perl (the README's test command does)")
    proc = subprocess.run(["perl", str(HERE / "dkimverify.pl"), str(dns_port)], input=message,
                          capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    out = []
    for line in proc.stdout.decode().splitlines():
        m = re.match(r"(\S+) d=(\S*) s=(\S*) a=(\S*) ", line)
        if m:
            out.append((m.group(1), m.group(2), m.group(3), m.group(4)))
    return out


def _signature_fields(message: bytes) -> tuple[list[bytes], bytes]:
    """(each DKIM-Signature field with its folding, the message without them)."""
    head, sep, body = message.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    sigs = [f for f in fields if f.lower().startswith(b"dkim-signature:")]
    rest = [f for f in fields if not f.lower().startswith(b"dkim-signature:")]
    return sigs, b"\r\n".join(rest) + sep + body


def opendkim(message: bytes, dns_port: int, workdir: Path) -> list[tuple[str, str, str, str]]:
    """OpenDKIM reports only the first signature in test mode: give it one at a time.

    Signatures are independent (none covers another DKIM-Signature field),
    so a message with only one of them verifies exactly as the whole would.
    """
    binary = shutil.which("opendkim") or "/usr/sbin/opendkim"
    if not Path(binary).exists():
        pytest.fail("OpenDKIM is not installed: apt-get install opendkim (the README's test command does)")
    workdir.mkdir(parents=True, exist_ok=True)
    unbound = workdir / "unbound.conf"
    unbound.write_text(
        "server:\n  do-not-query-localhost: no\n  module-config: \"iterator\"\n"
        f"forward-zone:\n  name: \".\"\n  forward-addr: 127.0.0.1@{dns_port}\n"
    )
    conf = workdir / "opendkim.conf"
    conf.write_text(f"Mode v\nResolverConfiguration {unbound}\nSyslog no\n")
    sigs, rest = _signature_fields(message)
    results = []
    for n, sig in enumerate(sigs):
        msg = workdir / f"message-{n}.eml"
        msg.write_bytes((sig + b"\r\n" + rest).replace(b"\r\n", b"\n"))  # test mode reads a Unix file
        proc = subprocess.run([binary, "-x", str(conf), "-t", str(msg), "-vv"], capture_output=True, timeout=60)
        text = proc.stdout.decode(errors="replace")
        assert proc.returncode == 0, (text, proc.stderr.decode(errors="replace"))
        m = re.search(r"dkim=(\w+).*?header\.d=(\S+) header\.i=\S+ header\.a=(\S+) header\.s=(\S+)", text)
        assert m, text
        results.append((m.group(1), m.group(2), m.group(4), m.group(3)))
    return results
