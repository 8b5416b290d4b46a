"""How a TCP connect that never got established failed, told from its socket error.

Shared by every gadget that sees connects fail (tcpconnect reports each attempt, tcplife
reports failed ones with ``--failed-connects``), so that both name an outcome alike.
"""

from __future__ import annotations

import errno

#: Names of failed outcomes, in the order they are documented.
FAILURES = ("refused", "timeout", "unreachable", "error", "aborted")

_ERRNO_RESULT = {
    errno.ECONNREFUSED: "refused",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "unreachable",
    errno.ENETUNREACH: "unreachable",
    errno.EHOSTDOWN: "unreachable",
    errno.ENONET: "unreachable",
}


def failure(err: int, sport: int) -> str:
    """Name a close from SYN_SENT.

    The socket error says why: ECONNREFUSED is an RST, ETIMEDOUT the kernel giving up
    after its SYN retries, EHOSTUNREACH and ENETUNREACH an ICMP error. With no error
    the caller closed the socket before an answer came (``aborted``), unless no source
    port was ever bound, which means the connect failed locally before sending
    (``error``).
    """
    if err:
        return _ERRNO_RESULT.get(err, "error")
    return "aborted" if sport else "error"
