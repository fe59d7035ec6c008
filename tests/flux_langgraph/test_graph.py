"""A real LangGraph graph with FluxStore: two nodes, one writing a memory through the store
LangGraph injects, one reading the memories back, run with `invoke` (sync store methods) and
`ainvoke` (async ones) against a real `flux serve`; what the graph stored is an entity anyone
can GET from Flux, and a second run, on a new store, remembers it."""

from __future__ import annotations

import asyncio
import operator
from collections.abc import Iterator
from typing import Annotated, Any, TypedDict

import httpx
import pytest
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore

from conftest import FluxServer, module_server
from flux.client import AsyncFluxClient, FluxClient
from flux.langgraph import FluxStore


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    yield from module_server(tmp_path_factory, "langgraph-graph")


class State(TypedDict):
    user: str
    fact: str
    recalled: Annotated[list[str], operator.add]


def remember(state: State, *, store: BaseStore) -> dict[str, Any]:
    store.put(("memories", state["user"]), state["fact"], {"fact": state["fact"]})
    return {}


def recall(state: State, *, store: BaseStore) -> dict[str, Any]:
    found = store.search(("memories", state["user"]), limit=100)
    return {"recalled": sorted(item.value["fact"] for item in found)}


async def aremember(state: State, *, store: BaseStore) -> dict[str, Any]:
    await store.aput(("memories", state["user"]), state["fact"], {"fact": state["fact"]})
    return {}


async def arecall(state: State, *, store: BaseStore) -> dict[str, Any]:
    found = await store.asearch(("memories", state["user"]), limit=100)
    return {"recalled": sorted(item.value["fact"] for item in found)}


def build(write: Any, read: Any, store: FluxStore) -> Any:
    builder = StateGraph(State)
    builder.add_node("remember", write)
    builder.add_node("recall", read)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", "recall")
    builder.add_edge("recall", END)
    return builder.compile(store=store)


def test_a_graph_remembers_through_flux(srv: FluxServer) -> None:
    with FluxClient(srv.url) as flux:
        graph = build(remember, recall, FluxStore(flux, prefix="agent/"))
        first = graph.invoke({"user": "ada", "fact": "likes tea", "recalled": []})
        assert first["recalled"] == ["likes tea"]

    # the memory is a Flux entity, over plain HTTP: its id is agent/memories/ada/likes%20tea
    # (the key percent-encoded), and in a URL that `%` is itself escaped as `%25`
    answer = httpx.get(f"{srv.url}/api/state/entities/agent/memories/ada/likes%2520tea")
    assert answer.status_code == 200
    assert answer.json()["id"] == "agent/memories/ada/likes%20tea"
    assert answer.json()["properties"]["value"] == {"fact": "likes tea"}
    assert answer.json()["properties"]["namespace"] == ["memories", "ada"]

    # a later run, on a new client and store, remembers it
    with FluxClient(srv.url) as flux:
        graph = build(remember, recall, FluxStore(flux, prefix="agent/"))
        second = graph.invoke({"user": "ada", "fact": "lives in London", "recalled": []})
    assert second["recalled"] == ["likes tea", "lives in London"]


def test_an_async_graph_remembers_through_flux(srv: FluxServer) -> None:
    async def run() -> list[str]:
        async with AsyncFluxClient(srv.url) as aflux:
            graph = build(aremember, arecall, FluxStore(aclient=aflux, prefix="async-agent/"))
            await graph.ainvoke({"user": "bob", "fact": "plays chess", "recalled": []})
            state = await graph.ainvoke({"user": "bob", "fact": "owns a cat", "recalled": []})
            recalled: list[str] = state["recalled"]
            return recalled

    assert asyncio.run(run()) == ["owns a cat", "plays chess"]
    with FluxClient(srv.url) as flux:
        ids = [entity["id"] for entity in flux.list(prefix="async-agent/")]
    assert sorted(ids) == [
        "async-agent/memories/bob/owns%20a%20cat",
        "async-agent/memories/bob/plays%20chess",
    ]
