"""Feature names from Neuronpedia, for dictionaries it hosts (see docs/neuronpedia.md).

A dictionary maps to a Neuronpedia source `{model}/{source}` through SAELens' `neuronpedia_id`
(cfg metadata), or through the Gemma Scope 1, Gemma Scope 2 and Llama Scope hub layouts
(`source_id`). Its explanations come from Neuronpedia's public export bucket,

    {base}/v1/{model}/{source}/explanations/batch-0.jsonl.gz, batch-1..., until a 404

(base: $STEERCHAT_NEURONPEDIA_URL, default DEFAULT_URL; `off` turns naming from Neuronpedia off,
cache included), and are cached on disk, slimmed to the fields a catalog reads, in
`{cache}/neuronpedia/{model}/{source}/explanations.jsonl.gz` ({cache}: $STEERCHAT_CACHE, else
$XDG_CACHE_HOME/steerchat, else ~/.cache/steerchat), so later loads need no network. Only JSON
is read, never a pickle. A catalog with labels of its own is never touched.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from features.paths import cache_dir

DEFAULT_URL = "https://neuronpedia-datasets.s3.us-east-1.amazonaws.com"
URL_ENV = "STEERCHAT_NEURONPEDIA_URL"
TIMEOUT_S = 30
KEEP = ("index", "description", "typeName", "explanationModelName", "modelId", "layer")  # row fields cached
_PART = r"(?!\.{1,2}$)[\w.-]+"  # a model or source id: no slashes, never "." or ".."
_ID = re.compile(rf"({_PART})/({_PART})")


class NeuronpediaError(Exception):
    """Neuronpedia's explanations could not be had; the message says why in one line."""


# ---------------------------------------------------------------- which source


def source_id(cfg: dict, *where) -> str | None:
    """The Neuronpedia source `{model}/{source}` of a dictionary, or None when none is known.

    cfg: the dictionary's own config (`Dictionary.cfg`); where: its reference and local path,
    tried in turn (a hub cache path keeps the repo name: models--google--gemma-scope-2b-pt-res)."""
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}
    given = meta.get("neuronpedia_id") or cfg.get("neuronpedia_id")  # v6 nests it; older cfgs do not
    if isinstance(given, str) and _ID.fullmatch(given.strip()):
        return given.strip()
    for place in where:
        place = str(place).replace("\\", "/")
        found = gemma_scope_2_id(place, cfg.get("model_name")) or gemma_scope_1_id(place) or llama_scope_id(place)
        if found:
            return found
    return None


def gemma_scope_2_id(path: str, model_name: str | None = None) -> str | None:
    """`google/gemma-scope-2-270m-it/resid_post/layer_12_width_16k_l0_medium` ->
    `gemma-3-270m-it/12-gemmascope-2-res-16k`. Neuronpedia hosts the l0 `medium` dictionaries
    (the ones SAELens links to it); other l0s of the same layer and width get no source."""
    m = re.search(r"(?:^|/)resid_post/layer_(\d+)_width_(\w+?)_l0_(\w+?)(?:/|$)", path)
    if not m or m.group(3) != "medium":
        return None
    if isinstance(model_name, str) and re.fullmatch(r"(?:google/)?gemma-3-[\w.-]+", model_name):
        model = model_name.removeprefix("google/").lower()
    else:
        repo = re.search(r"gemma-scope-2-(\d+(?:\.\d+)?[mb])-(pt|it)(?:/|$)", path)
        if not repo:
            return None
        model = f"gemma-3-{repo.group(1)}" + ("-it" if repo.group(2) == "it" else "")
    return f"{model}/{m.group(1)}-gemmascope-2-res-{m.group(2)}"


def gemma_scope_1_id(path: str) -> str | None:
    """`google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71` ->
    `gemma-2-2b/20-gemmascope-res-16k`. Neuronpedia hosts one l0 per layer and width (SAELens'
    canonical one, average_l0_71 here); the path cannot tell which, so any l0 maps."""
    repo = re.search(r"gemma-scope-(2b|9b|27b)-(pt|it)-res(?:-canonical)?(?:/|$)", path)
    m = re.search(r"(?:^|/)layer_(\d+)/width_(\w+)/(?:average_l0_\d+|canonical)(?:/|$)", path)
    if not (repo and m):
        return None
    model = f"gemma-2-{repo.group(1)}" + ("-it" if repo.group(2) == "it" else "")
    return f"{model}/{m.group(1)}-gemmascope-res-{m.group(2)}"


def llama_scope_id(path: str) -> str | None:
    """`fnlp/Llama3_1-8B-Base-LXR-8x/Llama3_1-8B-Base-L15R-8x` -> `llama3.1-8b/15-llamascope-res-32k`
    (8x of 4096 is 32k features, 32x is 131k); residual-stream (R) dictionaries only."""
    m = re.search(r"Llama3_1-8B-Base-L(\d+)R-(8|32)x(?:/|$)", path)
    return f"llama3.1-8b/{m.group(1)}-llamascope-res-{'32k' if m.group(2) == '8' else '131k'}" if m else None


# ---------------------------------------------------------------- fetch and cache


