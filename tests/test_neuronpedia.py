"""Hub dictionaries come named: Neuronpedia source ids, the export fetch (from a local HTTP
server laid out like Neuronpedia's bucket), the cache, and the unnamed status when it fails."""
from __future__ import annotations

import functools
import gzip
import json
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from features import formats, neuronpedia
from features.catalog import Catalog, Feature
from features.dictionary import Dictionary
from features.neuronpedia import gemma_scope_1_id, gemma_scope_2_id, llama_scope_id, source_id

NP_ID = "gemma-3-270m-it/12-gemmascope-2-res-16k"
D_SAE = 48
ROWS = [  # two batches, like Neuronpedia's: several explanation types for one feature
    [{"id": "a", "modelId": "gemma-3-270m-it", "layer": "12-gemmascope-2-res-16k", "index": "0",
      "description": "golden gate bridge", "typeName": "oai_token-act-pair", "explanationModelName": "gpt-4o-mini",
      "embedding": [0.1] * 8},
     {"id": "b", "modelId": "gemma-3-270m-it", "layer": "12-gemmascope-2-res-16k", "index": "0",
      "description": "bridges (other explainer)", "typeName": "np_max-act-logits"},
     {"id": "c", "modelId": "gemma-3-270m-it", "layer": "12-gemmascope-2-res-16k", "index": "5",
      "description": "dogs and puppies", "typeName": "oai_token-act-pair"}],
    [{"id": "d", "modelId": "gemma-3-270m-it", "layer": "12-gemmascope-2-res-16k", "index": "47",
      "description": "rainy weather", "typeName": "oai_token-act-pair"}],
]


# ---------------------------------------------------------------- source ids (pure functions)


def test_gemma_scope_2_layouts_map_to_neuronpedia_ids():
    ref = "google/gemma-scope-2-270m-it/resid_post/layer_12_width_16k_l0_medium"
    assert gemma_scope_2_id(ref) == NP_ID
    cache = ("/home/u/.cache/huggingface/hub/models--google--gemma-scope-2-27b-it/snapshots/abc/"
             "resid_post/layer_40_width_262k_l0_medium")
    assert gemma_scope_2_id(cache) == "gemma-3-27b-it/40-gemmascope-2-res-262k"
    # The model comes from config.json where the path has no repo name; -pt models drop the suffix.
    assert gemma_scope_2_id("/data/resid_post/layer_13_width_16k_l0_medium", "google/gemma-3-1b-it") == \
        "gemma-3-1b-it/13-gemmascope-2-res-16k"
    assert gemma_scope_2_id("google/gemma-scope-2-1b-pt/resid_post/layer_13_width_16k_l0_medium") == \
        "gemma-3-1b/13-gemmascope-2-res-16k"
    # Neuronpedia hosts the medium l0; other l0s, other sites and unknown models get no source.
    assert gemma_scope_2_id("google/gemma-scope-2-270m-it/resid_post/layer_12_width_16k_l0_small") is None
    assert gemma_scope_2_id("google/gemma-scope-2-270m-it/mlp_out/layer_12_width_16k_l0_medium") is None
    assert gemma_scope_2_id("/data/resid_post/layer_12_width_16k_l0_medium") is None


def test_gemma_scope_1_layouts_map_to_neuronpedia_ids():
    assert gemma_scope_1_id("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71") == \
        "gemma-2-2b/20-gemmascope-res-16k"
    assert gemma_scope_1_id("/c/hub/models--google--gemma-scope-9b-it-res/snapshots/x/layer_20/width_131k/"
                            "average_l0_91/params.npz") == "gemma-2-9b-it/20-gemmascope-res-131k"
    assert gemma_scope_1_id("google/gemma-scope-2b-pt-mlp/layer_20/width_16k/average_l0_71") is None
    assert gemma_scope_1_id("/data/layer_20/width_16k/average_l0_71") is None  # no repo: which model?


def test_llama_scope_layouts_map_to_neuronpedia_ids():
    assert llama_scope_id("fnlp/Llama3_1-8B-Base-LXR-8x/Llama3_1-8B-Base-L15R-8x") == \
        "llama3.1-8b/15-llamascope-res-32k"
    assert llama_scope_id("fnlp/Llama3_1-8B-Base-LXR-32x/Llama3_1-8B-Base-L3R-32x/checkpoints") == \
        "llama3.1-8b/3-llamascope-res-131k"
    assert llama_scope_id("fnlp/Llama3_1-8B-Base-LXM-8x/Llama3_1-8B-Base-L15M-8x") is None  # MLP out


