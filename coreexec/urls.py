"""URLs fit to show: any password masked, in userinfo or in a ``password=`` parameter."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_PARAMS = frozenset({"password", "sslpassword", "secret", "token"})


def masked_url(url: str) -> str:
    """``url`` with its password (and password-like query parameters) replaced by ``***``.

    Messages, events, logs and ``--help`` show URLs through this only.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        # Not a URL we can take apart (a bad port, say): show only its scheme.
        return url.split("://", 1)[0] + "://" + MASK if "://" in url else MASK
    netloc = parts.netloc
    if password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostinfo}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name.lower() in _SECRET_PARAMS for name, _ in pairs):
            masked = [(n, MASK if n.lower() in _SECRET_PARAMS else v) for n, v in pairs]
            query = urlencode(masked, safe="*")
    return urlunsplit(parts._replace(netloc=netloc, query=query))
