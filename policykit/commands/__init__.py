"""One module per CLI command; each exposes ``run(args) -> int`` (the exit code).

:mod:`policykit.cli` only parses arguments and imports the command it runs, so
``policykit --help`` stays fast and torch-free.
"""
