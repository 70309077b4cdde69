"""The ``smtplb`` command's verbs, by group; ``cli.py`` puts them together."""
