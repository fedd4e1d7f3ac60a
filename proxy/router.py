"""Which handler serves a method and path: exact paths, plus paths ending in one
``{name}`` segment (``/v1/models/{model}``). A dict lookup on the hot routes.

A path no route has is a 404; a path served for other methods a 405 naming them.
``HEAD`` is served wherever ``GET`` is (the server drops the body).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import unquote

from proxy.request import Request
from proxy.response import Response, StreamResponse, json_response

Handler = Callable[[Request], Awaitable[Response | StreamResponse]]


class RouteError(Exception):
    """No handler: ``status`` is 404 or 405; ``allow`` lists the methods that exist."""

    def __init__(self, status: int, allow: tuple[str, ...] = ()) -> None:
        super().__init__(status)
        self.status = status
        self.allow = allow

    @property
    def reason(self) -> str:
        return "Not Found" if self.status == 404 else "Method Not Allowed"

    def response(self, method: str, path: str) -> Response:
        """The OpenAI-format reply, with ``Allow`` on a 405."""
        code = "not_found" if self.status == 404 else "method_not_allowed"
        body = {"error": {"message": f"{method} {path}: {self.reason}",
                          "type": "invalid_request_error", "param": None, "code": code}}
        headers = {"Allow": ",".join(self.allow)} if self.allow else None
        return json_response(body, self.status, headers)


class Routes:
    """The route table of one listening port, and that port's body-size limit."""

    def __init__(self, max_body_bytes: int = 1024 ** 2) -> None:
        self.max_body_bytes = max_body_bytes
        self._exact: dict[str, dict[str, Handler]] = {}
        # (prefix, parameter name, handlers by method) for "/prefix/{name}" paths.
        self._tails: list[tuple[str, str, dict[str, Handler]]] = []

    def add(self, method: str, path: str, handler: Handler) -> None:
        if "{" in path:
            prefix, _, param = path.rpartition("/")
            if not (param.startswith("{") and param.endswith("}")) or "{" in prefix:
                raise ValueError(f"only a last {{name}} segment is supported: {path!r}")
            name = param[1:-1]
            for p, n, methods in self._tails:
                if p == prefix + "/" and n == name:
                    methods[method] = handler
                    return
            self._tails.append((prefix + "/", name, {method: handler}))
            return
        self._exact.setdefault(path, {})[method] = handler

    def get(self, path: str, handler: Handler) -> None:
        self.add("GET", path, handler)

    def post(self, path: str, handler: Handler) -> None:
        self.add("POST", path, handler)

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        """The handler and the path's parameters; RouteError when there is none."""
        methods = self._exact.get(path)
        params: dict[str, str] = {}
        if methods is None:
            for prefix, name, tail_methods in self._tails:
                if path.startswith(prefix):
                    rest = path[len(prefix):]
                    if rest and "/" not in rest:
                        methods, params = tail_methods, {name: unquote(rest)}
                        break
            else:
                raise RouteError(404)
        handler = methods.get(method)
        if handler is None and method == "HEAD":
            handler = methods.get("GET")
        if handler is None:
            allow = tuple(sorted({*methods, *(("HEAD",) if "GET" in methods else ())}))
            raise RouteError(405, allow)
        return handler, params
