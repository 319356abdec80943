import gzip
import json
from types import SimpleNamespace

import pytest
import torch

from features.catalog import FILENAME, Catalog, Feature, FeatureNotFound, neighbours
from features.dictionary import Dictionary

D_SAE = 64


@pytest.fixture(autouse=True)
def steerchat_home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("STEERCHAT_HOME", str(home))
    return home


def catalog(labels: dict[int, str], curated=(), **kwargs) -> Catalog:
    return Catalog(D_SAE, {i: Feature(i, label, curated=i in curated) for i, label in labels.items()}, **kwargs)


def ids(features: list[Feature]) -> list[int]:
    return [f.id for f in features]


# --- features.json -------------------------------------------------------------------------


def test_save_load_round_trip_keeps_every_field(tmp_path):
    full = Feature(
        7, "the Golden Gate Bridge", max_activation=41.5, density=0.0003, curated=True,
        examples=[{"tokens": ["the", " Golden", " Gate"], "acts": [0.0, 12.5, 41.5], "max_index": 2}],
        top_tokens=[" bridge", " Golden"], steerability=0.8,
        strengths={"add": [4.0, 8.0], "clamp": [2, 5]}, extra={"notes": "checked by steering"},
    )
    cat = Catalog(D_SAE, {7: full, 3: Feature(3, "anger"), 5: Feature(5)})
    path = cat.save(tmp_path)

    assert path == tmp_path / FILENAME
    data = json.loads(path.read_text())
    assert data["format"] == "steerchat-features/1" and data["d_sae"] == D_SAE
    assert [row["id"] for row in data["features"]] == [3, 7]  # ordered; the empty feature 5 left out
    loaded = Catalog.load(tmp_path, D_SAE)
    assert loaded[7] == full and loaded[3] == Feature(3, "anger")
    assert loaded[5] == Feature(5) and loaded.label(5) == "feature 5"
    assert len(loaded) == D_SAE


def test_malformed_strength_band_is_a_clear_error(tmp_path):
    (tmp_path / FILENAME).write_text(json.dumps({"format": "steerchat-features/1", "d_sae": D_SAE, "features": [
        {"id": 1, "label": "x", "strengths": {"add": [1, "high"]}}]}))
    with pytest.raises(ValueError, match=r"strengths\['add'\] must be \[low, high\]"):
        Catalog.load(tmp_path, D_SAE)


def test_search_prefers_steerable_features_within_a_tier():
    cat = Catalog(D_SAE, {1: Feature(1, "dog", steerability=0.05), 2: Feature(2, "dog", steerability=0.9),
                          3: Feature(3, "dog")})
    assert [f.id for f in cat.search("dog", top=3)] == [2, 3, 1]


def test_a_hit_says_what_matched_where_its_name_does_not():
    cat = Catalog(D_SAE, {1: Feature(1, "word: Moses", extra={"writes": ["friend", "hospital"], "reads": ["Moses"]}),
                          2: Feature(2, "structures", extra={"reads": ["hospitals", "school"]}),
                          3: Feature(3, "hospital", extra={"writes": ["hospital"]})})
    assert {f.id for f in cat.search("hospital")} == {1, 2, 3}
    assert cat.why(1, "hospital") == "writes: hospital" and cat.why(2, "the Hospitals") == "reads: hospital"
    assert cat.why(3, "hospital") == ""  # its name says it
    assert cat.why(1, "moses") == "" and cat.why(2, "zzz") == ""
    assert cat.why(1, "hospitl") == "writes: hospital"  # the word a typo meant, as search reads it


def test_missing_file_is_an_empty_catalog(tmp_path):
    cat = Catalog.load(tmp_path, D_SAE)
    assert cat.label(0) == "feature 0" and cat.max_activation(0) is None
    assert Catalog.load(None, D_SAE)[1] == Feature(1)


