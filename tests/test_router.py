"""The route table: exact paths, one ``{name}`` tail, 404 and 405 with the allowed methods."""

from __future__ import annotations

import pytest

from proxy.request import Request
from proxy.response import Response
from proxy.router import RouteError, Routes


async def one(request: Request) -> Response:
    return Response(b"1")


async def two(request: Request) -> Response:
    return Response(b"2")


def table() -> Routes:
    routes = Routes()
    routes.post("/v1/chat/completions", one)
    routes.get("/v1/models", one)
    routes.get("/v1/models/{model}", two)
    routes.add("DELETE", "/v1/models/{model}", one)
    return routes


def test_exact_and_tail_routes_resolve_with_their_parameters() -> None:
    routes = table()
    assert routes.resolve("POST", "/v1/chat/completions") == (one, {})
    assert routes.resolve("GET", "/v1/models") == (one, {})
    assert routes.resolve("GET", "/v1/models/gpt-4o%20mini") == (two, {"model": "gpt-4o mini"})
    assert routes.resolve("DELETE", "/v1/models/x") == (one, {"model": "x"})
    assert routes.resolve("HEAD", "/v1/models") == (one, {})  # HEAD rides on GET


@pytest.mark.parametrize("path", ["/v1/nothing", "/v1/models/", "/v1/models/a/b",
                                  "/v1/chat/completions/"])
def test_unknown_paths_are_404(path: str) -> None:
    with pytest.raises(RouteError) as e:
        table().resolve("GET", path)
    assert e.value.status == 404 and e.value.reason == "Not Found"


def test_wrong_method_is_405_naming_the_methods_that_exist() -> None:
    with pytest.raises(RouteError) as e:
        table().resolve("GET", "/v1/chat/completions")
    assert (e.value.status, e.value.allow) == (405, ("POST",))
    with pytest.raises(RouteError) as e:
        table().resolve("POST", "/v1/models/x")
    assert e.value.allow == ("DELETE", "GET", "HEAD")


def test_only_a_last_parameter_segment_is_accepted() -> None:
    with pytest.raises(ValueError):
        Routes().get("/v1/{a}/models", one)
