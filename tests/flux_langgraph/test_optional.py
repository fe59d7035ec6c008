"""LangGraph is an optional extra: the rest of Flux imports without it, and flux.langgraph says
how to install it. Run in a fresh interpreter where `import langgraph` fails, as it does when
the extra is not installed."""

from __future__ import annotations

import subprocess
import sys

WITHOUT_LANGGRAPH = """
import importlib, pkgutil, sys
sys.modules["langgraph"] = None  # `import langgraph` now raises ImportError
import flux
names = [m.name for m in pkgutil.walk_packages(flux.__path__, "flux.")]
for name in names:
    if not name.startswith("flux.langgraph") and name != "flux.__main__":  # that one runs
        importlib.import_module(name)
assert not any(n == "langgraph" or n.startswith("langgraph.") for n in sys.modules
               if sys.modules[n] is not None)
print(len(names))
try:
    import flux.langgraph
except ImportError as exc:
    print(exc)
"""


def test_flux_imports_without_langgraph_and_flux_langgraph_names_the_extra() -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_LANGGRAPH], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    count, message = done.stdout.splitlines()
    assert int(count) > 50  # every module of the package was imported
    assert message == ("flux.langgraph needs LangGraph: pip install 'flux-state-engine[langgraph]'")
