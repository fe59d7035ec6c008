"""GET /api/state/groups: one level of the id tree, grouped and paged, as the console reads it;
private namespaces hidden from callers who may not read them; bad input is a JSON 400."""

from __future__ import annotations

from pathlib import Path

import pytest

from .authkit import ADMIN, bearer, open_client, publish, register
from .conftest import ClientFactory
from .helpers import EventFactory


def test_groups_count_and_page(make_client: ClientFactory, event: EventFactory) -> None:
    client = make_client()
    ids = [f"farm/cow-{n}" for n in range(5)] + ["farm/barn:1", "farm/barn:2", "city/lamp"]
    for entity_id in ids:
        assert client.post("/api/events", json=event(entity_id, {"on": True})).status_code == 200
    root = client.get("/api/state/groups").json()
    assert {g["prefix"]: g["count"] for g in root["groups"]} == {"city/": 1, "farm/": 7}
    assert root["entities"] == [] and root["next"] is None and root["prefix"] == ""
    farm = client.get("/api/state/groups", params={"prefix": "farm/", "delimiter": "/:"}).json()
    assert farm["groups"] == [{"prefix": "farm/barn:", "count": 2}]
    assert [e["id"] for e in farm["entities"]] == [f"farm/cow-{n}" for n in range(5)]
    assert farm["total"] == 7
    assert set(farm["entities"][0]) == {"id", "properties", "lastUpdated", "version"}
    # Pages of 4 items: the group, then cows 0-2; then cows 3-4.
    page = client.get(
        "/api/state/groups", params={"prefix": "farm/", "delimiter": "/:", "limit": 4}
    )
    first = page.json()
    assert len(first["groups"]) + len(first["entities"]) == 4
    assert first["next"] == "farm/cow-2"
    rest = client.get(
        "/api/state/groups",
        params={"prefix": "farm/", "delimiter": "/:", "limit": 4, "after": first["next"]},
    ).json()
    assert [e["id"] for e in rest["entities"]] == ["farm/cow-3", "farm/cow-4"]
    assert rest["next"] is None
    found = client.get("/api/state/groups", params={"prefix": "farm/", "q": "COW-3"}).json()
    assert [e["id"] for e in found["entities"]] == ["farm/cow-3"] and found["total"] == 1


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"limit": "x"}, "invalid `limit`: expected an integer"),
        ({"limit": "0"}, "invalid `limit`: expected 1 to 1000"),
        ({"limit": "1001"}, "invalid `limit`: expected 1 to 1000"),
        ({"delimiter": ""}, "invalid `delimiter`: expected 1 to 8 characters"),
        ({"delimiter": "/:-._,;|!"}, "invalid `delimiter`: expected 1 to 8 characters"),
    ],
)
def test_bad_parameters_are_a_json_400(
    make_client: ClientFactory, params: dict[str, str], message: str
) -> None:
    answer = make_client().get("/api/state/groups", params=params)
    assert answer.status_code == 400
    assert answer.json() == {"error": message}


def test_a_too_long_prefix_is_a_400(make_client: ClientFactory) -> None:
    answer = make_client().get("/api/state/groups", params={"prefix": "p" * 2000})
    assert answer.status_code == 400
    assert "error" in answer.json()


def test_private_namespaces_are_hidden_without_their_token(data_dir: Path) -> None:
    client = open_client(data_dir)
    try:
        secret = register(client, "secret", private=True)
        public = register(client, "public")
        assert publish(client, secret, "secret/a").status_code == 200
        assert publish(client, public, "public/a").status_code == 200

        def groups(token: str | None) -> set[str]:
            answer = client.get("/api/state/groups", headers=bearer(token))
            assert answer.status_code == 200
            return {g["prefix"] for g in answer.json()["groups"]}

        assert groups(None) == {"public/"}
        assert groups(public) == {"public/"}
        assert groups(secret) == {"public/", "secret/"}
        assert groups(ADMIN) == {"public/", "secret/"}
        inside = client.get("/api/state/groups", params={"prefix": "secret/"})
        assert inside.json() == {
            "prefix": "secret/",
            "total": 0,
            "groups": [],
            "entities": [],
            "next": None,
        }
    finally:
        client.__exit__(None, None, None)