def test_optional_fields_may_be_missing(tmp_path):
    (tmp_path / FILENAME).write_text(json.dumps(
        {"format": "steerchat-features/1", "d_sae": D_SAE, "features": [{"id": 2, "label": "dogs"}]}))
    assert Catalog.load(tmp_path, D_SAE)[2] == Feature(2, "dogs")


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"format": "something-else", "d_sae": 64, "features": []}', "not a steerchat features file"),
    ('{"format": "steerchat-features/1", "d_sae": 128, "features": []}', "128 features"),
    ('{"format": "steerchat-features/1", "d_sae": 64, "features": {}}', "must be a list"),
    ('{"format": "steerchat-features/1", "d_sae": 64, "features": [{"id": "3"}]}', "'id' must be int"),
    ('{"format": "steerchat-features/1", "d_sae": 64, "features": [{"id": true}]}', "'id' must be int"),
    ('{"format": "steerchat-features/1", "d_sae": 64, "features": [{"id": 99}]}', "out of range"),
    ('{"format": "steerchat-features/1", "d_sae": 64, "features": [{"id": 1, "label": 5}]}', "'label' must be str"),
    ('{"format": "steerchat-features/1", "d_sae": 64, "features": [{"id": 1}, {"id": 1}]}', "duplicate id 1"),
])
def test_malformed_features_json_is_a_one_line_value_error(tmp_path, text, message):
    (tmp_path / FILENAME).write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        Catalog.load(tmp_path, D_SAE)
    assert "\n" not in str(error.value)


# --- stats -------------------------------------------------------------------------------------


def test_max_activation_falls_back_to_the_median():
    cat = Catalog(D_SAE, {1: Feature(1, "a", 10.0), 2: Feature(2, "b", 30.0), 3: Feature(3, "c", 20.0)})
    assert cat.max_activation(1) == 10.0
    assert cat.max_activation(40) == 20.0


def test_set_stats_fills_all_features_and_keeps_labels(tmp_path):
    cat = catalog({4: "anger"})
    cat.set_stats(torch.arange(D_SAE, dtype=torch.float32), [0.5] * (D_SAE - 1) + [float("nan")])
    assert cat[4].label == "anger" and cat[4].max_activation == 4.0 and cat[4].density == 0.5
    assert cat[D_SAE - 1].density is None  # JSON has no NaN
    assert Catalog.load(cat.save(tmp_path).parent, D_SAE)[9].max_activation == 9.0
    with pytest.raises(ValueError, match="64 values"):
        cat.set_stats([1.0], [0.1])


# --- search --------------------------------------------------------------------------------


def test_exact_beats_prefix_beats_typo():
    cat = catalog({1: "fridge", 2: "bridgework", 3: "bridge", 4: "golden retriever"})
    assert ids(cat.search("bridge")) == [3, 2]  # "fridge" is another word, not a typo of it
    assert ids(cat.search("brdige"))[0] == 3  # a typo that is no word still finds the bridge


def test_phrase_and_word_order():
    cat = catalog({1: "golden retriever dogs", 2: "gate keeping", 3: "references to the Golden Gate Bridge",
                   4: "gate of golden light", 5: "Python code", 6: "snakes like the python"})
    assert ids(cat.search("golden gate")) == [3, 4]  # the phrase first; every word must match
    assert ids(cat.search("python code")) == [5]


def test_plural_beats_longer_prefix():
    cat = catalog({1: "dogma", 2: "dogs", 3: "hot dog stands"})
    assert ids(cat.search("dog")) == [2, 3, 1]


def test_curated_first_on_ties():
    cat = catalog({10: "anger", 20: "anger", 30: "anger management"}, curated={20})
    assert ids(cat.search("anger")) == [20, 10, 30]


def test_numeric_query_returns_that_id_first():
    cat = catalog({1: "the number 12", 12: "commas"})
    assert ids(cat.search("12")) == [12, 1]
    assert ids(cat.search("5")) == [5]  # even unlabelled
    assert cat.search("99999") == []


