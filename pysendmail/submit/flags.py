"""sendmail's command line: one table of every flag, and its scanner.

Contract:   ``parse(argv)`` returns Options or raises UsageError (exit 64)
            naming the flag, or DataError (exit 65) for a -f/-F value that
            would inject a header.  ``help_text()`` is built from the same
            table, so --help cannot drift from what is accepted.
Security:   argv comes from any local user; values are checked for CR, LF
            and NUL here, before they reach an envelope or a header.
See also:   sendmail(8); Postfix sendmail(1) "OPTIONS"; nullmailer's flag
            table (every ignored flag written out).

Scanning follows sendmail: flags first, each may carry its value attached
(``-fuser@x``) or as the next word (``-f user@x``); the first word that is
not a flag, or ``--``, starts the recipients.  Letters cannot be grouped
(``-ti`` is not ``-t -i``), as in sendmail.
"""

from __future__ import annotations

from pysendmail.core.config import parse_interval
from pysendmail.core.errors import DataError, UsageError

# (flag, takes a value, what it does here).  "ignored" means accepted for
# compatibility and without effect, because it only matters to a real MTA.
FLAGS: tuple[tuple[str, bool, str], ...] = (
    ("-t", False, "take recipients from To, Cc, Bcc (or Resent-To/Cc/Bcc), adding those on the command line"),
    ("-i", False, "a line with a single '.' does not end the message (also -oi)"),
    ("-f", True, "envelope sender address; '' or '<>' is the null sender (also -r)"),
    ("-r", True, "same as -f (obsolete)"),
    ("-F", True, "full name of the sender, used when a From header must be added"),
    ("-bm", False, "read a message from standard input and queue it (the default)"),
    ("-bp", False, "list the queue (same as mailq)"),
    ("-bi", False, "check the aliases (same as newaliases; also -I)"),
    ("-bs", False, "speak SMTP on standard input and output (Symfony Mailer, Laravel)"),
    ("-bv", False, "print what each address resolves to after aliases; queue nothing"),
    ("-bd", False, "run the queue daemon in the foreground (same as pysendmail daemon)"),
    ("-bD", False, "same as -bd"),
    ("-q", False, "deliver every queued message now, then exit; -q15m runs the daemon"),
    ("-C", True, "use this configuration file"),
    ("-v", False, "verbose: say what was queued, on standard error"),
    ("-V", True, "envelope id for delivery status notifications (RFC 3461 ENVID)"),
    ("-N", True, "DSN notify: never, or a list of success, failure, delay"),
    ("-R", True, "DSN return: full or hdrs"),
    ("-B", True, "body type: 7BIT or 8BITMIME"),
    ("-o", False, "-oi is -i; other -oX options (-oem, -odb, -om, ...) are ignored"),
    ("-O", True, "long option=value: ignored"),
    ("-L", True, "syslog label: ignored"),
    ("-h", True, "hop count: ignored"),
    ("-X", True, "traffic log file: ignored"),
    ("-A", False, "-Am/-Ac, submission mode: ignored"),
    ("-G", False, "gateway submission: ignored"),
    ("-U", False, "initial user submission: ignored"),
    ("-m", False, "send to me too: ignored"),
    ("-n", False, "do not alias: ignored"),
    ("-I", False, "same as -bi"),
    ("--", False, "end of flags: what follows are recipients"),
)

_VALUED = {flag[1:]: True for flag, valued, _ in FLAGS if valued and len(flag) == 2}
_MODES = {"m": "deliver", "p": "mailq", "i": "newaliases", "s": "smtp", "v": "verify", "d": "daemon", "D": "daemon"}
_NOTIFY = frozenset({"never", "success", "failure", "delay"})


class Options:
    """The parsed command line."""

    __slots__ = (
        "mode",
        "extract",
        "ignore_dots",
        "sender",
        "fullname",
        "config",
        "verbose",
        "envid",
        "notify",
        "ret",
        "body",
        "recipients",
        "queue_interval",
    )

    def __init__(self) -> None:
        self.mode = "deliver"
        self.extract = False
        self.ignore_dots = False
        self.sender: str | None = None  # raw -f value, None when not given
        self.fullname = ""
        self.config: str | None = None
        self.verbose = False
        self.envid = ""
        self.notify = ""
        self.ret = ""
        self.body = ""
        self.recipients: list[str] = []
        self.queue_interval: int | None = None


def _check_text(flag: str, value: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise DataError(f"the value of {flag} holds a line break or NUL, which would inject a header: {value!r}")
    return value


def parse(argv: list[str]) -> Options:
    opts = Options()
    i = 0
    n = len(argv)
    while i < n:
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        letter, attached = arg[1], arg[2:]
        i += 1
        value = ""
        if letter in _VALUED:
            if attached:
                value = attached
            elif i < n:
                value = argv[i]
                i += 1
            else:
                raise UsageError(f"option -{letter} needs a value")
        if letter == "t" and not attached:
            opts.extract = True
        elif letter == "i" and not attached:
            opts.ignore_dots = True
        elif letter in "fr":
            opts.sender = _check_text(f"-{letter}", value)
        elif letter == "F":
            opts.fullname = _check_text("-F", value)
        elif letter == "b":
            if attached not in _MODES:
                raise UsageError(f"unknown option {arg}: pysendmail supports -bm, -bp, -bi, -bs, -bv and -bd")
            opts.mode = _MODES[attached]
        elif letter == "I" and not attached:
            opts.mode = "newaliases"
        elif letter == "q":
            if attached:
                opts.queue_interval = parse_interval(attached)
                opts.mode = "daemon"
            else:
                opts.mode = "flush"
        elif letter == "C":
            opts.config = value
        elif letter == "v" and not attached:
            opts.verbose = True
        elif letter == "V":
            opts.envid = _check_text("-V", value)
        elif letter == "N":
            words = {w.strip().lower() for w in value.split(",")}
            if not words <= _NOTIFY or ("never" in words and len(words) > 1):
                raise UsageError(f"-N {value}: use never, or a list of success, failure, delay")
            opts.notify = ",".join(sorted(words))
        elif letter == "R":
            if value.lower() not in ("full", "hdrs"):
                raise UsageError(f"-R {value}: use full or hdrs")
            opts.ret = value.upper()
        elif letter == "B":
            if value.upper() not in ("7BIT", "8BITMIME"):
                raise UsageError(f"-B {value}: use 7BIT or 8BITMIME")
            opts.body = value.upper()
        elif letter == "o":
            if attached == "i":
                opts.ignore_dots = True
            elif not attached:
                raise UsageError("option -o needs a letter (for example -oi)")
            # other -oX: error/delivery modes of a real MTA; ignored
        elif letter in "OLhX":
            pass  # value consumed above; ignored
        elif letter in "AGUmn" and (letter == "A" or not attached):
            pass  # ignored (see the table)
        else:
            raise UsageError(f"unknown option {arg}; see sendmail --help")
    opts.recipients = [_check_text("a recipient", a) for a in argv[i:]]
    return opts


def help_text(prog: str) -> str:
    lines = [
        f"usage: {prog} [flags] [recipient ...] < message",
        "",
        "Queues the message durably and returns; pysendmail's daemon delivers it.",
        "",
    ]
    for flag, valued, text in FLAGS:
        shown = flag + (" value" if valued else "")
        lines.append(f"  {shown:<10} {text}")
    lines += [
        "",
        "Exit codes (sysexits.h): 0 queued, 64 usage, 65 bad data or address,",
        "73/74 cannot create or write, 75 try again later, 77 no permission, 78 bad configuration.",
    ]
    return "\n".join(lines) + "\n"
