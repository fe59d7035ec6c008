"""A LangGraph store on Flux: `FluxStore`, LangGraph's `BaseStore` with its items as Flux
entities, so a graph's long-term memory is shared, versioned and visible to everything else
that reads Flux. It needs the optional extra: `pip install 'flux-state-engine[langgraph]'`.
docs/langgraph.md is the guide; flux.langgraph.mapping says where each item lives.

    with FluxClient("http://localhost:3000") as flux:
        graph = builder.compile(store=FluxStore(flux))
"""

try:
    import langgraph.store.base  # noqa: F401 - only to fail early, with the way out
except ImportError as exc:
    raise ImportError(
        "flux.langgraph needs LangGraph: pip install 'flux-state-engine[langgraph]'"
    ) from exc

from flux.langgraph.mapping import Layout
from flux.langgraph.store import FluxStore, NotAnItemError

__all__ = ["FluxStore", "Layout", "NotAnItemError"]
