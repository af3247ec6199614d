"""The cookie jar of every upstream client: it never keeps a cookie.

One client serves every tenant (the ingress's pooled client, the worker's SDK client), so
a `Set-Cookie` from an upstream (an Azure resource, a gateway, a spillover resource) kept
in a jar would be sent on later calls of other tenants. httpx2 keeps whatever jar it is
given as is (`Cookies(jar)`), extracts into it after every response and adds its cookies
to every request: a jar that stores nothing makes both no-ops.
"""

from __future__ import annotations

import http.cookiejar
from typing import Any


class NoCookieJar(http.cookiejar.CookieJar):
    """A `CookieJar` that drops every cookie it is given (empty, so it never sends one)."""

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        """Drop it."""

    def set_cookie_if_ok(self, cookie: http.cookiejar.Cookie, request: Any) -> None:
        """Drop it."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        """Keep nothing of a response's `Set-Cookie`."""