def base_url() -> str | None:
    """Where the exports are served; None when $STEERCHAT_NEURONPEDIA_URL is `off` (or empty)."""
    url = os.environ.get(URL_ENV, DEFAULT_URL).strip()
    return None if url.lower() in ("", "off", "0", "false", "no") else url.rstrip("/")


def cache_file(np_id: str) -> Path:
    """The cached explanations of one source, under features.paths.cache_dir()."""
    model, source = _split(np_id)
    return cache_dir() / "neuronpedia" / model / source / "explanations.jsonl.gz"


def fetch_explanations(np_id: str, *, progress: Callable[[str], None] | None = None,
                       base: str | None = None, timeout: float = TIMEOUT_S) -> Path:
    """The cached explanations file of `np_id`, downloading it first (batch by batch, telling
    `progress` after each) when it is not cached. NeuronpediaError when it cannot be had."""
    path = cache_file(np_id)
    if path.is_file():
        return path
    base = base or base_url()
    if base is None:
        raise NeuronpediaError(f"Neuronpedia is turned off (${URL_ENV}=off) and nothing is cached")
    model, source = _split(np_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    rows = 0
    try:
        with gzip.open(tmp, "wt", encoding="utf-8") as out:
            batch = 0
            while True:
                url = f"{base}/v1/{model}/{source}/explanations/batch-{batch}.jsonl.gz"
                data = _get(url, timeout, first=batch == 0, np_id=np_id)
                if data is None:
                    break
                for row in _rows(data, url):
                    out.write(json.dumps({k: row[k] for k in KEEP if k in row}, ensure_ascii=False) + "\n")
                    rows += 1
                batch += 1
                if progress:
                    progress(f"fetching Neuronpedia labels for {np_id}: batch {batch}, {rows:,} explanations")
        if not rows:
            raise NeuronpediaError(f"Neuronpedia's export of {np_id} holds no explanations")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _get(url: str, timeout: float, *, first: bool, np_id: str) -> bytes | None:
    """The body at url; None for a missing batch after the first (the end of the export)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as e:
        # S3 answers 403 instead of 404 for a missing key where listing is not allowed.
        if e.code in (403, 404):
            if first:
                raise NeuronpediaError(f"Neuronpedia has no explanations export for {np_id}") from None
            return None
        raise NeuronpediaError(f"Neuronpedia answered HTTP {e.code} for {url}") from None
    except (urllib.error.URLError, OSError, ValueError) as e:  # offline, DNS, timeout, a bad URL
        reason = getattr(e, "reason", None) or e
        raise NeuronpediaError(f"cannot reach Neuronpedia ({' '.join(str(reason).split())})") from None


def _rows(data: bytes, url: str):
    try:
        lines = gzip.decompress(data).decode("utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    except (OSError, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NeuronpediaError(f"{url} is not gzipped JSON lines ({type(e).__name__})") from None
    return [row for row in rows if isinstance(row, dict)]


def _split(np_id: str) -> tuple[str, str]:
    m = _ID.fullmatch(np_id)
    if not m:
        raise NeuronpediaError(f"{np_id!r} is not a Neuronpedia source id like gemma-2-2b/20-gemmascope-res-16k")
    return m.group(1), m.group(2)


# ---------------------------------------------------------------- naming a catalog


def label_command(ref, model=None) -> str:
    """The command that names a dictionary's features from local text."""
    model_arg = f"--model {shlex.quote(str(model))} " if model else ""
    return f"python -m features label {model_arg}--dictionary {shlex.quote(str(ref))} --text FILE"


def name_catalog(catalog, cfg: dict, folder, *, ref, model=None,
                 progress: Callable[[str], None] | None = None) -> str:
    """Give a catalog with no labels of its own Neuronpedia's explanations, when the dictionary
    maps to a source. Never raises for want of them. Returns a note for status lines (also kept
    in `catalog.labels_source`): "" when the catalog has labels, "labels: Neuronpedia {id}" when
    named from Neuronpedia, else why the features are unnamed and the command that names them.
    progress: told each batch of a download (default: printed to stderr)."""
    if catalog.has_labels():
        catalog.labels_source = ""
        return ""
    np_id = source_id(cfg, ref, Path(folder).absolute())
    if np_id is None:
        why = "no labels file, and no Neuronpedia source known for this dictionary"
    elif base_url() is None:
        why = f"Neuronpedia labels for {np_id} are turned off (${URL_ENV}=off)"
    else:
        try:
            path = fetch_explanations(np_id, progress=progress or _stderr)
            try:
                named = catalog.import_neuronpedia(path)
            except (ValueError, OSError, EOFError):  # a damaged cache: fetch afresh next time
                path.unlink(missing_ok=True)
                raise NeuronpediaError("its cached export was unreadable")
            if not named:
                raise NeuronpediaError("its export names none of these features")
            catalog.labels_source = f"labels: Neuronpedia {np_id}"
            return catalog.labels_source
        except NeuronpediaError as e:
            why = f"no Neuronpedia labels for {np_id}: {e}"
    catalog.labels_source = f"features are unnamed ({why}); name them with `{label_command(ref, model)}`"
    return catalog.labels_source


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
