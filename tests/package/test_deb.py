"""The Debian package on a clean Debian 12: build, install, send, upgrade, purge.

The .deb is built twice from this tree with packaging/deb/build (the
second time with a higher version), then installed with apt into a
minimal Debian 12 root made by mmdebstrap from the same mirror the host's
apt uses, so its dependencies are Debian 12's own python3-aiosmtplib,
python3-dkim, python3-platformdirs and python3-dnspython.  In that root:
PHP's ``mail()`` with php.ini's default sendmail_path, the daemon started
by hand as the pysendmail user (no systemd runs in a chroot), delivery to
the loopback TLS relay of tests/fakes running on the host (the chroot
shares the host's network), an upgrade with a deferred message in the
queue that is kept and then delivered, a remove that keeps the queue and
the configuration, and a purge that leaves nothing behind but the system
user.  In a second root, the newcomer's order: ``pysendmail setup`` as
root before the package (pip's way), then ``apt install`` of the .deb
without a prompt, and a purge that says how many queued messages it
deletes.

Speed: the root (apt variant + php-cli + systemd, package lists kept) is
cached as a tarball under /var/cache/pysendmail-ci, rebuilt when older
than a week or when the mirror or package list changes; the packages apt
downloads for the .deb are kept in an archive directory beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import needs_root
from tests.fakes.dns import DnsServer
from tests.fakes.verifiers import mail_dkim, opendkim

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "packaging" / "deb" / "build"
DEBIAN = ROOT / "packaging" / "deb" / "debian"
CACHE = Path("/var/cache/pysendmail-ci")
BASE_PACKAGES = ["php-cli", "systemd"]
BASE_MAX_AGE = 7 * 86400
CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}
UPGRADE_SUFFIX = "+ci1"

pytestmark = [needs_root, pytest.mark.slow]


def tool(name: str) -> str:
    path = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        pytest.fail(f"{name} is not installed: the README's test command installs it with apt-get")
    return path


def run(cmd: list[str], timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the host's mirror
def debian_sources() -> list[str]:
    """One-line apt sources for bookworm, from the mirror(s) the host's apt uses."""
    lines: list[str] = []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for stanza in Path(path).read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if ":" in line and not line.startswith(("#", " ")):
                    key, value = line.split(":", 1)
                    fields[key.strip().lower()] = value.strip()
            suites = [s for s in fields.get("suites", "").split() if s.startswith("bookworm")]
            if "debian-archive-keyring" not in fields.get("signed-by", "") or not suites:
                continue
            for uri in fields.get("uris", "").split():
                lines += [f"deb {uri} {suite} main" for suite in suites]
    for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
        if os.path.exists(path):
            for line in Path(path).read_text().splitlines():
                words = line.split()
                if len(words) >= 3 and words[0] == "deb" and words[2].startswith("bookworm") and "debian" in words[1]:
                    lines.append(f"deb {words[1]} {words[2]} main")
    return lines or [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]


def test_mirror_is_the_hosts() -> None:
    sources = debian_sources()
    assert any(" bookworm main" in s for s in sources), sources
    assert any("bookworm-security" in s for s in sources), sources


# ---------------------------------------------------------------- the cached base root
class CacheLock:
    def __init__(self, name: str) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(CACHE / name, os.O_RDWR | os.O_CREAT, 0o644)

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # another test run on this machine builds or installs

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def base_tarball() -> Path:
    sources = debian_sources()
    key = hashlib.sha256("\n".join(["apt", *BASE_PACKAGES, *sources]).encode()).hexdigest()[:12]
    tarball = CACHE / f"bookworm-{key}.tar"
    with CacheLock("base.lock"):
        if tarball.exists() and time.time() - tarball.stat().st_mtime < BASE_MAX_AGE:
            return tarball
        for old in CACHE.glob("bookworm-*.tar"):
            old.unlink()
        tmp = tarball.with_suffix(".tmp.tar")
        run([tool("mmdebstrap"), "--variant=apt", "--include=" + ",".join(BASE_PACKAGES),
             "--skip=cleanup/apt/lists", "bookworm", str(tmp), *sources], timeout=1200)
        tmp.rename(tarball)
    return tarball


