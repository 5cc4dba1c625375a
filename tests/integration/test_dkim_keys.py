"""DKIM keys as an administrator meets them: keygen, dkim check, and the checks at start."""

from __future__ import annotations

import base64
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Env, ensure_user, needs_root, write_config
from tests.fakes.dns import DnsServer


@pytest.fixture
def dns():
    with DnsServer() as server:
        yield server


def keygen(e: Env, *args: str) -> subprocess.CompletedProcess[bytes]:
    return e.run("pysendmail", "dkim", "keygen", *args)


def record_of(proc: subprocess.CompletedProcess[bytes]) -> tuple[str, list[str]]:
    line = next(x for x in proc.stdout.decode().splitlines() if " IN TXT " in x)
    return line.split(".", 1)[0], re.findall(r'"([^"]*)"', line)


def add_table(e: Env, path: Path, domain: str = "example.org", selector: str = "mail",
              algorithm: str = "rsa-sha256") -> None:
    with open(e.config, "a") as fh:
        fh.write(f'\n[[dkim]]\ndomain = "{domain}"\nselector = "{selector}"\nkey_file = "{path}"\n'
                 f'algorithm = "{algorithm}"\n')


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


# ---------------------------------------------------------------- keygen
def test_keygen_rsa_writes_a_0600_pkcs8_key_and_a_record_in_255_octet_strings(env: Env) -> None:
    out = env.root / "k" / "example.org.mail.key"
    proc = keygen(env, "--domain", "example.org", "--selector", "mail", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out.stat().st_mode & 0o777) == 0o600
    assert out.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    selector, strings = record_of(proc)
    assert selector == "mail"
    assert len(strings) == 2 and all(len(s) <= 255 for s in strings) and len(strings[0]) == 255
    record = "".join(strings)
    assert record.startswith("v=DKIM1; k=rsa; p=")
    # The public half, computed by OpenSSL, is what the record publishes.
    pub = subprocess.run(["openssl", "pkey", "-in", str(out), "-pubout", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    assert record.split("p=", 1)[1] == base64.b64encode(pub).decode()
    bits = subprocess.run(["openssl", "pkey", "-in", str(out), "-noout", "-text"], capture_output=True).stdout
    assert b"2048 bit" in bits
    assert f'key_file = "{out}"' in proc.stdout.decode()


def test_keygen_ed25519_record_holds_the_raw_public_key(env: Env) -> None:
    out = env.root / "ed.key"
    proc = keygen(env, "--domain", "example.org", "--selector", "ed", "--algorithm", "ed25519", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    _, strings = record_of(proc)
    assert len(strings) == 1
    p = base64.b64decode("".join(strings).split("p=", 1)[1])
    der = subprocess.run(["openssl", "pkey", "-in", str(out), "-pubout", "-outform", "DER"],
                         capture_output=True, check=True).stdout
    assert len(p) == 32 and der.endswith(p)
    assert 'algorithm = "ed25519-sha256"' in proc.stdout.decode()


def test_keygen_bits_and_the_default_path_beside_the_config(env: Env) -> None:
    proc = keygen(env, "--domain", "example.org", "--selector", "big", "--bits", "3072")
    assert proc.returncode == 0, proc.stderr
    path = env.config.parent / "dkim" / "example.org.big.key"
    assert path.is_file()
    assert b"3072 bit" in subprocess.run(["openssl", "pkey", "-in", str(path), "-noout", "-text"],
                                         capture_output=True).stdout
    _, strings = record_of(proc)
    assert len(strings) == 3 and all(len(s) == 255 for s in strings[:2]) and len(strings[2]) <= 255


def test_keygen_refuses_to_overwrite_and_refuses_bad_sizes(env: Env) -> None:
    out = env.root / "k.key"
    assert keygen(env, "--domain", "example.org", "--selector", "a", "--output", str(out)).returncode == 0
    before = out.read_bytes()
    again = keygen(env, "--domain", "example.org", "--selector", "a", "--output", str(out))
    assert again.returncode == 73 and b"already exists" in again.stderr and out.read_bytes() == before
    small = keygen(env, "--domain", "example.org", "--selector", "b", "--bits", "512", "--output", str(env.root / "b"))
    assert small.returncode == 64 and b"under 1024 bits" in small.stderr
    ed = keygen(env, "--domain", "example.org", "--selector", "c", "--algorithm", "ed25519", "--bits", "2048")
    assert ed.returncode == 64 and b"--bits is for RSA" in ed.stderr
    weak = keygen(env, "--domain", "example.org", "--selector", "d", "--bits", "1024", "--output", str(env.root / "d"))
    assert weak.returncode == 0 and b"warning: 1024 bits is weak" in weak.stderr


@needs_root
def test_keygen_as_root_gives_the_key_to_the_daemon_user(tmp_path: Path) -> None:
    uid = ensure_user("pysendmail-dkt")
    e = write_config(tmp_path)
    # spool.user names the daemon's user.
    e.config.write_text(e.config.read_text().replace("[spool]\n", '[spool]\nuser = "pysendmail-dkt"\n', 1))
    out = tmp_path / "k.key"
    proc = keygen(e, "--domain", "example.org", "--selector", "s", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    st = out.stat()
    assert st.st_uid == uid and (st.st_mode & 0o777) == 0o600
    assert b"owner pysendmail-dkt" in proc.stdout


# ---------------------------------------------------------------- dkim check
def test_dkim_check_says_match_mismatch_and_missing(env: Env, dns: DnsServer) -> None:
    good = env.root / "good.key"
    _, strings = record_of(keygen(env, "--domain", "example.org", "--selector", "mail", "--output", str(good)))
    other = env.root / "other.key"
    _, other_strings = record_of(keygen(env, "--domain", "example.net", "--selector", "x", "--output", str(other)))
    add_table(env, good)
    ns = f"127.0.0.1:{dns.port}"

    missing = env.run("pysendmail", "dkim", "check", "--nameserver", ns)
    assert missing.returncode == 78
    assert b"MISSING  mail._domainkey.example.org: no such name" in missing.stdout
    assert b"IN TXT (" in missing.stdout  # and what to publish

    dns.set_txt("mail._domainkey.example.org", [other_strings])
    wrong = env.run("pysendmail", "dkim", "check", "--nameserver", ns)
    assert wrong.returncode == 78
    assert b"MISMATCH mail._domainkey.example.org: the published key is not the public half of" in wrong.stdout

    dns.set_txt("mail._domainkey.example.org", [strings])
    env.extra_env["PYSENDMAIL_NAMESERVER"] = ns  # the environment variable works as --nameserver does
    ok = env.run("pysendmail", "dkim", "check", "--domain", "example.org")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.startswith(b"OK       mail._domainkey.example.org: publishes the key of")
    assert any(q[0] == "mail._domainkey.example.org" for q in dns.queries)


def test_dkim_check_names_a_revoked_record_and_an_unknown_domain(env: Env, dns: DnsServer) -> None:
    key = env.root / "k.key"
    keygen(env, "--domain", "example.org", "--selector", "mail", "--output", str(key))
    add_table(env, key)
    dns.set_txt("mail._domainkey.example.org", "v=DKIM1; k=rsa; p=")
    proc = env.run("pysendmail", "dkim", "check", "--nameserver", f"127.0.0.1:{dns.port}")
    assert proc.returncode == 78 and b"revoked" in proc.stdout
    none = env.run("pysendmail", "dkim", "check", "--domain", "example.com", "--nameserver", f"127.0.0.1:{dns.port}")
    assert none.returncode == 78 and b"no [[dkim]] key for example.com" in none.stderr


def test_dkim_check_dns_failure_is_temporary(env: Env, dns: DnsServer) -> None:
    key = env.root / "k.key"
    keygen(env, "--domain", "example.org", "--selector", "mail", "--output", str(key))
    add_table(env, key)
    dns.servfail.add("mail._domainkey.example.org")
    proc = env.run("pysendmail", "dkim", "check", "--nameserver", f"127.0.0.1:{dns.port}")
    assert proc.returncode == 75 and b"DNSERROR" in proc.stdout


# ---------------------------------------------------------------- checks at start
def _config_check(e: Env) -> subprocess.CompletedProcess[bytes]:
    return e.run("pysendmail", "config", "check")


@pytest.mark.parametrize("case", ["missing", "group-readable", "garbage", "public-key", "rsa-512", "wrong-kind",
                                  "encrypted"])
def test_bad_key_is_refused_at_start_with_one_sentence(env: Env, case: str) -> None:
    path = env.root / "bad.key"
    algorithm = "rsa-sha256"
    if case == "group-readable":
        keygen(env, "--domain", "example.org", "--selector", "m", "--output", str(path))
        path.chmod(0o640)
        expected = (f"DKIM key {path} for example.org is readable by its group (gid 0), not only by the daemon; "
                    f"run 'chmod g-rwx {path}'")
    elif case == "missing":
        expected = f"DKIM key {path} for example.org cannot be read (No such file or directory)"
    elif case == "garbage":
        path.write_text("hello\n")
        path.chmod(0o600)
        expected = f"DKIM key {path} for example.org is not a private key in PEM form"
    elif case == "public-key":
        keygen(env, "--domain", "example.org", "--selector", "m", "--output", str(env.root / "priv"))
        openssl("pkey", "-in", str(env.root / "priv"), "-pubout", "-out", str(path))
        path.chmod(0o600)
        expected = f"DKIM key {path} for example.org holds a public key: dkim.key_file must name the private key"
    elif case == "rsa-512":
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:512", "-out", str(path))
        path.chmod(0o600)
        expected = f"DKIM key {path} for example.org has only 512 bits, and receivers ignore RSA keys under 1024 bits"
    elif case == "wrong-kind":
        keygen(env, "--domain", "example.org", "--selector", "m", "--algorithm", "ed25519", "--output", str(path))
        expected = f'DKIM key {path} for example.org is an Ed25519 key but dkim.algorithm is rsa-sha256'
    else:
        openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-aes256", "-pass", "pass:x",
                "-out", str(path))
        path.chmod(0o600)
        expected = f"DKIM key {path} for example.org is protected by a passphrase"
    add_table(env, path, algorithm=algorithm)
    for proc in (_config_check(env), env.run("sendmail", "-q"), env.run("pysendmail", "daemon", timeout=30)):
        assert proc.returncode == 78, proc.stderr
        lines = proc.stderr.decode().strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], lines


def test_1024_bit_key_is_used_with_a_warning(env: Env) -> None:
    path = env.root / "weak.key"
    openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024", "-out", str(path))
    path.chmod(0o600)
    add_table(env, path)
    proc = _config_check(env)
    assert proc.returncode == 0
    assert b"warning: DKIM key " + str(path).encode() + b" for example.org has 1024 bits; 2048" in proc.stderr


def test_dkimpy_raw_ed25519_seed_file_is_accepted(env: Env) -> None:
    path = env.root / "dknewkey.key"
    path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    path.chmod(0o600)
    add_table(env, path, algorithm="ed25519-sha256")
    assert _config_check(env).returncode == 0


def test_config_refuses_unknown_algorithm_and_duplicate_keys(env: Env) -> None:
    path = env.root / "k.key"
    keygen(env, "--domain", "example.org", "--selector", "m", "--output", str(path))
    add_table(env, path, algorithm="rsa-sha1")
    proc = _config_check(env)
    assert proc.returncode == 78 and b"dkim.algorithm" in proc.stderr and b"rsa-sha1" in proc.stderr
    env.config.write_text(env.config.read_text().replace('"rsa-sha1"', '"rsa-sha256"'))
    add_table(env, path, selector="n")
    proc = _config_check(env)
    assert proc.returncode == 78 and b"two [[dkim]] tables" in proc.stderr
