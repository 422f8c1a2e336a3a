"""The registry: decorators, entry points, lazy loading and did-you-mean errors."""

from __future__ import annotations

import sys

import pytest

from editbench.api import EditbenchError
from editbench.registry import EDITORS, Registry, UnknownNameError


def test_builtin_editors_come_from_entry_points_lazily():
    names = EDITORS.names()
    assert {"ft_m", "locft_bf"} <= set(names)
    cls = EDITORS.get("locft_bf")
    assert cls.name == "locft_bf"
    assert cls.__module__ == "editors.locft_bf"


def test_unknown_editor_suggests_close_names():
    with pytest.raises(UnknownNameError, match=r"unknown editor 'locft-bf'; did you mean 'locft_bf'"):
        EDITORS.get("locft-bf")


def test_decorator_and_duplicates():
    reg: Registry[type] = Registry("widget")

    @reg.register("a")
    class A:
        pass

    assert reg.get("a") is A and "a" in reg and reg.names() == ["a"]
    with pytest.raises(EditbenchError, match="registered twice"):
        reg.register("a")(type("B", (), {}))


def test_entry_point_module_that_does_not_register(monkeypatch):
    reg: Registry[type] = Registry("widget")
    reg._lazy = {"broken": lambda: sys.modules["json"]}
    with pytest.raises(EditbenchError, match="module json did not register 'broken'"):
        reg.get("broken")
