"""flux.langgraph (the directory is not named `langgraph`: it would shadow the package)."""