# ---------------------------------------------------------------- the packages
@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the package as in debian/changelog, the same tree built with a higher version)."""
    out = tmp_path_factory.mktemp("debs")
    version = (DEBIAN / "changelog").read_text().split("(", 1)[1].split(")", 1)[0]
    first = Path(run([str(BUILD), "--out", str(out / "1")]).stdout.split()[-1])
    second = Path(run([str(BUILD), "--version", version + UPGRADE_SUFFIX, "--out", str(out / "2")]).stdout.split()[-1])
    assert first.name == f"pysendmail_{version}_all.deb", first
    assert second.name == f"pysendmail_{version}{UPGRADE_SUFFIX}_all.deb", second
    return first, second


def deb_field(deb: Path, name: str) -> str:
    return run(["dpkg-deb", "-f", str(deb), name]).stdout.strip()


def test_deb_is_an_mta_that_depends_on_debian_packages_only(debs: tuple[Path, Path]) -> None:
    deb = debs[0]
    assert deb_field(deb, "Architecture") == "all"
    for field in ("Provides", "Conflicts", "Replaces"):
        assert deb_field(deb, field) == "mail-transport-agent", field
    depends = {d.split()[0] for d in deb_field(deb, "Depends").split(", ")}
    for needed in ("python3-aiosmtplib", "python3-dkim", "python3-platformdirs", "python3-dnspython"):
        assert needed in depends
    # Every dependency exists in Debian 12 (the host is Debian 12 and has
    # the same lists): apt-cache would print nothing for a pip-only name.
    for name in depends:
        policy = run(["apt-cache", "show", "--no-all-versions", name.replace("python3:any", "python3")])
        assert policy.stdout.startswith("Package:"), name


def test_deb_installs_the_launchers_and_man_pages(debs: tuple[Path, Path], tmp_path: Path) -> None:
    run(["dpkg-deb", "-x", str(debs[0]), str(tmp_path)])
    for path in ("usr/sbin/sendmail", "usr/bin/mailq", "usr/bin/newaliases", "usr/bin/pysendmail"):
        with open(tmp_path / path, "rb") as fh:
            assert fh.readline() == b"#!/usr/bin/python3\n", path
        assert os.stat(tmp_path / path).st_mode & 0o111, path
    # The lean launchers, not pip's console-script wrappers (which import re).
    assert (tmp_path / "usr/sbin/sendmail").read_bytes() == (ROOT / "bin/sendmail").read_bytes()
    assert os.readlink(tmp_path / "usr/lib/sendmail") == "../sbin/sendmail"
    for page in ("man8/sendmail.8.gz", "man8/pysendmail.8.gz", "man5/pysendmail.toml.5.gz",
                 "man8/mailq.8.gz", "man8/newaliases.8.gz"):
        assert (tmp_path / "usr/share/man" / page).exists(), page
    # The system config is no conffile (postinst writes it from this
    # template at the first install): 'pysendmail setup' may have written
    # one first, and dpkg would stop at a conffile prompt over it.
    assert not (tmp_path / "etc/pysendmail").exists()
    control = tmp_path / "DEBIAN"
    run(["dpkg-deb", "-e", str(debs[0]), str(control)])
    assert not (control / "conffiles").exists() or "pysendmail.toml" not in (control / "conffiles").read_text()
    config = (tmp_path / "usr/share/pysendmail/pysendmail.toml").read_text()
    assert config == (DEBIAN / "pysendmail.toml").read_text()
    assert not re.search(r"^\s*password\s*=", config, re.M), "the shipped config must hold no secret"


def test_lintian_reports_nothing_unjustified(debs: tuple[Path, Path]) -> None:
    proc = subprocess.run([tool("lintian"), "-EvIL", "+pedantic", "--fail-on", "none", str(debs[0])],
                          capture_output=True, text=True, timeout=600)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert tags == [], "lintian tags neither fixed nor overridden:\n" + "\n".join(tags)
    readme = (ROOT / "packaging/deb/README.md").read_text()
    for line in (DEBIAN / "pysendmail.lintian-overrides").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            tag = line.split()[1]
            assert tag in readme, f"packaging/deb/README.md does not justify the override {tag}"


# ---------------------------------------------------------------- the Debian 12 root
def mounted_under(path: Path) -> list[str]:
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    return [p for p in points if p == str(path) or p.startswith(str(path) + "/")]


class Chroot:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def popen(self, *cmd: str, **kw: object) -> subprocess.Popen[str]:
        return subprocess.Popen(["chroot", str(self.root), *cmd], env=CHROOT_ENV, text=True,  # type: ignore[call-overload]
                                **kw)

    def run(self, *cmd: str, check: bool = True, input: str | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["chroot", str(self.root), *cmd], env=CHROOT_ENV, capture_output=True, text=True,
                              input=input, timeout=timeout, stdin=None if input is not None else subprocess.DEVNULL)
        if check:
            assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        return proc

    def apt_install(self, deb: Path) -> None:
        target = self.path("/root/debs") / deb.name
        target.parent.mkdir(exist_ok=True)
        shutil.copy(deb, target)
        cmd = ("apt-get", "install", "-y", "--no-install-recommends", f"/root/debs/{deb.name}")
        with CacheLock("archives.lock"):
            proc = self.run(*cmd, check=False)
            if proc.returncode != 0 and ("404" in proc.stdout + proc.stderr or "Unable to fetch" in proc.stderr):
                self.run("apt-get", "update")  # the cached lists went stale on the mirror
                proc = self.run(*cmd, check=False)
        assert proc.returncode == 0, f"apt-get install {deb.name} failed\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        target.unlink()

    def ids(self, name: str) -> tuple[int, int]:
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return int(fields[2]), int(fields[3])
        raise AssertionError(f"no user {name} in the chroot")


@pytest.fixture(scope="module")
def chroot() -> Iterator[Chroot]:
    with make_chroot("main") as c:
        yield c


@contextlib.contextmanager
def make_chroot(name: str) -> Iterator[Chroot]:
    """A fresh Debian 12 root from the cached tarball, /proc and apt's archives mounted."""
    tarball = base_tarball()
    root = Path(f"/var/tmp/pysendmail-deb-root-{name}-{os.getpid()}")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(mode=0o755)
    archives = CACHE / "archives"
    archives.mkdir(exist_ok=True)
    mounts: list[Path] = []
    try:
        run(["tar", "-xf", str(tarball), "-C", str(root)])
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
        run(["mount", "-t", "proc", "proc", str(root / "proc")])
        mounts.append(root / "proc")
        run(["mount", "--bind", str(archives), str(root / "var/cache/apt/archives")])
        mounts.append(root / "var/cache/apt/archives")
        yield Chroot(root)
    finally:
        for point in reversed(mounts):
            if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True)
        # Never rm -rf through a mount point that is still there.
        if not mounted_under(root):
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(chroot: Chroot, debs: tuple[Path, Path]) -> Chroot:
    chroot.run("sh", "-c", "test ! -e /usr/sbin/sendmail")
    chroot.apt_install(debs[0])
    return chroot


