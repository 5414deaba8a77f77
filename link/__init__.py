"""Linking new mentions with a trained run: the Linker API, ``xel-link`` and ``xel-serve``."""
