"""The options model of every `cmkd` command, one module per family of stages.

A model is the command's whole interface: its docstring is the command's help and each
field one flag (`cmkd_cli.cligen` generates the command from it), and the Python API builds
the same model and hands it to the stage's `run(options)`. These modules import pydantic
and nothing heavy (no torch, no numpy), so `cmkd --help` and `cmkd STAGE --help` stay fast;
the stages import their model from here.
"""
