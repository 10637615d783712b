"""``from crlf.hub import HubEncoder``, the path the README has always shown: the code is in :mod:`crlf.publish.hub`."""

from crlf.publish.hub import HubEncoder

__all__ = ["HubEncoder"]
