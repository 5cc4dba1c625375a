"""What pysendmail knows about each mail provider: presets and reply texts.

Contract:   ``PRESETS[name]`` is a Preset (host, port, tls, auth, from
            policy, limits, DNS hints); ``preset(name, region)`` returns it
            with the host filled (SES needs a region) or raises ConfigError
            naming the known providers.  ``explain(provider, code, text,
            stage)`` returns a Verdict for a reply pysendmail recognises
            (what to do with the route or the message, for how long, and a
            hint for the user), or None for an ordinary reply that the
            generic table in outcome.py handles.
Security:   reply texts come from the relay; they are matched, never
            evaluated, and never reach a shell.
See also:   outcome.py (the generic reply table, which consults this one);
            every fact below names the provider's page it comes from.  The
            limits are the published defaults for an ordinary account; a
            paid or raised account sets its own with rate_per_day etc.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pysendmail.core.errors import ConfigError

# What a recognised reply does.
PAUSE = "pause"  # the whole route waits ``seconds`` (quota, block): messages kept, no attempt
HOLD_ROUTE = "hold-route"  # credentials refused: the route holds with growing backoff
HOLD_MESSAGE = "hold-message"  # this message cannot leave as it is (sender not owned): held for the admin
DEFER = "defer"  # ordinary temporary failure, with a hint
BOUNCE = "bounce"  # permanent, with a hint

DAY = 86400


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: str
    title: str
    host: str
    port: int
    tls: str  # implicit | starttls
    auth: str  # what the password is: "app password", "API key", "SMTP credentials", "password"
    oauth2: bool  # XOAUTH2 offered (oauth_token_command)
    from_policy: str  # keep | rewrite
    max_recipients_per_message: int  # 0: no published limit
    rate_per_minute: int  # messages; 0: none published
    rate_per_day: int  # in rate_unit; 0: none published
    spf_include: str  # what the domain's SPF record must include, "" when none applies
    username_hint: str
    password_hint: str
    notes: tuple[str, ...] = field(default_factory=tuple)
    # What rate_per_day counts: "messages" (one per transaction) or
    # "recipients" (each RCPT), as the provider's own limit is written.
    rate_unit: str = "messages"
    # Parallel connections the provider takes from one account; 0: none
    # published, relay.pool_size decides.  A preset's number caps pool_size.
    max_connections: int = 0


PRESETS: dict[str, Preset] = {
    # Yandex Mail: "Mail clients" help page (smtp.yandex.ru, port 465, SSL;
    # app passwords: Yandex ID "App passwords"); "Sending a large number of
    # messages" (yandex.com/support/mail/web/letter/create/send-many-letters):
    # 500 emails per 24 hours counting each recipient, 35 recipients per
    # message over SMTP, a block of 24 hours, extended by 24 hours when
    # sending is tried during it.  Yandex refuses a MAIL FROM that is not
    # the login ("553 5.7.1 Sender address rejected: not owned by auth
    # user"), hence rewrite.  SPF: Yandex 360 "Set up SPF" (include:_spf.yandex.net).
    "yandex": Preset(
        name="yandex", title="Yandex Mail", host="smtp.yandex.ru", port=465, tls="implicit", auth="app password",
        oauth2=True, from_policy="rewrite",
        max_recipients_per_message=35, rate_per_minute=0, rate_per_day=500, spf_include="_spf.yandex.net",
        username_hint="your full Yandex address",
        password_hint="an app password for Mail (id.yandex.com > Security > App passwords)",
        rate_unit="recipients",  # "500 emails per 24 hours counting each recipient"
    ),
    # Gmail: "Check Gmail through other email platforms" (smtp.gmail.com,
    # 465 SSL / 587 TLS); "Sign in with app passwords" (needs 2-Step
    # Verification); "Gmail sending limits" (support.google.com/mail/answer/22839):
    # 500 recipients per day for a free account, and for Workspace
    # (support.google.com/a/answer/166852) 2,000 messages per day and 100
    # recipients per message over SMTP for POP/IMAP users.  Gmail replaces
    # a From it does not know with the account, so rewrite says it openly.
    # SPF: "Set up SPF" for Workspace (include:_spf.google.com).
    "gmail": Preset(
        name="gmail", title="Gmail / Google Workspace", host="smtp.gmail.com", port=465, tls="implicit",
        auth="app password", oauth2=True, from_policy="rewrite",
        max_recipients_per_message=100, rate_per_minute=0, rate_per_day=500, spf_include="_spf.google.com",
        username_hint="your full Gmail or Workspace address",
        password_hint="a 16-letter app password (myaccount.google.com/apppasswords; needs 2-Step Verification)",
        rate_unit="recipients",  # Gmail's limit is on recipients per day
    ),
    # Mail.ru: help.mail.ru "Настройка почтовой программы" (smtp.mail.ru, 465
    # SSL) and "Пароли для внешних приложений" (app passwords).  No sending
    # limits are published, so none are set.  Mail.ru refuses a sender that
    # is not the mailbox, hence rewrite.  SPF: include:_spf.mail.ru (Mail.ru
    # for business, "SPF record").
    "mailru": Preset(
        name="mailru", title="Mail.ru", host="smtp.mail.ru", port=465, tls="implicit", auth="app password",
        oauth2=False, from_policy="rewrite",
        max_recipients_per_message=0, rate_per_minute=0, rate_per_day=0, spf_include="_spf.mail.ru",
        username_hint="your full Mail.ru address",
        password_hint="a password for external applications (Mail.ru settings > Security)",
    ),
    # Office 365 / Outlook: "How to set up a multifunction device or
    # application to send email using Microsoft 365" (smtp.office365.com,
    # 587, STARTTLS, SMTP AUTH client submission); "Authenticate an IMAP,
    # POP or SMTP connection using OAuth" (XOAUTH2); "Exchange Online
    # limits", Sending limits: 30 messages per minute, 10,000 recipients per
    # day, 500 recipients per message.  The sender must be the mailbox or
    # one it may send as (554 5.2.252 SendAsDenied), hence rewrite.  SPF:
    # include:spf.protection.outlook.com ("Set up SPF to help prevent spoofing").
    "outlook": Preset(
        name="outlook", title="Microsoft 365 / Outlook", host="smtp.office365.com", port=587, tls="starttls",
        auth="password or OAuth2", oauth2=True,
        from_policy="rewrite", max_recipients_per_message=500, rate_per_minute=30, rate_per_day=10000,
        spf_include="spf.protection.outlook.com", username_hint="the mailbox's address",
        password_hint="the mailbox password (SMTP AUTH must be enabled for it) or an OAuth2 token command",
        rate_unit="recipients",  # "10,000 recipients per day"
        # "Message storage and concurrent connection throttling for SMTP
        # Authenticated Submission" (learn.microsoft.com): "Up to three
        # concurrent connections", a fourth gets "432 4.3.2 Concurrent
        # connections limit exceeded".
        max_connections=3,
    ),
    # Fastmail: "Server names and ports" (smtp.fastmail.com, 465 SSL/TLS,
    # or 587 STARTTLS) and "App passwords" (required for SMTP).  Fastmail
    # lets you send from your verified aliases and domains only: rewrite,
    # listing them in allowed_senders.  "Account limits" publishes no
    # SMTP figures usable here, so none are set.  SPF: "Setting up your
    # domain" (include:spf.messagingengine.com).
    "fastmail": Preset(
        name="fastmail", title="Fastmail", host="smtp.fastmail.com", port=465, tls="implicit", auth="app password",
        oauth2=False, from_policy="rewrite",
        max_recipients_per_message=0, rate_per_minute=0, rate_per_day=0, spf_include="spf.messagingengine.com",
        username_hint="your Fastmail login address",
        password_hint="an app password with SMTP access (Settings > Privacy & Security > App passwords)",
    ),
    # Amazon SES: "Connecting to an Amazon SES SMTP endpoint"
    # (email-smtp.<region>.amazonaws.com, 587 STARTTLS or 465 TLS Wrapper);
    # "Obtaining Amazon SES SMTP credentials" (not the AWS keys);
    # "Service quotas in Amazon SES": 50 recipients per message; a new
    # (sandbox) account may send 200 messages per 24 hours at 1 per second.
    # Any verified identity may be the sender, so keep.  SPF: SES's own
    # MAIL FROM domain passes SPF; a custom MAIL FROM domain includes
    # amazonses.com ("Using a custom MAIL FROM domain").
    "ses": Preset(
        name="ses", title="Amazon SES", host="email-smtp.{region}.amazonaws.com", port=587, tls="starttls",
        auth="SMTP credentials", oauth2=False,
        from_policy="keep", max_recipients_per_message=50, rate_per_minute=60, rate_per_day=200,
        spf_include="amazonses.com", username_hint="the SMTP user name from the SES console (not the AWS access key)",
        password_hint="the SMTP password from the SES console",
        notes=("the limits are the sandbox's: set rate_per_day and rate_per_minute to your account's quota",),
        rate_unit="recipients",  # SES's sending quota counts recipients ("Service quotas in Amazon SES")
    ),
    # SendGrid: "Integrating with the SMTP API" (smtp.sendgrid.net, 587
    # STARTTLS or 465 SSL; user name the literal "apikey", password an API
    # key); up to 1,000 recipients per message ("SMTP Service Crash
    # Course"/API limits); the free plan's 100 messages per day.  Any
    # verified Sender Identity may send: keep.  SPF: include:sendgrid.net.
    "sendgrid": Preset(
        name="sendgrid", title="Twilio SendGrid", host="smtp.sendgrid.net", port=587, tls="starttls", auth="API key",
        oauth2=False, from_policy="keep",
        max_recipients_per_message=1000, rate_per_minute=0, rate_per_day=100, spf_include="sendgrid.net",
        username_hint="the literal word apikey", password_hint="an API key with Mail Send permission",
    ),
    # Mailgun: "Sending via SMTP" (smtp.mailgun.org, or smtp.eu.mailgun.org
    # for EU domains; 587 STARTTLS or 465); SMTP credentials per domain;
    # 1,000 recipients per message ("Batch Sending").  Any address on the
    # sending domain: keep.  SPF: include:mailgun.org ("Verifying Your Domain").
    "mailgun": Preset(
        name="mailgun", title="Mailgun", host="smtp.mailgun.org", port=587, tls="starttls", auth="SMTP credentials",
        oauth2=False, from_policy="keep",
        max_recipients_per_message=1000, rate_per_minute=0, rate_per_day=0, spf_include="mailgun.org",
        username_hint="the SMTP login of your sending domain (postmaster@mg.example.org)",
        password_hint="that login's SMTP password",
    ),
    # custom: the user's own relay; nothing is assumed, and without a
    # provider the DESIGN.md contract holds: MAIL FROM is never rewritten.
    "custom": Preset(
        name="custom", title="your own relay", host="", port=0, tls="implicit", auth="password", oauth2=False,
        from_policy="keep", max_recipients_per_message=0, rate_per_minute=0, rate_per_day=0, spf_include="",
        username_hint="the relay's login", password_hint="the relay's password",
    ),
}


def preset(name: str, region: str | None = None, where: str = "relay") -> Preset:
    try:
        p = PRESETS[name]
    except KeyError:
        raise ConfigError(
            f"{where}.provider = {name!r} is not a provider pysendmail knows; use one of "
            f"{', '.join(sorted(PRESETS))} (custom: set host, port and tls yourself)"
        ) from None
    if "{region}" in p.host:
        if not region:
            raise ConfigError(f"{where}.provider = {name!r} needs {where}.region (for example \"eu-west-1\")")
        if not all(c.isalnum() or c == "-" for c in region):
            raise ConfigError(f"{where}.region {region!r} is not an AWS region name like eu-west-1")
        p = Preset(**{**p.__dict__, "host": p.host.format(region=region)})
    return p


# ---------------------------------------------------------------- replies
@dataclass(frozen=True)
class Verdict:
    kind: str  # a short name for logs and status: daily-quota, spam-block, ...
    action: str  # PAUSE, HOLD_ROUTE, HOLD_MESSAGE, DEFER, BOUNCE
    seconds: int  # for PAUSE: how long the window lasts
    hint: str  # what the user should do, one sentence


@dataclass(frozen=True)
class _Rule:
    providers: tuple[str, ...]  # empty: any provider
    codes: tuple[int, ...]  # empty: any code
    needles: tuple[str, ...]  # all must appear in the lowercased reply
    stages: tuple[str, ...]  # empty: any stage (auth, mail, rcpt, data)
    verdict: Verdict


def _r(providers: str, codes: str, needles: tuple[str, ...], stages: str, kind: str, action: str,
       seconds: int, hint: str) -> _Rule:
    return _Rule(tuple(providers.split()), tuple(int(c) for c in codes.split()), needles, tuple(stages.split()),
                 Verdict(kind, action, seconds, hint))


# First match wins: provider-specific texts before the generic ones.
RULES: tuple[_Rule, ...] = (
    # Gmail: "Gmail SMTP errors and codes" (support.google.com/a/answer/3726730):
    # 550 5.4.5 Daily user sending limit exceeded; 534 5.7.9
    # Application-specific password required; 535 5.7.8 Username and
    # Password not accepted; 421/454 4.7.0 for too many logins or rate.
    _r("gmail", "550 450 421", ("5.4.5",), "", "daily-quota", PAUSE, DAY,
       "Gmail's daily sending limit is used up; mail waits until it resets (24 h) or lower the volume"),
    _r("", "534", ("5.7.9",), "auth", "app-password-required", HOLD_ROUTE, 0,
       "the provider wants an app password, not the account password: create one and put it in the password file"),
    _r("", "", ("application-specific password",), "auth", "app-password-required", HOLD_ROUTE, 0,
       "the provider wants an app password, not the account password: create one and put it in the password file"),
    # Yandex: "Errors when sending" in Yandex Mail help: 554 5.7.1 Message
    # rejected under suspicion of SPAM blocks the mailbox's sending for 24 h
    # and every try during the block extends it ("Sending a large number of
    # messages"); 535 "This user does not have access rights to this
    # service" means mail clients are off or an app password is needed.
    _r("yandex", "554 550", ("suspicion of spam",), "", "spam-block", PAUSE, DAY,
       "Yandex blocked sending from this mailbox for 24 h as suspected spam; pysendmail waits without trying "
       "(each try extends the block); check what was sent and lower the volume"),
    _r("yandex", "535", ("access rights",), "auth", "app-password-required", HOLD_ROUTE, 0,
       "Yandex wants an app password for Mail and mail clients allowed in the mailbox settings"),
    # Office 365: "Fix email delivery issues for error code 5.2.0" /
    # "SubmissionQuotaExceededException" (the sending limit of Exchange
    # Online limits, recipients per day); 5.7.139 / 5.7.3 "SmtpClientAuthentication
    # is disabled" ("Enable or disable SMTP AUTH in Exchange Online");
    # 5.2.252 SendAsDenied (the From is not the mailbox).
    _r("outlook", "554 550 452", ("submissionquotaexceeded",), "", "daily-quota", PAUSE, DAY,
       "Microsoft 365's daily recipient limit (10,000) is used up; mail waits 24 h"),
    _r("outlook", "535 550", ("smtpclientauthentication is disabled",), "auth", "smtp-auth-disabled", HOLD_ROUTE, 0,
       "SMTP AUTH is disabled for this mailbox: enable authenticated SMTP for it in the Microsoft 365 admin center"),
    # SES: "Errors related to the sending quotas for your Amazon SES
    # account": 454 Throttling failure: Daily message quota exceeded /
    # Maximum sending rate exceeded; the advice is to wait up to 10 minutes.
    _r("ses", "454", ("daily message quota exceeded",), "", "daily-quota", PAUSE, DAY,
       "SES's 24-hour sending quota is used up; mail waits, or request a higher quota in the SES console"),
    _r("ses", "454", ("maximum sending rate exceeded",), "", "rate-limit", PAUSE, 600,
       "SES's per-second sending rate was exceeded; mail waits 10 minutes; lower relay.rate_per_minute"),
    _r("", "454", ("throttling failure",), "", "rate-limit", PAUSE, 600,
       "the relay throttles this account; mail waits 10 minutes"),
    # Any provider: RFC 4954 section 6, and the texts providers use.
    _r("", "454 421", ("too many login",), "", "too-many-logins", PAUSE, 1800,
       "the provider refuses logins after too many attempts; mail waits 30 minutes (check the password first)"),
    _r("", "", ("not owned by auth user",), "mail", "sender-not-owned", HOLD_MESSAGE, 0,
       "the relay refuses this sender for this account: set from_policy = \"rewrite\" for the route, or send "
       "with -f set to the account's address, then 'pysendmail queue release ID'"),
    _r("", "", ("sendasdenied",), "", "sender-not-owned", HOLD_MESSAGE, 0,
       "the mailbox may not send as this From: set from_policy = \"rewrite\" or grant Send As, "
       "then 'pysendmail queue release ID'"),
    _r("", "553 550 554", ("5.7.1", "sender address rejected"), "mail", "sender-not-owned", HOLD_MESSAGE, 0,
       "the relay refuses this sender for this account: set from_policy = \"rewrite\" or list it in "
       "allowed_senders only if the account owns it, then 'pysendmail queue release ID'"),
    _r("", "535 534 530 538", (), "auth", "auth-failed", HOLD_ROUTE, 0,
       "the relay refused the user name or password: check username and the password (file or command)"),
)


def explain(provider: str | None, code: int, text: str, stage: str) -> Verdict | None:
    """The Verdict for a recognised reply, else None (outcome.py's generic table decides)."""
    low = text.lower()
    for rule in RULES:
        if rule.providers and provider not in rule.providers:
            continue
        if rule.codes and code not in rule.codes:
            continue
        if rule.stages and stage not in rule.stages:
            continue
        if all(n in low for n in rule.needles):
            return rule.verdict
    return None
