"""Reading and writing the reference's ``.ckpt`` files (spec §6.3-6.4); torch is imported lazily.

Formats:
  stage 1   ``torch.save({'state_dict': sd})`` (Lightning checkpoints carry more top-level keys,
            which are ignored).
  stage 2   ``torch.save({'encoder': sd})`` (``Enc_*.ckpt``) and ``torch.save({'implicit': sd})``
            (``Imp_*.ckpt``), every key prefixed ``module.``.

Files are read with ``torch.load(weights_only=True)``: tensors and plain containers only, never
arbitrary pickled objects. Errors name the file and say what it looks like instead.
"""

import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

TORCH_VERSION = "2.13.0"
EXPORT_MANIFEST = "vpgc_jax.json"  # the manifest export_torch writes beside the .ckpt files
META_KEY = "vpgc_jax"  # extra top-level entry of exported .ckpt files (the reference ignores it)
# Top-level key of each file kind, and how to describe / pass a file of that kind.
TOP_KEYS = {"stage1": "state_dict", "encoder": "encoder", "implicit": "implicit"}
_DESCRIBE = {
    "state_dict": "a stage-1 checkpoint (key 'state_dict'; pass it as --stage1)",
    "encoder": "a stage-2 heatmap-encoder checkpoint (Enc_*.ckpt, key 'encoder'; --encoder)",
    "implicit": "a stage-2 PriorTrans checkpoint (Imp_*.ckpt, key 'implicit'; --implicit)",
}


class CheckpointFileError(ValueError):
    """A file that is not the expected checkpoint kind (or not a checkpoint at all)."""

    def __init__(self, path: str, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def require_torch():
    """Returns the ``torch`` module.

    Raises:
      ImportError: torch is not installed (the message gives the install command).
    """
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "PyTorch interop needs torch (optional): pip install -r requirements-interop.txt "
            f"(torch=={TORCH_VERSION})"
        ) from e
    return torch


def to_numpy(sd: Mapping) -> dict[str, np.ndarray]:
    """``{key: torch.Tensor}`` -> ``{key: np.ndarray}`` (float32 / int64 as stored; bf16 -> f32)."""
    torch = require_torch()
    out = {}
    for k, v in sd.items():
        t = v.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        out[k] = t.numpy()
    return out


def to_torch(sd: Mapping[str, np.ndarray]) -> "OrderedDict":
    """``{key: np.ndarray}`` -> ``OrderedDict[key, torch.Tensor]`` (copies, same dtypes)."""
    torch = require_torch()
    return OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in sd.items())


def save(path: str, obj: dict) -> None:
    """``torch.save(obj, path)`` through a temporary file renamed into place."""
    torch = require_torch()
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# torch.save's legacy (pre-1.6) format starts with a pickled magic number (protocol 2, LONG1).
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"


def torch_format(path: str) -> str | None:
    """'zip' or 'legacy' for a file in one of torch.save's formats, else None (read-only check).

    The zip format (torch >= 1.6) is a zip archive holding ``<name>/data.pkl``; the legacy one
    starts with `_LEGACY_MAGIC`.
    """
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return None
        return "zip" if any(n.endswith("data.pkl") for n in names) else None
    with open(path, "rb") as f:
        return "legacy" if f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC else None


def load_raw(path: str) -> dict:
    """``torch.load(path, map_location='cpu', weights_only=True)`` with clear errors.

    A file in neither of torch.save's formats (`torch_format`) is refused before torch reads it.

    Raises:
      FileNotFoundError: no such file.
      CheckpointFileError: not a PyTorch checkpoint (random bytes, text, a truncated download, a
        plain pickle); a checkpoint that pickles Python objects ``weights_only`` refuses; a
        damaged one.
    """
    torch = require_torch()
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    if torch_format(path) is None:
        raise CheckpointFileError(
            path,
            "not a PyTorch checkpoint: neither torch.save's zip format nor its legacy format "
            "(a truncated download looks like this too)",
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointFileError(
            path,
            "a PyTorch checkpoint that pickles Python objects besides tensors (e.g. a Lightning "
            "'callbacks' or 'hyper_parameters' entry), which torch.load(weights_only=True) "
            "refuses. Loading it with weights_only=False RUNS CODE FROM THE FILE: only for a "
            "file from a source you trust, keep its weights with "
            f"python -c \"import torch; c = torch.load('{path}', weights_only=False); "
            f"torch.save({{'state_dict': c['state_dict']}}, '{path}.weights.ckpt')\"",
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointFileError(path, f"a damaged PyTorch checkpoint ({detail})") from e
    if not isinstance(obj, Mapping):
        raise CheckpointFileError(path, f"holds a {type(obj).__name__}, not a dict")
    return obj


def load_state_dict(path: str, kind: str) -> dict[str, np.ndarray]:
    """The state dict of a checkpoint file of ``kind``, as numpy arrays.

    Args:
      path: a ``.ckpt`` file.
      kind: 'stage1' (``{'state_dict': ...}``), 'encoder' or 'implicit' (stage 2).

    Returns:
      ``{key: np.ndarray}`` with the file's keys (stage-2 keys keep their ``module.`` prefix).

    Raises:
      FileNotFoundError, CheckpointFileError: missing, unreadable, or another kind of file
        (the message says which kind it looks like and which option takes it).
    """
    return extract(load_raw(path), path, kind)


def meta(obj: Mapping) -> dict:
    """The ``'vpgc_jax'`` entry of a loaded file (`load_raw`) as a dict; {} for the reference's
    files, which have none."""
    entry = obj.get(META_KEY)
    return dict(entry) if isinstance(entry, Mapping) else {}


def extract(obj: Mapping, path: str, kind: str) -> dict[str, np.ndarray]:
    """The ``kind`` state dict of an already loaded file ``obj`` (see :func:`load_state_dict`)."""
    torch = require_torch()
    want = TOP_KEYS[kind]
    if want not in obj:
        found = [k for k in TOP_KEYS.values() if k in obj]
        if found:
            reason = (
                f"this is {_DESCRIBE[found[0]]}, but {_DESCRIBE[want].split(' (')[0]} is needed"
            )
        elif obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            reason = (
                f"a bare state dict; the reference's files wrap it as {{'{want}': state_dict}} "
                "(re-save it that way)"
            )
        else:
            reason = f"no '{want}' entry (top-level keys: {sorted(map(str, obj))[:10]})"
        raise CheckpointFileError(path, reason)
    sd = obj[want]
    if not isinstance(sd, Mapping):
        raise CheckpointFileError(path, f"'{want}' holds a {type(sd).__name__}, not a state dict")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointFileError(path, f"'{want}' entries that are not tensors: {bad[:10]}")
    return to_numpy(sd)