def test_saelens_neuronpedia_id_wins_and_is_validated():
    assert source_id({"metadata": {"neuronpedia_id": "gemma-2-2b/20-gemmascope-res-16k"}}, "runs/x") == \
        "gemma-2-2b/20-gemmascope-res-16k"
    assert source_id({"neuronpedia_id": "gpt2-small/8-res-jb"}, "runs/x") == "gpt2-small/8-res-jb"  # pre-6.0
    assert source_id({"metadata": {"neuronpedia_id": "../../etc"}}, "runs/x") is None
    assert source_id({"metadata": {"neuronpedia_id": None}}, "runs/x") is None
    assert source_id({}, "nowhere", "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71") == \
        "gemma-2-2b/20-gemmascope-res-16k"


# ---------------------------------------------------------------- fetch from a local "bucket"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """A local HTTP server serving the export layout; yields (url, requested paths)."""
    root = tmp_path / "bucket"
    folder = root / "v1" / "gemma-3-270m-it" / "12-gemmascope-2-res-16k" / "explanations"
    folder.mkdir(parents=True)
    for n, rows in enumerate(ROWS):
        body = "".join(json.dumps(r) + "\n" for r in rows)
        (folder / f"batch-{n}.jsonl.gz").write_bytes(gzip.compress(body.encode()))
    requested = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("STEERCHAT_NEURONPEDIA_URL", url)
    monkeypatch.setenv("STEERCHAT_CACHE", str(tmp_path / "cache"))
    yield url, requested
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there: connection refused


def make_dictionary(folder, neuronpedia_id=NP_ID, d_in=32):
    formats.save(Dictionary.random(d_in, D_SAE, activation="topk", k=4, seed=1, hook_layer=1), folder,
                 dtype=torch.float32)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"]["neuronpedia_id"] = neuronpedia_id
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def test_first_load_fetches_every_batch_and_names_the_catalog(bucket, tmp_path):
    from chat.engine import load_catalog

    url, requested = bucket
    heard = []
    catalog = load_catalog(dictionary=make_dictionary(tmp_path / "d"), progress=heard.append)
    assert catalog.labels_source == f"labels: Neuronpedia {NP_ID}"
    # The preferred explanation type wins; batches are tried until the first missing one.
    assert (catalog[0].label, catalog[5].label, catalog[47].label) == ("golden gate bridge", "dogs and puppies",
                                                                        "rainy weather")
    assert catalog.label(1) == "feature 1"
    assert [f.id for f in catalog.search("puppy")] == [5]
    assert requested == [f"/v1/{NP_ID}/explanations/batch-{n}.jsonl.gz" for n in range(3)]
    assert heard == [f"fetching Neuronpedia labels for {NP_ID}: batch 1, 3 explanations",
                     f"fetching Neuronpedia labels for {NP_ID}: batch 2, 4 explanations"]
    # The cache keeps only what a catalog reads (no embeddings).
    cached = neuronpedia.cache_file(NP_ID)
    assert cached == tmp_path / "cache" / "neuronpedia" / "gemma-3-270m-it" / "12-gemmascope-2-res-16k" / \
        "explanations.jsonl.gz"
    rows = [json.loads(line) for line in gzip.decompress(cached.read_bytes()).decode().splitlines()]
    assert len(rows) == 4 and "embedding" not in rows[0] and rows[0]["description"] == "golden gate bridge"


def test_second_load_reads_the_cache_without_the_network(bucket, tmp_path, monkeypatch):
    from chat.engine import load_catalog

    url, requested = bucket
    folder = make_dictionary(tmp_path / "d")
    load_catalog(dictionary=folder, progress=lambda m: None)
    requested.clear()
    monkeypatch.setenv("STEERCHAT_NEURONPEDIA_URL", _closed_port_url())
    catalog = load_catalog(dictionary=folder, progress=lambda m: None)
    assert catalog[5].label == "dogs and puppies" and catalog.labels_source == f"labels: Neuronpedia {NP_ID}"
    assert requested == []


