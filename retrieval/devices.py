"""Where a search runs: GPU FAISS when FAISS sees a GPU, else an exact torch matmul + top-k on CUDA when torch sees
one, else CPU FAISS (:func:`select_search_device`)."""

from __future__ import annotations

import faiss
import numpy as np

SEARCH_DEVICES = ("auto", "cpu", "faiss-gpu", "torch")


def select_search_device(
    requested: str = "auto", *, faiss_gpus: int | None = None, torch_cuda: bool | None = None
) -> str:
    """Where to search: ``faiss-gpu`` if FAISS sees a GPU, else ``torch`` if torch sees CUDA, else ``cpu``.

    ``requested`` other than ``auto`` is honoured, and refused when the hardware it needs is absent.
    """
    if requested not in SEARCH_DEVICES:
        raise ValueError(f"search device {requested!r}; allowed: {list(SEARCH_DEVICES)}")
    if faiss_gpus is None:
        faiss_gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if torch_cuda is None:
        torch_cuda = _torch_cuda_available()
    if requested == "faiss-gpu" and faiss_gpus <= 0:
        raise ValueError("search device 'faiss-gpu' asked for, but FAISS sees no GPU (install the 'gpu' extra)")
    if requested == "torch" and not torch_cuda:
        raise ValueError("search device 'torch' asked for, but torch sees no CUDA device")
    if requested != "auto":
        return requested
    if faiss_gpus > 0:
        return "faiss-gpu"
    if torch_cuda:
        return "torch"
    return "cpu"


def _torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class TorchExactSearcher:
    """Exact inner-product top-k with a torch matmul over the index's stored vectors (on ``device``)."""

    def __init__(self, index: faiss.Index, device: str = "cuda", chunk: int = 4096):
        import torch

        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None:
            ivf.make_direct_map()
        vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)
        self.torch = torch
        self.device = device
        self.chunk = chunk
        self.vectors = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)).to(device)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        k_eff = min(k, self.vectors.shape[0])
        scores = np.full((len(queries), k), -np.inf, np.float32)
        rows = np.full((len(queries), k), -1, np.int64)
        with torch.inference_mode():
            for start in range(0, len(queries), self.chunk):
                q = torch.from_numpy(np.ascontiguousarray(queries[start:start + self.chunk])).to(self.device)
                top = torch.topk(q @ self.vectors.T, k_eff, dim=1)
                scores[start:start + len(q), :k_eff] = top.values.cpu().numpy()
                rows[start:start + len(q), :k_eff] = top.indices.cpu().numpy()
        return scores, rows
