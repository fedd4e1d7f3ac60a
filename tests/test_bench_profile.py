"""bench/profile.py: py-spy raw stacks summarised into self and inclusive time."""

from __future__ import annotations

from pathlib import Path

from bench import profile

RAW = """\
main (proxy/cli.py:10);handle (proxy/routes.py:20);dumps (json/__init__.py:231) 30
main (proxy/cli.py:10);handle (proxy/routes.py:20);send (aiohttp/http_writer.py:116) 50
main (proxy/cli.py:10);handle (proxy/routes.py:21);handle (proxy/routes.py:20) 20
garbage line without a count
"""


def test_parse_and_top_frames(tmp_path: Path) -> None:
    stacks = profile.parse(RAW)
    assert len(stacks) == 3 and sum(c for _, c in stacks) == 100
    assert profile.top_self(stacks, 2) == [("send (aiohttp/http_writer.py:116)", 50),
                                           ("dumps (json/__init__.py:231)", 30)]
    inclusive = dict(profile.top_inclusive(stacks, 10, "proxy/"))
    # A frame that appears twice in one stack (recursion) is counted once for it.
    assert inclusive["handle (proxy/routes.py:20)"] == 100
    assert inclusive["handle (proxy/routes.py:21)"] == 20
    assert "send (aiohttp/http_writer.py:116)" not in inclusive
    charged = dict(profile.top_attributed(stacks, 10, "proxy/"))
    assert charged == {"handle (proxy/routes.py:20)": 100}
    assert profile.top_attributed(stacks, 10, "nothing/") == [("(outside nothing/)", 100)]


def test_summary_shows_shares(tmp_path: Path) -> None:
    path = tmp_path / "p.txt"
    path.write_text(RAW)
    text = profile.summary(path, n=3)
    assert text.startswith("100 samples.")
    assert " 50.0%  send (aiohttp/http_writer.py:116)" in text
    assert "100.0%  main (proxy/cli.py:10)" in text
    empty = tmp_path / "e.txt"
    empty.write_text("")
    assert "no samples" in profile.summary(empty)
