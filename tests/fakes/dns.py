"""A real DNS server on loopback for tests: dnspython wire format, UDP and TCP.

``DnsServer(records).start()`` answers on 127.0.0.1 (``host``, ``port``),
UDP and TCP on the same port, from a dict: ``{"mail._domainkey.example.org":
"v=DKIM1; k=rsa; p=..."}``.  A TXT value may be a str (split into 255-octet
character-strings, as a zone file would hold a long DKIM key), a list of
str (one TXT record each) or a list of lists (the exact character-strings
of each record).  Other types through ``add(name, "MX", "10 mx.example.org.")``.

An unknown name gets NXDOMAIN; a known name without that type gets an
empty NOERROR answer (NODATA).  ``servfail`` (a set of names) answers
SERVFAIL for them; ``drop`` (a set of names) never answers, for timeouts.
A UDP answer larger than the client allows (512, or its EDNS size) goes
out truncated (TC), so the client must retry over TCP, as a real one does.
``queries`` records every (name, type, "udp"|"tcp") asked.

Point a resolver at it: dnspython ``Resolver(configure=False)`` with
``nameservers = ["127.0.0.1"]`` and ``port = server.port``; Perl's Net::DNS
``Net::DNS::Resolver->new(nameservers => ["127.0.0.1"], port => N)``.
"""

from __future__ import annotations

import socket
import socketserver
import struct
import threading

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TxtValue = str | list[str] | list[list[str]]


def _txt_strings(value: str) -> list[str]:
    """A long TXT value split into character-strings of at most 255 octets."""
    raw = value.encode()
    return [raw[i : i + 255].decode("latin-1") for i in range(0, len(raw), 255)] or [""]


def _txt_rdata(strings: list[str]) -> dns.rdata.Rdata:
    text = " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in strings)
    return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, text)


class DnsServer:
    def __init__(self, records: dict[str, TxtValue] | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.ttl = 60
        self.lock = threading.Lock()
        self._data: dict[tuple[dns.name.Name, int], list[dns.rdata.Rdata]] = {}
        self._names: set[dns.name.Name] = set()
        self.servfail: set[str] = set()
        self.drop: set[str] = set()
        self.queries: list[tuple[str, str, str]] = []
        for name, value in (records or {}).items():
            self.set_txt(name, value)
        self._udp: socketserver.ThreadingUDPServer | None = None
        self._tcp: socketserver.ThreadingTCPServer | None = None
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ records
    @staticmethod
    def _name(name: str) -> dns.name.Name:
        return dns.name.from_text(name.rstrip(".") + ".")

    def set_txt(self, name: str, value: TxtValue) -> None:
        """Replace the TXT records of ``name``."""
        if isinstance(value, str):
            rdatas = [_txt_rdata(_txt_strings(value))]
        else:
            rdatas = [_txt_rdata(_txt_strings(v) if isinstance(v, str) else list(v)) for v in value]
        key = self._name(name)
        with self.lock:
            self._data[(key, dns.rdatatype.TXT)] = rdatas
            self._names.add(key)

    def add(self, name: str, rdtype: str, text: str) -> None:
        """Add one record of any type, in zone-file text ("10 mx.example.org.")."""
        key = self._name(name)
        kind = dns.rdatatype.from_text(rdtype)
        rdata = dns.rdata.from_text(dns.rdataclass.IN, kind, text)
        with self.lock:
            self._data.setdefault((key, kind), []).append(rdata)
            self._names.add(key)

    def remove(self, name: str) -> None:
        """Forget every record of ``name`` (it becomes NXDOMAIN)."""
        key = self._name(name)
        with self.lock:
            self._names.discard(key)
            for k in [k for k in self._data if k[0] == key]:
                del self._data[k]

    # ------------------------------------------------------------ answering
    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The reply to one query in wire format, or None to stay silent."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None
        if not query.question:
            return None
        q = query.question[0]
        qname = q.name.to_text().rstrip(".").lower()
        with self.lock:
            self.queries.append((qname, dns.rdatatype.to_text(q.rdtype), transport))
            if qname in {n.lower().rstrip(".") for n in self.drop}:
                return None
            reply = dns.message.make_response(query)
            reply.flags |= dns.flags.AA
            if qname in {n.lower().rstrip(".") for n in self.servfail}:
                reply.set_rcode(dns.rcode.SERVFAIL)
            elif q.name not in self._names:
                reply.set_rcode(dns.rcode.NXDOMAIN)
            else:
                rdatas = self._data.get((q.name, q.rdtype), [])
                if rdatas:
                    rrset = dns.rrset.from_rdata_list(q.name, self.ttl, rdatas)
                    reply.answer.append(rrset)
        if transport == "tcp":
            return reply.to_wire()
        limit = max(512, query.payload if query.edns >= 0 else 512)
        try:
            return reply.to_wire(max_size=limit)
        except dns.exception.TooBig:
            short = dns.message.make_response(query)
            short.flags |= dns.flags.AA | dns.flags.TC
            return short.to_wire()

    # ------------------------------------------------------------ servers
    def start(self) -> "DnsServer":
        server = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                out = server.answer(data, "udp")
                if out is not None:
                    sock.sendto(out, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = self.request
                conn.settimeout(10)
                try:
                    while True:
                        head = _read_exact(conn, 2)
                        if head is None:
                            return
                        body = _read_exact(conn, struct.unpack("!H", head)[0])
                        if body is None:
                            return
                        out = server.answer(body, "tcp")
                        if out is None:
                            return
                        conn.sendall(struct.pack("!H", len(out)) + out)
                except OSError:
                    return

        # UDP and TCP on the same port: bind UDP to a free port, then TCP
        # to it; if another program holds that TCP port, try another.
        for _ in range(50):
            udp = socketserver.ThreadingUDPServer((self.host, 0), Udp)
            port = udp.server_address[1]
            try:
                tcp = socketserver.ThreadingTCPServer((self.host, port), Tcp, bind_and_activate=False)
                tcp.allow_reuse_address = True
                tcp.server_bind()
                tcp.server_activate()
            except OSError:
                udp.server_close()
                continue
            break
        else:  # pragma: no cover - loopback exhausted
            raise RuntimeError("no free port for the fake DNS server")
        udp.daemon_threads = tcp.daemon_threads = True
        self._udp, self._tcp, self.port = udp, tcp, int(port)
        for srv in (udp, tcp):
            t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for srv in (self._udp, self._tcp):
            if srv is not None:
                srv.shutdown()
                srv.server_close()
        for t in self._threads:
            t.join(5)
        self._threads = []

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def resolver(self) -> "dns.resolver.Resolver":
        """A dnspython resolver that asks this server only."""
        import dns.resolver

        res = dns.resolver.Resolver(configure=False)
        res.nameservers = [self.host]
        res.port = self.port
        res.timeout = res.lifetime = 5
        return res


def _read_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