def test_no_match_unlabelled_and_empty_queries():
    cat = catalog({1: "bridge", 2: ""})
    assert cat.search("zzzqqq") == [] and cat.search("!!!") == []
    assert cat.search("bridge", top=0) == []
    with pytest.raises(ValueError, match="empty search query"):
        cat.search("   ")


def test_resolve():
    cat = catalog({3: "the Golden Gate Bridge", 4: "bridges"})
    assert cat.resolve(7) == 7 and cat.resolve(" 7 ") == 7
    assert cat.resolve("golden gate") == 3
    with pytest.raises(FeatureNotFound, match=r"feature id 99999 out of range \(this dictionary has 64 features\)"):
        cat.resolve("99999")
    with pytest.raises(FeatureNotFound, match="no feature matches 'volcano'; try `python -m chat search volcano`"):
        cat.resolve("volcano")
    with pytest.raises(FeatureNotFound):
        cat[-1]


# --- renames -------------------------------------------------------------------------------


def test_renames_persist_per_key_and_stay_out_of_features_json(tmp_path, steerchat_home):
    Catalog(D_SAE, {5: Feature(5, "bridges")}).save(tmp_path)
    cat = Catalog.load(tmp_path, D_SAE, key="abc123")
    assert ids(cat.search("bridge")) == [5]  # builds the index before the rename
    cat.rename(5, "  Golden Gate  ")
    assert ids(cat.search("golden gate")) == [5] and cat.search("bridge") == []

    again = Catalog.load(tmp_path, D_SAE, key="abc123")
    assert again.label(5) == "Golden Gate" and again[5].curated
    assert ids(again.search("golden")) == [5]
    assert json.loads((steerchat_home / "renames" / "abc123.json").read_text()) == {"5": "Golden Gate"}
    assert Catalog.load(tmp_path, D_SAE, key="other").label(5) == "bridges"
    again.save(tmp_path)
    assert Catalog.load(tmp_path, D_SAE).label(5) == "bridges"


def test_rename_without_key_is_in_memory_only(steerchat_home):
    cat = catalog({})
    cat.rename(1, "mine")
    assert cat.label(1) == "mine" and not steerchat_home.exists()


def test_malformed_renames_file_is_a_value_error(steerchat_home):
    (steerchat_home / "renames").mkdir(parents=True)
    (steerchat_home / "renames" / "k.json").write_text('{"five": "bridge"}')
    with pytest.raises(ValueError, match="must map feature ids to labels"):
        Catalog.load(None, D_SAE, key="k")


@pytest.mark.parametrize("label", ["", "   ", "x" * 201])
def test_rename_rejects_bad_labels(label):
    with pytest.raises(ValueError):
        catalog({}).rename(1, label)


# --- Neuronpedia import --------------------------------------------------------------------


def np_row(index, description, type_name="oai_token-act-pair", layer="20-gemmascope-res-16k"):
    """An explanations row as in the Neuronpedia S3 export (index is a string there)."""
    return {"id": f"clx{index}", "modelId": "gemma-2-2b", "layer": layer, "index": str(index),
            "authorId": "default", "description": description, "embedding": None, "typeName": type_name,
            "explanationModelName": "gpt-4o-mini", "umap_x": None, "umap_y": None, "umap_cluster": None,
            "umap_log_feature_sparsity": None}


ROWS = [
    np_row(3, " the Golden Gate Bridge"),
    np_row(4, "say dog", type_name="np_max-act-logits"),
    np_row(4, "dogs and puppies"),  # the preferred type wins over the earlier row
    np_row(5, "anger"),
    np_row(5, "rage"),  # same type: the first row wins
    np_row(16000, "out of range"),
]


def write_json(path):
    path.write_text(json.dumps(ROWS))


def write_wrapped_json(path):
    path.write_text(json.dumps({"explanations": ROWS}))


