"""Re-plot a saved training history: ``python -m hf_ssl.commands.plot_history outputs/run/history.json``.

A module of its own so that ``-m`` does not re-run ``hf_ssl.training.state.history``, which the package
``hf_ssl.training`` has already imported.
"""

from hf_ssl.training.state.history import main

if __name__ == "__main__":
    main()
