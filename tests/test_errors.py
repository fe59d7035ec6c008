"""Every FluxError class has its status stated in one table, and lives in flux.errors."""

from __future__ import annotations

import importlib
import pkgutil

import flux
from flux import errors
from flux.api.errors import STATUS, status_of


def all_subclasses(cls: type) -> set[type]:
    found: set[type] = set()
    for sub in cls.__subclasses__():
        found |= {sub, *all_subclasses(sub)}
    return found


def import_every_module() -> None:
    for info in pkgutil.walk_packages(flux.__path__, "flux."):
        if info.name != "flux.__main__":
            importlib.import_module(info.name)


def test_every_flux_error_has_a_stated_status() -> None:
    import_every_module()
    classes = {errors.FluxError, *all_subclasses(errors.FluxError)}
    missing = sorted(c.__qualname__ for c in classes if c not in STATUS)
    assert missing == []
    assert len(classes) >= 20


def test_every_flux_error_is_defined_in_flux_errors() -> None:
    import_every_module()
    elsewhere = sorted(
        f"{c.__module__}.{c.__qualname__}"
        for c in all_subclasses(errors.FluxError)
        if c.__module__ != "flux.errors"
    )
    assert elsewhere == []


def test_statuses_are_the_documented_ones() -> None:
    assert status_of(errors.NamespaceNotFound("x")) == 401
    assert status_of(errors.OriginNotAllowed("x")) == 403
    assert status_of(errors.LogCorrupt("x")) == 500
    assert status_of(errors.LogUnavailable("x")) == 503
    assert status_of(errors.PayloadTooLarge(2, 1)) == 413
    assert all(400 <= status <= 599 for status in STATUS.values())
