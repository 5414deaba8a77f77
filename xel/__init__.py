"""xel: zero-shot cross-language entity linking on frozen multilingual encoder features.

The parts live in the repository's top-level folders and install under this namespace:
``xel.precompute`` (encoder features into a sharded HDF5 store), ``xel.retrieval`` (candidates, nn, FAISS),
``xel.train`` (the ranker and the experiment), ``xel.link`` (the linker, ``xel-link``, ``xel-serve``),
``xel.detect`` (mention detection in raw text, ``xel-detect``) and ``xel.encoder`` (the offline encoder builder).
"""

__version__ = "0.1.0"