def mode_owner(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_install_creates_user_spool_and_enables_the_service(installed: Chroot) -> None:
    c = installed
    uid, gid = c.ids("pysendmail")
    spool = c.path("/var/spool/pysendmail")
    assert mode_owner(spool / "incoming") == (0o3733, uid, gid)
    for name in ("queue", "failed", "quarantine", "state"):
        assert mode_owner(spool / name) == (0o700, uid, gid), name
    assert stat.S_ISFIFO(os.lstat(spool / "pickup").st_mode)
    assert mode_owner(c.path("/etc/pysendmail/pysendmail.toml")) == (0o644, 0, 0)
    assert c.path("/etc/pysendmail/pysendmail.toml").read_bytes() == (DEBIAN / "pysendmail.toml").read_bytes()
    assert c.path("/etc/pysendmail/pysendmail.toml.cache").is_file(), "postinst runs pysendmail config check"
    wants = c.path("/etc/systemd/system/multi-user.target.wants/pysendmail.service")
    assert os.readlink(wants) == "/lib/systemd/system/pysendmail.service"
    assert c.run("systemctl", "is-enabled", "pysendmail.service", check=False).stdout.strip() == "enabled"
    # Installed as Debian's sendmail: the launcher runs with Debian 12's python3.
    assert c.run("/usr/sbin/sendmail", "-bp").stdout == "Mail queue is empty\n"


def test_unit_verifies(installed: Chroot) -> None:
    proc = subprocess.run([tool("systemd-analyze"), "verify", f"--root={installed.root}", "--man=no",
                           "/lib/systemd/system/pysendmail.service"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pysendmail" not in proc.stderr, proc.stderr
    # The same check sees a broken unit (so a pass above means something).
    unit = installed.path("/lib/systemd/system/pysendmail.service").read_text()
    broken = installed.path("/etc/systemd/system/pysendmail-broken.service")
    broken.write_text(unit.replace("ExecStart=/usr/bin/pysendmail", "ExecStart=/usr/bin/pysendmail-missing"))
    try:
        bad = subprocess.run([tool("systemd-analyze"), "verify", f"--root={installed.root}", "--man=no",
                              "/etc/systemd/system/pysendmail-broken.service"], capture_output=True, text=True,
                             timeout=120)
    finally:
        broken.unlink()
    assert bad.returncode != 0 and "pysendmail-missing" in bad.stderr, bad.stderr


def test_unit_exposure_is_below_2(installed: Chroot) -> None:
    proc = run([tool("systemd-analyze"), "security", "--offline=yes", f"--root={installed.root}",
                "--no-pager", "pysendmail.service"])
    found = re.search(r"Overall exposure level for pysendmail\.service: ([\d.]+)", proc.stdout)
    assert found, proc.stdout[-2000:]
    assert float(found.group(1)) < 2.0, proc.stdout[-2000:]
    print(found.group(0))  # for the record: pytest -rP shows it


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def test_php_mail_daemon_upgrade_remove_purge(installed: Chroot, debs: tuple[Path, Path], relay_factory,  # type: ignore[no-untyped-def]
                                              dns: DnsServer, tmp_path: Path) -> None:
    c = installed
    relay = relay_factory("implicit")
    uid, gid = c.ids("pysendmail")

    # Configure the relay: its CA as ca_file, the password 0640 root:pysendmail.
    shutil.copy(relay.ca_file, c.path("/etc/pysendmail/relay-ca.pem"))
    password = c.path("/etc/pysendmail/password")
    password.write_text(relay.password + "\n")
    os.chown(password, 0, gid)
    os.chmod(password, 0o640)
    table = relay.config(Path("/etc/pysendmail/password"), host="127.0.0.1").replace(
        str(relay.ca_file), "/etc/pysendmail/relay-ca.pem")
    config = c.path("/etc/pysendmail/pysendmail.toml")
    # DKIM with Debian 12's python3-dkim, -cryptography and -nacl: keys from
    # the packaged keygen (root: owned by pysendmail), RSA and Ed25519.
    dkim_tables = ""
    for selector, algorithm in (("deb", "rsa"), ("deb-ed", "ed25519")):
        key = f"/etc/pysendmail/dkim/example.org.{selector}.key"
        out = c.run("pysendmail", "dkim", "keygen", "--domain", "example.org", "--selector", selector,
                    "--algorithm", algorithm, "--output", key).stdout
        line = next(x for x in out.splitlines() if " IN TXT " in x)
        dns.set_txt(f"{selector}._domainkey.example.org", [re.findall(r'"([^"]*)"', line)])
        assert mode_owner(c.path(key)) == (0o600, uid, gid)
        dkim_tables += (f'\n[[dkim]]\ndomain = "example.org"\nselector = "{selector}"\nkey_file = "{key}"\n'
                        f'algorithm = "{algorithm}-sha256"\n')
    config.write_text(config.read_text() + "\n" + table + '\n[host]\nname = "web.example.org"\n' + dkim_tables)
    c.run("pysendmail", "config", "check")

    # PHP's mail() as the web server's user, with php.ini's default sendmail_path.
    assert c.run("php", "-r", 'echo ini_get("sendmail_path");').stdout == "/usr/sbin/sendmail -t -i"
    php = c.run("setpriv", "--reuid=www-data", "--regid=www-data", "--init-groups", "php", "-r",
                'var_dump(mail("someone@example.net", "from the package", "Hello from Debian 12.", '
                '"From: Shop <shop@example.org>"));')
    assert php.stdout == "bool(true)\n", php.stdout + php.stderr

    daemon = c.popen("setpriv", "--reuid=pysendmail", "--regid=pysendmail", "--init-groups",
                     "pysendmail", "daemon", stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        (got,) = relay.wait_for(1, timeout=60)
    finally:
        daemon.terminate()
        log = daemon.communicate(timeout=60)[0]
    assert daemon.returncode == 0, log
    assert got.tls and got.rcpt_tos == ["someone@example.net"], log
    assert relay.held > 0, "Debian 12's python3-aiosmtplib (2.0) should carry the pipelining layer"
    assert b"Subject: from the package" in got.data and b"Hello from Debian 12." in got.data
    assert re.search(r"status=sent", log), log
    assert relay.password not in log
    # Signed by Debian's libraries, verified by tools that are not dkimpy.
    assert ("pass", "example.org", "deb", "rsa-sha256") in mail_dkim(got.data, dns.port), log
    odk = opendkim(got.data, dns.port, tmp_path / "opendkim")
    assert ("pass", "example.org", "deb-ed", "ed25519-sha256") in odk and len(odk) == 2, (odk, log)

    # A message deferred in the queue across the upgrade.
    relay.data_reply = "451 4.3.0 try again later"
    c.run("sendmail", "-t", "-i", input="To: later@example.net\nSubject: across the upgrade\n\nkept\n")
    c.run("sendmail", "-q")
    assert c.run("mailq").stdout.splitlines()[-1].endswith(" in 1 Request."), c.run("mailq").stdout
    queued = sorted(os.listdir(c.path("/var/spool/pysendmail/queue")))
    assert len([q for q in queued if not q.startswith(".")]) == 1

    c.apt_install(debs[1])
    version = c.run("dpkg-query", "-W", "-f", "${Version}", "pysendmail").stdout
    assert version.endswith(UPGRADE_SUFFIX)
    assert sorted(os.listdir(c.path("/var/spool/pysendmail/queue"))) == queued, "the upgrade lost the queue"
    assert table in config.read_text(), "the upgrade replaced the edited configuration"
    assert password.read_text() == relay.password + "\n"
    assert mode_owner(c.path("/var/spool/pysendmail/incoming")) == (0o3733, uid, gid)

    relay.data_reply = None
    c.run("sendmail", "-q")
    messages = relay.wait_for(2, timeout=60)
    assert messages[1].rcpt_tos == ["later@example.net"] and b"across the upgrade" in messages[1].data
    assert c.run("mailq").stdout == "Mail queue is empty\n"

    # remove keeps the queue and the configuration; purge removes them.
    c.run("apt-get", "remove", "-y", "pysendmail")
    assert not c.path("/usr/sbin/sendmail").exists()
    assert config.is_file() and password.is_file() and c.path("/var/spool/pysendmail/incoming").is_dir()
    c.run("apt-get", "purge", "-y", "pysendmail")
    assert c.run("dpkg-query", "-W", "-f", "${db:Status-Status}", "pysendmail", check=False).stdout in ("", "not-installed")
    left = c.run("find", "/", "-xdev", "(", "-path", "/proc", "-o", "-path", "/var/log", "-o", "-path", "/root/debs",
                 ")", "-prune", "-o", "-name", "*pysendmail*", "-print").stdout.split()
    assert left == [], f"purge left {left}"
    # What policy allows to stay: the system user and group.
    c.ids("pysendmail")


def test_installing_the_deb_replaces_exim4_in_one_apt_step(debs: tuple[Path, Path]) -> None:
    """Debian's default MTA out, pysendmail in: Provides/Conflicts/Replaces
    mail-transport-agent let apt swap them without a manual removal."""
    with make_chroot("swap") as c:
        with CacheLock("archives.lock"):
            c.run("apt-get", "install", "-y", "--no-install-recommends", "exim4-daemon-light")
        assert "Exim" in c.run("/usr/sbin/sendmail", "-bV", check=False).stdout

        c.apt_install(debs[0])

        left = c.run("dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\n", "exim4*", check=False).stdout
        installed = {line.split()[1] for line in left.splitlines() if line.startswith("ii")}
        assert "exim4-daemon-light" not in installed, left
        # What stays (exim4-base, exim4-config) came in as its dependencies
        # and is no MTA: apt offers it for autoremove, as with any MTA swap.
        auto = set(c.run("apt-mark", "showauto").stdout.split())
        assert installed <= auto, (installed, auto)
        assert c.run("/usr/sbin/sendmail", "-bp").stdout == "Mail queue is empty\n"
        assert c.run("dpkg", "-S", "/usr/sbin/sendmail").stdout.startswith("pysendmail:")


def test_deb_after_setup_installs_without_a_prompt_keeps_the_config_and_purge_counts_the_queue(
        debs: tuple[Path, Path], relay_factory) -> None:  # type: ignore[no-untyped-def]
    """The newcomer's order: pysendmail from pip, 'pysendmail setup' as root
    (the user, the spool, /etc/pysendmail), then the .deb.  apt used to stop
    at dpkg's conffile prompt for /etc/pysendmail/pysendmail.toml and exit
    100; now the package ships no conffile there and keeps what setup wrote.
    Then purge with undelivered mail says how many messages it deletes, and
    a fresh install's template is replaced by setup without --force."""
    from tests.fakes.relay import PASSWORD, USER

    relay = relay_factory("implicit")
    with make_chroot("setup") as c:
        # pysendmail as pip would put it (the .deb's own files, outside
        # dpkg's knowledge) on Debian's python3 and libraries.
        depends = [d.split()[0].replace(":any", "") for d in deb_field(debs[0], "Depends").split(", ")]
        with CacheLock("archives.lock"):
            c.run("apt-get", "install", "-y", "--no-install-recommends", *depends)
        run(["dpkg-deb", "-x", str(debs[0]), str(c.path("/opt/pip-pysendmail"))])
        site = "/opt/pip-pysendmail/usr/lib/python3/dist-packages"
        c.path("/usr/local/share/relay-ca.pem").write_bytes(relay.ca_file.read_bytes())
        setup_args = ("setup", "--provider", "custom", "--host", "127.0.0.1", "--port", str(relay.port), "--tls",
                      "implicit", "--ca-file", "/usr/local/share/relay-ca.pem", "--user", USER, "--password-stdin")
        made = c.run("env", f"PYTHONPATH={site}", "python3", "/opt/pip-pysendmail/usr/bin/pysendmail", *setup_args,
                     "--dkim", "example.org", input=PASSWORD + "\n")
        assert "config:   /etc/pysendmail/pysendmail.toml (written)" in made.stdout, made.stdout
        config = c.path("/etc/pysendmail/pysendmail.toml")
        written = config.read_bytes()
        password = c.path("/etc/pysendmail/password").read_bytes()
        user_line = next(x for x in c.path("/etc/passwd").read_text().splitlines() if x.startswith("pysendmail:"))
        uid, gid = c.ids("pysendmail")
        assert user_line.split(":")[5:] == ["/var/spool/pysendmail", "/usr/sbin/nologin"], user_line

        # No prompt (stdin is /dev/null, apt exits 0), nothing replaced.
        c.apt_install(debs[0])
        assert config.read_bytes() == written, "installing the package changed the admin's configuration"
        assert mode_owner(config) == (0o644, 0, 0)
        assert c.path("/etc/pysendmail/password").read_bytes() == password
        assert mode_owner(c.path("/etc/pysendmail/password")) == (0o640, 0, gid)
        assert c.run("dpkg-query", "-W", "-f", "${Conffiles}", "pysendmail").stdout.strip() == ""
        assert c.path("/usr/share/pysendmail/pysendmail.toml").is_file()
        # One pysendmail user, the one setup made, with the package's shape.
        users = [x for x in c.path("/etc/passwd").read_text().splitlines() if x.startswith("pysendmail:")]
        assert users == [user_line]
        assert c.run("getent", "group", "pysendmail").stdout.split(":")[2] == str(gid)
        spool = c.path("/var/spool/pysendmail")
        assert mode_owner(spool / "incoming") == (0o3733, uid, gid)
        for name in ("queue", "failed", "quarantine", "state"):
            assert mode_owner(spool / name) == (0o700, uid, gid), name
        assert c.path("/etc/pysendmail/pysendmail.toml.cache").is_file()
        c.run("pysendmail", "config", "check")

        # The packaged sendmail delivers with setup's relay.
        c.run("sendmail", "-t", "-i", input="To: first@example.net\nSubject: after setup\n\nhello\n")
        c.run("sendmail", "-q")
        (got,) = relay.wait_for(1, timeout=60)
        assert got.rcpt_tos == ["first@example.net"] and b"after setup" in got.data

        # Three messages the relay defers, then purge.
        relay.data_reply = "451 4.3.0 try again later"
        for n in range(3):
            c.run("sendmail", "-t", "-i", input=f"To: later{n}@example.net\nSubject: kept {n}\n\nx\n")
        c.run("sendmail", "-q")
        assert c.run("mailq").stdout.splitlines()[-1].endswith(" in 3 Requests."), c.run("mailq").stdout
        purged = c.run("apt-get", "purge", "-y", "pysendmail")
        assert "pysendmail: purging 3 queued messages that were never delivered (/var/spool/pysendmail)" in (
            purged.stdout + purged.stderr), purged.stdout + purged.stderr
        assert not c.path("/etc/pysendmail").exists() and not spool.exists()

        # A fresh install writes the template; setup replaces it without --force.
        c.apt_install(debs[0])
        template = c.path("/usr/share/pysendmail/pysendmail.toml").read_bytes()
        assert config.read_bytes() == template
        assert c.run("dpkg-query", "-W", "-f", "${Conffiles}", "pysendmail").stdout.strip() == ""
        again = c.run("pysendmail", *setup_args, input=PASSWORD + "\n")
        assert "written over the package's unedited template" in again.stdout, again.stdout
        assert b"[relay]" in config.read_bytes()
        # An edited config is the admin's: setup refuses it without --force.
        config.write_bytes(config.read_bytes() + b"\n# edited by the admin\n")
        refused = c.run("pysendmail", *setup_args, input=PASSWORD + "\n", check=False)
        assert refused.returncode == 73 and "exists and differs; pass --force" in refused.stderr, refused.stderr
        c.run("apt-get", "purge", "-y", "pysendmail")