def test_engine_status_credits_neuronpedia(bucket, tmp_path, tiny_lm, capsys):
    from chat.engine import load

    engine = load(dictionary=make_dictionary(tmp_path / "d"), lm=tiny_lm)
    assert f"labels: Neuronpedia {NP_ID}" in engine.status()
    assert engine.feature("golden gate").id == 0
    assert "batch 2, 4 explanations" in capsys.readouterr().err  # default progress: stderr


def test_loader_status_line_shows_the_download(bucket, tmp_path, tiny_lm, monkeypatch):
    import chat.runtime.models
    from chat.ui.loader import EngineLoader

    monkeypatch.setattr(chat.runtime.models, "load_model", lambda ref, device=None, progress=None: tiny_lm)
    phases = []
    monkeypatch.setattr(EngineLoader, "_set_phase", lambda self, phase: phases.append(phase))
    loader = EngineLoader("tiny", str(make_dictionary(tmp_path / "d")), fallback=False)
    loader.get()
    assert phases[-1] == f"fetching Neuronpedia labels for {NP_ID}: batch 2, 4 explanations"
    assert f"labels: Neuronpedia {NP_ID}" in loader.status()


def test_offline_load_says_unnamed_and_how_to_name(tmp_path, monkeypatch, tiny_lm):
    from chat.engine import load, load_catalog

    monkeypatch.setenv("STEERCHAT_NEURONPEDIA_URL", _closed_port_url())
    monkeypatch.setenv("STEERCHAT_CACHE", str(tmp_path / "cache"))
    folder = make_dictionary(tmp_path / "d")
    catalog = load_catalog(dictionary=folder, progress=lambda m: None)
    assert not catalog.has_labels()
    assert catalog.labels_source.startswith(f"features are unnamed (no Neuronpedia labels for {NP_ID}: cannot reach")
    command = f"python -m features label --dictionary {folder} --text FILE"
    assert catalog.labels_source.endswith(f"name them with `{command}`")
    engine = load("my/model", folder, lm=tiny_lm)
    assert "features are unnamed" in engine.status()
    assert f"`python -m features label --model my/model --dictionary {folder} --text FILE`" in engine.status()
    assert not neuronpedia.cache_file(NP_ID).exists()


def test_unknown_source_and_no_source_say_unnamed(bucket, tmp_path):
    from chat.engine import load_catalog

    url, requested = bucket
    missing = load_catalog(dictionary=make_dictionary(tmp_path / "a", "gemma-3-270m-it/99-nothing-here"))
    assert "no Neuronpedia labels for gemma-3-270m-it/99-nothing-here: Neuronpedia has no explanations export" \
        in missing.labels_source
    requested.clear()
    none = load_catalog(dictionary=make_dictionary(tmp_path / "b", None))
    assert none.labels_source.startswith("features are unnamed (no labels file, and no Neuronpedia source known")
    assert requested == []


def test_a_catalog_with_labels_of_its_own_is_left_alone(bucket, tmp_path):
    from chat.engine import load_catalog

    url, requested = bucket
    folder = make_dictionary(tmp_path / "d")
    Catalog(D_SAE, {3: Feature(3, "my own name")}).save(folder)
    catalog = load_catalog(dictionary=folder)
    assert catalog.labels_source == "" and catalog[0].label == "" and requested == []


def test_turned_off_means_no_fetch_and_no_cache(bucket, tmp_path, monkeypatch):
    from chat.engine import load_catalog

    url, requested = bucket
    folder = make_dictionary(tmp_path / "d")
    load_catalog(dictionary=folder, progress=lambda m: None)  # cached now
    monkeypatch.setenv("STEERCHAT_NEURONPEDIA_URL", "off")
    catalog = load_catalog(dictionary=folder)
    assert not catalog.has_labels() and "turned off" in catalog.labels_source


def test_a_damaged_cache_is_dropped_and_fetched_again(bucket, tmp_path):
    from chat.engine import load_catalog

    folder = make_dictionary(tmp_path / "d")
    cached = neuronpedia.cache_file(NP_ID)
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not gzip")
    assert "unreadable" in load_catalog(dictionary=folder).labels_source and not cached.exists()
    assert load_catalog(dictionary=folder, progress=lambda m: None)[5].label == "dogs and puppies"
