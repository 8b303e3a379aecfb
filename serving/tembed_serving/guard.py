"""Per-request fault isolation for the encoder: a request is checked before it joins a batch, and a
batch that fails is re-run one request at a time, so one bad request never fails its neighbours.

The encoder's inputs are token tensors; the tokenizer model makes them well-formed, but Triton's
ports let anyone who reaches them call the encoder directly. A token id of 10**9 or an all-zero
mask must be that request's error (INVALID_ARG), not an exception that fails the merged batch.
Messages say what is wrong with the request and carry no paths or tracebacks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .contract import INPUT_IDS
from .errors import RequestError
from .profile import ModelProfile


def token_error(ids: np.ndarray, mask: np.ndarray, profile: ModelProfile) -> str | None:
    """Why these token tensors cannot be encoded, or None."""
    if ids.ndim != 2 or mask.shape != ids.shape:
        return f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} must be equal [n, length]"
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        return "empty input_ids"
    if not (np.issubdtype(ids.dtype, np.integer) and np.issubdtype(mask.dtype, np.integer)):
        return f"input_ids and attention_mask must be integers, got {ids.dtype} and {mask.dtype}"
    if ids.shape[1] > profile.max_length:
        return f"sequence length {ids.shape[1]} is over the model's {profile.max_length} tokens"
    # Few whole-array passes: this runs on every request on the serving path.
    if mask.min() < 0 or mask.max() > 1:
        return "attention_mask may hold only 0 and 1"
    real = mask.sum(axis=1)
    if real.min() == 0:
        return f"row {int(np.argmin(real))} of attention_mask has no token"
    # Real tokens are contiguous, padding on the profile's side (pooling reads positions from the mask).
    length = ids.shape[1]
    cols = np.arange(length)
    contiguous = cols >= (length - real)[:, None] if profile.padding_side == "left" else cols < real[:, None]
    if (mask != contiguous).any():
        return f"attention_mask must pad on the {profile.padding_side}"
    # Padding ids too: the encoder looks up every id, masked or not.
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or (profile.vocab_size is not None and high >= profile.vocab_size):
        return f"token ids must lie in [0, {profile.vocab_size}), got {low}..{high}"
    return None


def token_check(ids: np.ndarray, mask: np.ndarray, profile: ModelProfile) -> None:
    """:func:`token_error` as this request's :class:`RequestError`."""
    error = token_error(ids, mask, profile)
    if error:
        raise RequestError(error, param=INPUT_IDS)


def run_isolated(
    runner: Callable[[list[np.ndarray], list[np.ndarray]], list[np.ndarray]],
    ids: list[np.ndarray],
    masks: list[np.ndarray],
) -> list[np.ndarray | str]:
    """The runner on the whole batch; if that fails, on each request alone (an error message for
    the ones that fail alone)."""
    try:
        return list(runner(ids, masks))
    except Exception:
        pass
    out: list[np.ndarray | str] = []
    for i, m in zip(ids, masks):
        try:
            out.append(runner([i], [m])[0])
        except Exception as exc:
            out.append(f"the encoder failed on this request ({type(exc).__name__})")
    return out
