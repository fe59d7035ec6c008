"""FluxStore against a real `flux serve`, through its public methods, checked against what
LangGraph's BaseStore documents. Every test runs twice: with the sync methods on a FluxClient
and with the async ones on an AsyncFluxClient (driven from the test's thread by an event loop
of their own, as sdkharness does for the SDK)."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from langgraph.store.base import (
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    PutOp,
    SearchItem,
    SearchOp,
)

from conftest import FluxServer, module_server, wait_for
from flux.client import AsyncFluxClient, FluxClient, FluxClientError
from flux.client.calls import entity_path
from flux.langgraph import FluxStore, NotAnItemError

prefixes = itertools.count()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    yield from module_server(tmp_path_factory, "langgraph")


@pytest.fixture
def http(srv: FluxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=20) as client:
        yield client


class AsyncMethods:
    """A FluxStore on an AsyncFluxClient, called like the sync store: `put` runs `aput` (and
    so on) on the client's own loop, in a thread, and returns its result."""

    def __init__(self, store: FluxStore) -> None:
        self.store = store
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, "a" + name)

        def run(*args: Any, **kwargs: Any) -> Any:
            async def call() -> Any:
                return await method(*args, **kwargs)

            return asyncio.run_coroutine_threadsafe(call(), self.loop).result()

        return run

    def close(self) -> None:
        assert self.store.aclient is not None
        asyncio.run_coroutine_threadsafe(self.store.aclient.aclose(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture(params=["sync", "async"])
def make_store(request: pytest.FixtureRequest, srv: FluxServer) -> Iterator[Any]:
    """Makes stores on the server, each with a prefix of its own (so tests do not see each
    other's items), with the sync or the async methods."""
    made: list[Any] = []

    def make(**options: Any) -> Any:
        options.setdefault("prefix", f"lg-{next(prefixes)}/")
        if request.param == "sync":
            store: Any = FluxStore(FluxClient(srv.url), **options)
        else:
            store = AsyncMethods(FluxStore(aclient=AsyncFluxClient(srv.url), **options))
        made.append(store)
        return store

    yield make
    for store in made:
        if isinstance(store, AsyncMethods):
            store.close()
        else:
            store.client.close()


@pytest.fixture
def store(make_store: Any) -> Any:
    return make_store()


def entity(http: httpx.Client, entity_id: str) -> dict[str, Any]:
    answer = http.get(entity_path(entity_id))
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


# -- put, get, delete ----------------------------------------------------------------------------


def test_put_then_get_returns_the_item(store: Any, http: httpx.Client) -> None:
    store.put(("users", "123"), "prefs", {"theme": "dark", "size": 12})
    item = store.get(("users", "123"), "prefs")
    assert isinstance(item, Item)
    assert (item.namespace, item.key, item.value) == (
        ("users", "123"),
        "prefs",
        {"theme": "dark", "size": 12},
    )
    assert isinstance(item.created_at, datetime) and item.created_at.tzinfo is not None
    assert item.created_at == item.updated_at
    # the item is an entity of Flux, readable by anything that reads Flux
    root = store.store.layout.root if isinstance(store, AsyncMethods) else store.layout.root
    body = entity(http, f"{root}users/123/prefs")
    assert body["properties"]["value"] == {"theme": "dark", "size": 12}
    assert body["properties"]["namespace"] == ["users", "123"]


def test_get_of_a_missing_item_is_none(store: Any) -> None:
    assert store.get(("users", "123"), "nothing") is None


def test_put_replaces_the_whole_value_and_keeps_created_at(store: Any) -> None:
    store.put(("users",), "k", {"a": 1, "b": 2})
    first = store.get(("users",), "k")
    store.put(("users",), "k", {"a": 3})
    second = store.get(("users",), "k")
    assert second.value == {"a": 3}  # "b" is gone: a put is not a merge
    assert second.created_at == first.created_at
    assert second.updated_at > first.updated_at


def test_each_put_is_one_event(store: Any, srv: FluxServer) -> None:
    store.put(("users",), "k", {"a": 1})
    store.put(("users",), "k", {"a": 2})
    store.put(("users",), "k", {"a": 3})
    with FluxClient(srv.url) as flux:
        root = store.store.layout.root if isinstance(store, AsyncMethods) else store.layout.root
        history = flux.history(f"{root}users/k")
    assert [e["payload"]["properties"]["value"] for e in history] == [{"a": 3}, {"a": 2}, {"a": 1}]


def test_delete_and_put_none_remove_the_item(store: Any, http: httpx.Client) -> None:
    store.put(("users",), "a", {"x": 1})
    store.put(("users",), "b", {"x": 1})
    store.delete(("users",), "a")
    store.batch([PutOp(("users",), "b", None)])
    assert store.get(("users",), "a") is None
    assert store.get(("users",), "b") is None
    assert store.search(("users",)) == []
    store.delete(("users",), "never-there")  # no error


def test_put_after_delete_creates_the_item_again(store: Any) -> None:
    store.put(("users",), "k", {"v": 1})
    created = store.get(("users",), "k").created_at
    store.delete(("users",), "k")
    store.put(("users",), "k", {"v": 2})
    again = store.get(("users",), "k")
    assert again.value == {"v": 2} and again.created_at > created


def test_any_label_and_key_round_trip(store: Any, http: httpx.Client) -> None:
    namespace = ("a/b", "with space", "ünïcödé ✓", "%2F")
    store.put(namespace, "key/with/slashes and %", {"ok": True})
    item = store.get(namespace, "key/with/slashes and %")
    assert item.namespace == namespace and item.key == "key/with/slashes and %"
    assert store.list_namespaces(prefix=("a/b",)) == [namespace]
    # labels with a period are refused by BaseStore's methods, but the mapping takes them
    store.batch([PutOp(("v1.2",), "k.k", {"dots": True})])
    [got] = store.batch([GetOp(("v1.2",), "k.k")])
    assert got.namespace == ("v1.2",) and got.value == {"dots": True}


def test_base_store_validation_holds(store: Any) -> None:
    with pytest.raises(InvalidNamespaceError):
        store.put((), "k", {"a": 1})
    with pytest.raises(InvalidNamespaceError):
        store.put(("langgraph",), "k", {"a": 1})
    with pytest.raises(InvalidNamespaceError):
        store.get(("a.b",), "k")


def test_a_value_that_is_not_json_is_refused(store: Any) -> None:
    with pytest.raises((TypeError, ValueError)):
        store.put(("users",), "k", {"when": object()})
    assert store.get(("users",), "k") is None


def test_put_does_not_overwrite_an_entity_it_did_not_write(store: Any, srv: FluxServer) -> None:
    inner = store.store if isinstance(store, AsyncMethods) else store
    entity_id = inner.layout.entity_id(("devices",), "sensor")
    with FluxClient(srv.url) as flux:
        flux.publish("sensors", "agent", entity_id, {"temperature": 22.5})
        with pytest.raises(NotAnItemError) as error:
            store.put(("devices",), "sensor", {"x": 1})
        assert error.value.entity_id == entity_id
        assert flux.get(entity_id)["properties"] == {"temperature": 22.5}
    # and reads do not take it for an item
    assert store.get(("devices",), "sensor") is None
    assert store.search(("devices",)) == []
    assert store.list_namespaces() == []


def test_concurrent_first_puts_all_land(make_store: Any, srv: FluxServer) -> None:
    """Writers racing to create one item: every put is stored (one creates, the others
    update), none is lost to the create condition."""
    prefix = f"lg-race-{next(prefixes)}/"
    stores = [FluxStore(FluxClient(srv.url), prefix=prefix) for _ in range(4)]
    barrier = threading.Barrier(len(stores))

    def put(index: int) -> None:
        barrier.wait()
        stores[index].put(("race",), "k", {"writer": index})

    threads = [threading.Thread(target=put, args=(i,)) for i in range(len(stores))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stores[0].client is not None
    history = stores[0].client.history(f"{prefix}race/k")
    assert sorted(e["payload"]["properties"]["value"]["writer"] for e in history) == [0, 1, 2, 3]
    created = [e for e in history if "created_at" in e["payload"]["properties"]]
    assert len(created) == 1
    for each in stores:
        assert each.client is not None
        each.client.close()


# -- search -----------------------------------------------------------------------------------


@pytest.fixture
def docs(store: Any) -> Any:
    store.put(("docs", "a"), "1", {"type": "report", "score": 3.0, "color": "red"})
    store.put(("docs", "a"), "2", {"type": "report", "score": 5.5, "color": "blue"})
    store.put(("docs", "b"), "3", {"type": "memo", "score": 4.0, "color": "red"})
    store.put(("docs", "b", "deep"), "4", {"type": "report", "score": 1.0})
    store.put(("other",), "5", {"type": "report", "score": 9.0})
    return store


def keys(items: list[SearchItem]) -> list[str]:
    return [item.key for item in items]


def test_search_takes_the_namespace_prefix_newest_first(docs: Any) -> None:
    found = docs.search(("docs",))
    assert keys(found) == ["4", "3", "2", "1"]  # the last updated first
    assert all(isinstance(item, SearchItem) and item.score is None for item in found)
    assert keys(docs.search(("docs", "b"))) == ["4", "3"]
    assert keys(docs.search(("docs", "b", "deep"))) == ["4"]
    assert keys(docs.search(())) == ["5", "4", "3", "2", "1"]
    assert docs.search(("doc",)) == []  # a prefix of labels, not of text


def test_search_filters(docs: Any) -> None:
    assert keys(docs.search(("docs",), filter={"type": "report"})) == ["4", "2", "1"]
    assert keys(docs.search(("docs",), filter={"type": "report", "color": "red"})) == ["1"]
    assert keys(docs.search(("docs",), filter={"score": {"$gt": 4.99}})) == ["2"]
    assert keys(docs.search(("docs",), filter={"score": {"$gte": 3.0, "$lt": 5}})) == ["3", "1"]
    assert keys(docs.search(("docs",), filter={"score": {"$lte": 3.0}})) == ["4", "1"]
    assert keys(docs.search(("docs",), filter={"color": {"$ne": "red"}})) == ["4", "2"]
    assert keys(docs.search(("docs",), filter={"color": {"$eq": "blue"}})) == ["2"]
    with pytest.raises(ValueError, match="unsupported filter operator"):
        docs.search(("docs",), filter={"score": {"$near": 1}})


def test_search_limit_and_offset(docs: Any) -> None:
    every = keys(docs.search(("docs",), limit=100))
    assert keys(docs.search(("docs",), limit=2)) == every[:2]
    assert keys(docs.search(("docs",), limit=2, offset=2)) == every[2:4]
    assert docs.search(("docs",), offset=10) == []
    assert keys(docs.search(("docs",), filter={"type": "report"}, limit=1, offset=1)) == ["2"]


def test_search_default_limit_is_ten(store: Any) -> None:
    for n in range(12):
        store.put(("many",), f"{n:02}", {"n": n})
    assert len(store.search(("many",))) == 10


def test_search_query_is_ignored_without_an_index(docs: Any) -> None:
    """As LangGraph's InMemoryStore without an index: a query neither ranks nor drops."""
    with_query = docs.search(("docs",), query="reports about red things")
    assert keys(with_query) == keys(docs.search(("docs",)))
    assert all(item.score is None for item in with_query)


# -- list_namespaces --------------------------------------------------------------------------


@pytest.fixture
def tree(store: Any) -> Any:
    # BaseStore.list_namespaces' example
    for namespace in [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
    ]:
        store.put(namespace, "item", {"ns": list(namespace)})
    store.put(("a", "b", "c"), "second", {"same": "namespace"})
    return store


def test_list_namespaces_as_documented(tree: Any) -> None:
    assert tree.list_namespaces(prefix=("a", "b"), max_depth=3) == [
        ("a", "b", "c"),
        ("a", "b", "d"),
        ("a", "b", "f"),
    ]
    assert tree.list_namespaces() == [
        ("a", "b", "c"),
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
        ("a", "b", "f"),
        ("a", "c", "f"),
    ]


def test_list_namespaces_suffix_wildcards_depth_limit_offset(tree: Any) -> None:
    assert tree.list_namespaces(suffix=("f",)) == [("a", "b", "f"), ("a", "c", "f")]
    assert tree.list_namespaces(prefix=("a", "*", "f")) == [("a", "b", "f"), ("a", "c", "f")]
    assert tree.list_namespaces(prefix=("a",), suffix=("d", "*")) == [
        ("a", "b", "d", "e"),
        ("a", "b", "d", "i"),
    ]
    assert tree.list_namespaces(max_depth=2) == [("a", "b"), ("a", "c")]
    assert tree.list_namespaces(limit=2, offset=1) == [("a", "b", "d", "e"), ("a", "b", "d", "i")]
    assert tree.list_namespaces(prefix=("z",)) == []
    [ops] = tree.batch([ListNamespacesOp(match_conditions=None, max_depth=1, limit=10, offset=0)])
    assert ops == [("a",)]


# -- batch --------------------------------------------------------------------------------------


def test_batch_runs_the_ops_in_order(store: Any) -> None:
    results = store.batch(
        [
            PutOp(("b",), "k", {"v": 1}),
            GetOp(("b",), "k"),
            PutOp(("b",), "k", {"v": 2}),
            SearchOp(("b",)),
            PutOp(("b",), "k", None),
            GetOp(("b",), "k"),
            ListNamespacesOp(),
        ]
    )
    assert results[0] is None and results[2] is None and results[4] is None
    assert results[1].value == {"v": 1}
    assert [item.value for item in results[3]] == [{"v": 2}]
    assert results[5] is None
    assert results[6] == []


# -- TTL --------------------------------------------------------------------------------------

SHORT = 0.01  # minutes: 600 ms


def test_an_item_with_a_ttl_expires(store: Any, http: httpx.Client) -> None:
    store.put(("ttl",), "short", {"v": 1}, ttl=SHORT)
    store.put(("ttl",), "long", {"v": 1})
    inner = store.store if isinstance(store, AsyncMethods) else store
    assert (
        entity(http, inner.layout.entity_id(("ttl",), "short"))["properties"]["__ttl_ms__"] == 600
    )
    wait_for(lambda: store.get(("ttl",), "short", refresh_ttl=False) is None, "the expiry", 10)
    assert keys(store.search(("ttl",))) == ["long"]


def test_a_put_without_ttl_ends_the_earlier_ttl(store: Any) -> None:
    store.put(("ttl",), "k", {"v": 1}, ttl=SHORT)
    store.put(("ttl",), "k", {"v": 2})
    time.sleep(1.2)
    assert store.get(("ttl",), "k").value == {"v": 2}


def test_default_ttl_from_the_ttl_config(make_store: Any, http: httpx.Client) -> None:
    store = make_store(ttl={"default_ttl": 5})
    store.put(("ttl",), "k", {"v": 1})
    store.put(("ttl",), "forever", {"v": 1}, ttl=None)
    inner = store.store if isinstance(store, AsyncMethods) else store
    props = entity(http, inner.layout.entity_id(("ttl",), "k"))["properties"]
    assert props["__ttl_ms__"] == 300_000
    props = entity(http, inner.layout.entity_id(("ttl",), "forever"))["properties"]
    assert props.get("__ttl_ms__") is None


def test_reads_refresh_the_ttl(store: Any) -> None:
    """A get, and a search for what it returns, start the item's time again (refresh_ttl is
    True by default); an item no read returns runs out."""
    store.put(("ttl",), "got", {"kind": "got"}, ttl=0.03)  # 1.8 s
    store.put(("ttl",), "found", {"kind": "found"}, ttl=0.03)
    store.put(("ttl",), "left", {"kind": "left"}, ttl=0.03)
    for _ in range(5):  # 3 s in all: well past the TTL
        time.sleep(0.6)
        assert store.get(("ttl",), "got") is not None
        assert keys(store.search(("ttl",), filter={"kind": "found"})) == ["found"]
    wait_for(lambda: store.get(("ttl",), "left", refresh_ttl=False) is None, "the expiry", 10)
    assert sorted(keys(store.search(("ttl",), refresh_ttl=False))) == ["found", "got"]


def test_refresh_off_lets_the_ttl_run(make_store: Any) -> None:
    store = make_store(ttl={"refresh_on_read": False})
    store.put(("ttl",), "k", {"v": 1}, ttl=0.03)  # 1.8 s
    for _ in range(3):
        time.sleep(0.3)
        assert store.get(("ttl",), "k") is not None  # reads do not extend it
    wait_for(lambda: store.get(("ttl",), "k") is None, "the expiry", 10)


# -- auth -------------------------------------------------------------------------------------

ADMIN_TOKEN = "langgraph-admin-token"


@pytest.fixture(scope="module")
def auth_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    env = {"FLUX_AUTH_ENABLED": "true", "FLUX_ADMIN_TOKEN": ADMIN_TOKEN}
    yield from module_server(tmp_path_factory, "langgraph-auth", env)


def test_with_auth_on_the_store_keeps_to_its_flux_namespace(auth_srv: FluxServer) -> None:
    with FluxClient(auth_srv.url, admin_token=ADMIN_TOKEN) as admin:
        token = admin.namespace_create("team-a", private=True)["token"]
    with FluxClient(auth_srv.url, token=token) as flux:
        store = FluxStore(flux, namespace="team-a")
        store.put(("memories", "ada"), "food", {"fact": "likes tea"})
        assert store.get(("memories", "ada"), "food").value == {"fact": "likes tea"}
        assert keys(store.search(("memories",))) == ["food"]
        assert store.list_namespaces() == [("memories", "ada")]
        assert flux.get("team-a/langgraph/memories/ada/food")["properties"]["key"] == "food"

        # without the namespace, its ids name no namespace the token may write
        outside = FluxStore(flux)
        with pytest.raises(FluxClientError) as refused:
            outside.put(("memories", "ada"), "food", {"fact": "likes coffee"})
        assert refused.value.status == 401
        assert "Namespace not found" in refused.value.message
    # a private namespace's items are not the anonymous reader's
    with FluxClient(auth_srv.url) as anonymous:
        assert FluxStore(anonymous, namespace="team-a").search(("memories",)) == []


# -- construction -------------------------------------------------------------------------------


def test_a_store_needs_a_client_and_runs_only_what_it_has_one_for(srv: FluxServer) -> None:
    with pytest.raises(ValueError, match="needs a FluxClient, an AsyncFluxClient, or both"):
        FluxStore()
    with pytest.raises(ValueError, match="prefix"):
        FluxStore(FluxClient(srv.url), prefix="no-slash")
    aclient = AsyncFluxClient(srv.url)
    with pytest.raises(RuntimeError, match="no FluxClient: use the async methods"):
        FluxStore(aclient=aclient).get(("users",), "k")
    asyncio.run(aclient.aclose())
    with FluxClient(srv.url) as flux:
        sync_only = FluxStore(flux)
        with pytest.raises(RuntimeError, match="no AsyncFluxClient: use the sync methods"):
            asyncio.run(sync_only.aget(("users",), "k"))
        with pytest.raises(ValueError, match="unknown store operation: str"):
            sync_only.batch(["not an op"])  # type: ignore[list-item]


def test_a_reader_that_may_not_write_reads_without_refreshing(auth_srv: FluxServer) -> None:
    with FluxClient(auth_srv.url, admin_token=ADMIN_TOKEN) as admin:
        token = admin.namespace_create("team-b")["token"]  # public: anyone reads it
    with FluxClient(auth_srv.url, token=token) as flux:
        FluxStore(flux, namespace="team-b").put(("notes",), "n", {"v": 1}, ttl=5)
        version = flux.get("team-b/langgraph/notes/n")["version"]
    with FluxClient(auth_srv.url) as anonymous:
        reader = FluxStore(anonymous, namespace="team-b")
        assert reader.get(("notes",), "n").value == {"v": 1}  # its refresh is refused
        assert keys(reader.search(("notes",))) == ["n"]
        assert anonymous.get("team-b/langgraph/notes/n")["version"] == version
