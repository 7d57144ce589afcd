"""The command-line programs: ``hf-ssl`` and its subcommands, and the ``python -m`` entry points."""
