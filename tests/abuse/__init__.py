"""The abuse suite: attacks on a running server, one module per class of defect.

Fast cases run with the rest of the tests (`./scripts/test`); slow ones carry the `stress` marker
and run with `./scripts/stress`. Each case says which defect of the reliability review it keeps
fixed.
"""
