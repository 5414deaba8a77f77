"""Mention detection: find the mentions of raw text (a tagger on frozen encoder token features, or a gazetteer
of the KB's names), for ``xel-link --detect``, ``Linker.link_text`` and ``xel-serve``'s documents."""