def write_jsonl(path):
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS) + "\n")


def write_jsonl_gz(path):
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(row) + "\n" for row in ROWS)


@pytest.mark.parametrize("name, write", [("np.json", write_json), ("wrapped.json", write_wrapped_json),
                                         ("batch-0.jsonl", write_jsonl), ("batch-0.jsonl.gz", write_jsonl_gz)])
def test_import_neuronpedia(tmp_path, name, write):
    write(tmp_path / name)
    cat = catalog({5: "my anger"}, curated={5})
    with pytest.warns(UserWarning, match="skipped 1 rows with an index outside 0..63"):
        assert cat.import_neuronpedia(tmp_path / name) == 2
    assert cat.label(3) == "the Golden Gate Bridge" and cat.label(4) == "dogs and puppies"
    assert cat.label(5) == "my anger"  # curated labels are kept
    assert ids(cat.search("golden gate")) == [3]


def test_import_first_row_wins_and_rejects_wrong_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(ROWS[3:5]))
    cat = catalog({})
    assert cat.import_neuronpedia(tmp_path / "a.json") == 1 and cat.label(5) == "anger"
    (tmp_path / "features.jsonl").write_text(json.dumps({"index": "1", "maxActApprox": 3.0}) + "\n")
    with pytest.raises(ValueError, match="no explanation rows"):
        cat.import_neuronpedia(tmp_path / "features.jsonl")
    (tmp_path / "broken.jsonl").write_text(json.dumps(np_row(1, "x")) + "\n{oops\n")
    with pytest.raises(ValueError, match="not valid JSON lines"):
        cat.import_neuronpedia(tmp_path / "broken.jsonl")
    (tmp_path / "mixed.json").write_text(json.dumps([np_row(1, "x"), np_row(2, "y", layer="12-gemmascope-res-16k")]))
    with pytest.raises(ValueError, match="several sources"):
        cat.import_neuronpedia(tmp_path / "mixed.json")


# --- neighbours ----------------------------------------------------------------------------


W_DEC = torch.tensor([
    [1.0, 0.0, 0.0],
    [9.0, 1.0, 0.0],  # ~ feature 0, longer: cosine ignores the norm
    [0.0, 1.0, 0.0],
    [-1.0, 0.0, 0.0],  # opposite of 0: last
    [1.0, 1.0, 0.0],  # 45 degrees from 0
])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_neighbours_by_decoder_cosine(dtype):
    near = neighbours(SimpleNamespace(W_dec=W_DEC.to(dtype)), 0, k=4)
    assert [i for i, _ in near] == [1, 4, 2, 3]
    assert near[1][1] == pytest.approx(2 ** -0.5, abs=1e-2)
    assert near[3][1] == pytest.approx(-1.0, abs=1e-2)


def test_neighbours_of_a_dictionary():
    d = Dictionary(W_enc=W_DEC.T.clone(), b_enc=torch.zeros(5), W_dec=W_DEC, b_dec=torch.zeros(3))
    assert [i for i, _ in neighbours(d, 2, k=2)] == [4, 1]
    assert len(neighbours(d, 2, k=100)) == 4
    with pytest.raises(FeatureNotFound):
        neighbours(d, 5)


def test_gzipped_catalog_round_trip_and_save_keeps_the_format(tmp_path):
    cat = Catalog(D_SAE, {3: Feature(3, "anger", 2.0, 0.1, examples=[{"tokens": ["a"], "max_index": 0}])})
    path = cat.save(tmp_path, compress=True)
    assert path.name == "features.json.gz" and not (tmp_path / FILENAME).exists()
    loaded = Catalog.load(tmp_path, D_SAE)
    assert loaded[3] == cat[3]
    assert loaded.save(tmp_path) == path  # a gzipped catalog stays gzipped
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(ValueError, match="not valid JSON"):
        Catalog.load(tmp_path, D_SAE)
