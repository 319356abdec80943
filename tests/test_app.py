"""The app: its parts as plain functions, then through a real Gradio server and gradio_client
(tiny model). The browser test is tests/test_browser.py."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import gradio as gr
import pytest
import torch

from app_helpers import BRIDGE, DECEPTION, DOGS, always_firing, serve, tiny_catalog, tiny_engine
from chat.errors import ModelLoadError
from chat.steer.readout import FeatureHit
from chat.ui import fired as fd
from chat.ui import steer_state as st
from chat.ui.chat_panel import ChatHandlers, RunControl
from chat.ui.errors import reported, whole
from chat.ui.fired_panel import FiredHandlers
from chat.ui.loader import EngineLoader
from chat.ui.pairings import PAIRINGS, resolve
from chat.ui.steer_panel import SteerHandlers
from features.catalog import Catalog, Feature

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine(tiny_lm):
    return tiny_engine(tiny_lm)


# -- the steering panel's state ---------------------------------------------------------------

def test_measured_strength_bands_set_slider_ranges():
    def feature(**strengths):
        return Feature(1, "x", strengths=strengths)

    assert st.recommended(feature(add=[3, 7])) == (-5.0, 5.0, 7.0)
    assert st.recommended(feature(clamp=[-4, -2]), "clamp") == (-3.0, 3.0, 4.0)
    assert st.recommended(feature(clamp=[1, 2])) is None  # no band for add
    assert st.recommended(feature(add=[-2, 2])) is None
    assert st.row_for(feature(add=[3, 7]), "x").limit == 14
    assert st.row_for(feature(clamp=[1, 1000]), "x").limit == 200  # MAX_STRENGTH
    assert st.row_for(feature(), "x", strength=50).strength == st.DEFAULT_LIMIT
    assert st.row_for(feature(add=[0.5, 1]), "x").limit == st.MIN_LIMIT  # a low band gets a narrow slider


def test_rows_add_remove_and_values():
    rows = []
    for i in range(st.MAX_ROWS):
        rows, problem = st.add(rows, st.SteerRow(i, f"f{i}"))
        assert problem is None
    assert st.add(rows, st.SteerRow(99, "x"))[1].startswith("the panel holds at most")
    assert "already" in st.add(rows, st.SteerRow(0, "again"))[1]
    rows = st.with_values(rows, [1.5, -2, None, 0, 0, 0])
    assert st.steer_dict(rows)[0] == 1.5 and st.steer_dict(rows)[1] == -2.0 and st.steer_dict(rows)[2] == 0.0
    assert [r.id for r in st.remove(rows, 1)] == [0, 2, 3, 4, 5]
    assert st.describe(rows[:2], "clamp") == "clamp: +1.5 × #0 f0, -2 × #1 f1"
    assert st.describe([], "add") == "no steering"


def test_presets_come_from_curated_features():
    names = [p.name for p in st.presets(tiny_catalog())]
    assert names == ["More “golden gate bridge”", "More “deception and lies”", "Less “golden gate bridge”",
                     "More “golden gate bridge”, less “deception and lies”"]
    both = st.presets(tiny_catalog())[-1]
    assert [(r.id, r.strength) for r in both.rows] == [(BRIDGE, 5.0), (DECEPTION, -4.0)]  # measured, default
    assert st.presets(Catalog(8, {1: Feature(1, "not curated")})) == []


def test_a_new_slider_starts_where_the_feature_shows():
    assert st.starting_strength(Feature(1, "x", strengths={"add": [3, 7], "clamp": [2, 4]})) == 3.0
    assert st.starting_strength(Feature(1, "x", strengths={"add": [3, 7], "clamp": [2, 4]}), "clamp") == 2.0
    assert st.starting_strength(Feature(1, "x", extra={"recommended": 2.5})) == 2.5
    assert st.starting_strength(Feature(1, "x", extra={"writes": ["sea"]})) == st.DISCOVER_STRENGTH
    assert st.starting_strength(Feature(1, "x")) == st.DEFAULT_AMPLIFY


def test_a_slider_reaches_twice_what_the_feature_needs():
    assert st.row_for(Feature(1, "x", strengths={"add": [0.5, 1]}), "x", 0.5).limit == st.MIN_LIMIT
    assert st.row_for(Feature(1, "x", extra={"recommended": 8.0}), "x", 8.0).limit == 16.0
    assert st.row_for(Feature(1, "x"), "x", 4.0).limit == st.DEFAULT_LIMIT


def test_presets_file(tmp_path):
    catalog = tiny_catalog()
    (tmp_path / st.PRESETS_FILE).write_text(
        '[[preset]]\nname = "Bridges everywhere"\nmessage = "Hi"\nsteer = { 5 = 4.0, 9 = -1 }\n'
        '[[preset]]\nname = "Clamped"\nmessage = "Hello"\nmode = "clamp"\nsteer = { 7 = 2 }\n')
    first, second = st.presets_for(catalog, tmp_path)
    assert first.name == "Bridges everywhere" and first.message == "Hi" and first.mode == "add"
    assert [(r.id, r.strength) for r in first.rows] == [(BRIDGE, 4.0), (DOGS, -1.0)]
    assert second.mode == "clamp" and second.rows[0].label == "deception and lies"
    assert st.presets_for(catalog, None)[0].name == "More “golden gate bridge”"  # no file: from curated
    for bad, msg in (('steer = { 500 = 1 }', "not a feature id"), ('steer = { 5 = "a" }', "must be a number"),
                     ('mode = "push"\nsteer = { 5 = 1 }', "mode must be")):
        (tmp_path / st.PRESETS_FILE).write_text(f'[[preset]]\nname = "x"\nmessage = "y"\n{bad}\n')
        with pytest.raises(st.PresetError, match=msg):
            st.presets_for(catalog, tmp_path)


def test_try_panel_presets_turn_compare_on(engine):
    from chat.ui.tryit import TryHandlers

    tries = TryHandlers(EngineLoader.ready(engine))
    buttons = tries.buttons()
    assert buttons[0].value == "More “golden gate bridge”" and len(buttons) == st.MAX_PRESETS
    out = tries.apply(0)
    rows, mode, compare, row, message = out[0], *out[-5:-1]
    assert [(r.id, r.strength) for r in rows] == [(BRIDGE, 5.0)] and mode == "add"
    assert compare is True and row.visible is True and message == st.DEFAULT_PRESET_MESSAGE


# -- the fired-features panel's values ------------------------------------------------------

def test_fired_values(engine):
    reply = engine.reply("Hello there", max_new_tokens=8)
    last = fd.LastReply.of(reply)
    assert last.feature(DOGS) == reply.readout.feature(DOGS)
    ranked = fd.ranked(last, engine.catalog)
    bars = fd.bars(last, engine.catalog.label, watched=[ranked[0].id])
    assert [fd.choice_id(name) for name in bars] == [h.id for h in ranked]
    assert list(bars.values()) == sorted(bars.values(), reverse=True)  # most unusual first
    assert all(0 <= v <= 1 for v in bars.values()) and next(iter(bars)).startswith("⚠ #")
    # Without a catalog (any label function), the reply's own top features by peak ÷ max.
    plain = fd.bars(last, lambda i: f"f{i}")
    assert [fd.choice_id(name) for name in plain] == [h.id for h in reply.top_features]
    top = reply.top_features[0].id
    shaded = fd.highlight(last, top)
    assert [t for t, _ in shaded] == reply.tokens and max(v or 0 for _, v in shaded) == 1.0
    alert, fired = fd.watch_alert(last, [top], engine.catalog.label)
    assert "Watched feature fired" in alert and fired[0].startswith(f"#{top} ")
    quiet = [i for i in range(64) if max(last.feature(i)) == 0][0]
    assert fd.watch_alert(last, [quiet], engine.catalog.label)[1] == []
    assert fd.bars(None, engine.catalog.label) is None and fd.choice_id("nothing") is None


def test_fired_rows_say_the_whole_word_each_feature_peaks_on():
    """A row says where its feature peaked, as a whole word, so that a name that does not fit
    what fired here shows it ("groups and organisations · on “coma”")."""
    tokens = [" She", " is", " in", " a", " co", "ma", ".", "\n"]
    acts = torch.zeros(len(tokens), 4)
    acts[5, 0], acts[4, 0] = 2.0, 1.0  # peaks on the second piece of "coma"
    acts[1, 1] = 0.5
    acts[7, 2] = 0.3
    last = fd.LastReply(tokens, acts.to_sparse(), [])
    assert fd.peak_words(last, [0, 1, 2, 3]) == {0: "coma", 1: "is", 2: "line break"}  # 3 never fired
    hit = FeatureHit(0, "x", 2.0, 2, 0.5)
    assert fd.choice_name(hit, "groups", False, word="coma") == "#0 groups · on “coma” · peak 2"
    assert fd.choice_id(fd.choice_name(hit, "groups", True, " [mixed]", "coma")) == 0


def test_examples_are_escaped_and_read_defensively():
    html = fd.examples_html(tiny_catalog()[BRIDGE])
    assert "&lt;b&gt;" in html and "<b>" not in html and "rgba(255, 140, 0, 1.00)" in html
    shaded = Feature(1, examples=[{"tokens": ["a", "b"], "acts": [0.0, 2.0]}, "junk", {"tokens": "no"}])
    assert fd.examples_html(shaded).count('class="example"') == 1
    assert "No example" in fd.examples_html(Feature(2))


def test_the_feature_card_says_what_the_feature_writes_and_reads_it_defensively():
    card = fd.feature_card(Feature(3, "snow", 2.0, extra={"writes": ["snow", "cold", 7]}, top_tokens=[" ice"]), "snow")
    assert "Amplified, replies say: `snow`, `cold`" in card and "7" not in card.split("say:")[1].split("\n")[0]
    assert "Promotes: `ice`" in card
    assert "replies say" not in fd.feature_card(Feature(3, extra={"writes": "snow"}), "x")


# -- handlers, called directly ----------------------------------------------------------------

def drain(generator) -> list:
    return list(generator)


@pytest.mark.filterwarnings("ignore:Watched feature fired")  # gr.Warning outside a request
def test_respond_streams_the_steered_reply_and_compares(engine):
    chat = ChatHandlers(EngineLoader.ready(engine))
    rows = [st.SteerRow(BRIDGE, "golden gate bridge", limit=12)]
    outs = drain(chat.respond(RunControl(), "Hello there", [], rows, "add", 12, 0, 0, True, [DOGS], 8.0))
    steered = engine.reply("Hello there", steer={BRIDGE: 8.0}, max_new_tokens=12)
    plain = engine.reply("Hello there", max_new_tokens=12)
    assert len(outs) > 4  # streamed: the chat grows a few tokens at a time
    unsteered = outs[-1][2]  # the compare pass comes last
    final = [o for o in outs if isinstance(o[6], fd.LastReply)][-1]
    assert final[0][-1] == {"role": "assistant", "content": steered.text}
    assert unsteered == plain.text and steered.text != plain.text
    assert final[6].tokens == steered.tokens and set(final[4]) and "watched" in final[5].lower()
    assert outs[0][3].label == "Steered (add: +8 × #5 golden gate bridge)"
    # the message it answers is read too; the panel shows it on request, the alert stays the reply's
    said = engine.encode("Hello there")
    shown = fd.read_on(final[6], fd.ON_MESSAGE, engine.encode)
    assert final[6].message == "Hello there" and fd.read_on(final[6], fd.ON_REPLY, engine.encode) is final[6]
    assert shown.tokens == said.tokens and torch.equal(shown.acts.to_dense(), said.acts)
    fired = FiredHandlers(EngineLoader.ready(engine))
    on_reply, on_message = (fired.refresh(final[6], [DOGS], False, on) for on in (fd.ON_REPLY, fd.ON_MESSAGE))
    assert on_reply[0] == final[4] and on_message[1] == on_reply[1]
    assert on_message[0] and on_message[0] != on_reply[0]
    assert on_message[0] == fd.bars(shown, engine.catalog.label, [DOGS], catalog=engine.catalog)
    where = fired.details(BRIDGE, final[6], fd.ON_MESSAGE)[3]
    assert [t for t, _ in where] == said.tokens


def test_stop_and_clear_end_a_running_reply(engine):
    chat = ChatHandlers(EngineLoader.ready(engine))
    run = RunControl()
    replies = chat.respond(run, "Hello there", [], [], "add", 400, 0, 0, False, [])
    next(replies)
    chat.stop(run)
    last = [o for o in replies if isinstance(o[6], fd.LastReply)][-1][6]
    assert len(last.tokens) < 400
    replies = chat.respond(run, "Hello there", [], [], "add", 400, 0, 0, False, [])
    next(replies)
    assert chat.clear(run)[0] == []
    assert list(replies) == []  # a cleared chat is not written back


def test_retry_takes_back_the_last_turn(engine):
    chat = ChatHandlers(EngineLoader.ready(engine))
    history = [{"role": "user", "content": [{"type": "text", "text": "one"}]}, {"role": "assistant", "content": "a"},
               {"role": "user", "content": "two"}, {"role": "assistant", "content": "b"}]
    assert chat.take_last(history) == ([{"role": "user", "content": "one"}, {"role": "assistant", "content": "a"}],
                                       "two")
    with pytest.raises(gr.Error, match="Nothing to retry"):
        chat.take_last([])
    # An empty message is a warning that changes nothing: no Error badges over the chat and panel.
    with pytest.warns(UserWarning, match="Type a message"):
        outs = drain(chat.respond(RunControl(), "  ", [], [], "add", 8, 0, 0, False, []))
    assert len(outs) == 1 and all(isinstance(o, type(gr.skip())) for o in outs[0])


def test_steering_panel_handlers(engine):
    steer = SteerHandlers(EngineLoader.ready(engine))
    assert steer.find("bridge").choices == [("#5 golden gate bridge", BRIDGE)]
    assert steer.find("zzzz qqqq").label == "No feature matches 'zzzz qqqq'"
    rows = steer.add(BRIDGE, [], "add")[0]
    assert [(r.id, r.strength) for r in rows] == [(BRIDGE, 3.0)]  # never 0: the low end of its add band
    rows = steer.add("dogs", rows, "add", 2.5)[0]  # the slider of row 0 shows 2.5
    assert [(r.id, r.strength) for r in rows] == [(BRIDGE, 2.5), (DOGS, st.DEFAULT_AMPLIFY)]
    view = steer.remove(0, rows, 2.5, -1.0)
    assert [(r.id, r.strength) for r in view[0]] == [(DOGS, -1.0)]
    assert view[1].visible is True and view[2].visible is False
    with pytest.raises(gr.Error, match="no feature matches"):
        steer.add("zzzz qqqq", [], "add")


def test_concept_box_fills_the_sliders(engine):
    from chat.steer.concept import Concept, ConceptError

    engine.concepts.put(Concept("rain", "add", ((DOGS, 2.5), (BRIDGE, 1.0)), (0.75, 1.0), 1.0, 1.2, ("rain",)))
    steer = SteerHandlers(EngineLoader.ready(engine))
    view = steer.concept("rain", [st.row_for(engine.catalog[BRIDGE], "bridge", 3.0)], "add", 3.0)
    rows, mode, note = view[0], view[-2], view[-1]
    assert [(r.id, r.strength) for r in rows] == [(BRIDGE, 1.0), (DOGS, 2.5)] and mode == "add"
    assert "rain" in note and "100%" in note
    # What each feature was measured to write here, before its name (issue 27: "writes: ocean",
    # not "speak, trick and put").
    assert f"#{DOGS} writes: rain" in note and rows[1].label == f"{engine.catalog.label(DOGS)} → rain"
    rows = steer.concept("rain=-1", [st.row_for(engine.catalog[BRIDGE], "bridge", 3.0)], "clamp", 3.0)[0]
    assert [(r.id, r.strength) for r in rows] == [(DOGS, -2.5), (BRIDGE, -1.0)]  # clamp rows give way
    # A malformed request is said in one line (a warning and the note), and loses nothing: no
    # Error badges on the mode and the note, the rows kept.
    view = steer.concept("cars=abc", kept := [st.row_for(engine.catalog[BRIDGE], "bridge", 3.0)], "clamp", 2.0)
    assert [(r.id, r.strength) for r in view[0]] == [(BRIDGE, 2.0)] and view[-2] == "clamp"
    assert view[-1].startswith("**Not steered:**") and "abc" in view[-1]
    assert steer.concept("  ", [], "add")[-1].startswith("**Not steered:**")
    assert steer.reset()[-1] == "" and steer.remove(0, kept, 2.0)[-1] == ""  # no stale note
    # A word nothing writes is an answer, not a failure: said in the note, the rows and mode kept.
    engine.concepts.put(ConceptError("no feature of this dictionary makes the model say 'zzz'"), "zzz")
    kept = [st.row_for(engine.catalog[BRIDGE], "bridge", 3.0)]
    view = steer.concept("zzz", kept, "clamp", 2.0)
    assert [(r.id, r.strength) for r in view[0]] == [(BRIDGE, 2.0)] and view[-2] == "clamp"
    assert view[-1].startswith("**Not steered:** no feature of this dictionary makes the model say 'zzz'")


def test_rename_is_saved_and_found_later(tiny_lm):
    engine = tiny_engine(tiny_lm, key="tiny-rename-test")
    fired = FiredHandlers(EngineLoader.ready(engine))
    rows = [st.SteerRow(DOGS, "dogs")]
    out = fired.rename(DOGS, "  loyal canine companions ", None, [DOGS], False, fd.ON_REPLY, rows, 1.0)
    assert "loyal canine companions" in out[0] and out[3].choices == [("#9 loyal canine companions", DOGS)]
    assert out[4] == [st.SteerRow(DOGS, "loyal canine companions", 1.0)]
    assert engine.search("canine")[0].id == DOGS
    assert Catalog(64, key="tiny-rename-test").search("canine")[0].id == DOGS  # saved for later sessions
    with pytest.raises(gr.Error, match="empty"):
        fired.rename(DOGS, " ", None, [], False, fd.ON_REPLY, [])


def test_feature_details(engine):
    fired = FiredHandlers(EngineLoader.ready(engine))
    last = fd.LastReply.of(engine.reply("Hello there", max_new_tokens=6))
    fid, column, card, where, near, examples, name = fired.details(BRIDGE, last)
    assert fid == BRIDGE and column.visible and "golden gate bridge" in card and name == "golden gate bridge"
    assert "steerability 0.80" in card and "add works at 3…7" in card
    assert [t for t, _ in where] == last.tokens and len(near.choices) == 8 and "example" in examples
    assert fired.watch_add(BRIDGE, [DOGS]).value == [DOGS, BRIDGE]


def test_errors_become_one_line_gr_errors():
    @reported
    def user():
        raise ValueError("strength must be finite\nmore")

    @reported
    def bug():
        raise KeyError("oops")

    @reported
    def stream():
        yield 1
        raise ModelLoadError("no model")

    with pytest.raises(gr.Error) as e:
        user()
    assert e.value.message == "strength must be finite"
    with pytest.raises(gr.Error, match="internal error"):
        bug()
    with pytest.raises(gr.Error, match="no model"):
        list(stream())
    assert whole(64.0, "n") == 64
    for bad in (1.5, "8", True, None):
        with pytest.raises(ValueError):
            whole(bad, "n")


# -- loading ----------------------------------------------------------------------------------

def test_loader_falls_back_to_the_default_and_says_why(monkeypatch):
    import chat.engine
    import chat.runtime.models

    def load_model(ref, device=None, progress=None):
        if ref is not None:
            raise ModelLoadError(f"cannot load model {ref!r}: offline")
        return "embedded"

    monkeypatch.setattr(chat.runtime.models, "load_model", load_model)
    monkeypatch.setattr(chat.engine, "load", lambda *a, lm=None, **k: type("E", (), {"status": lambda s: "ok"})())
    loader = EngineLoader("google/gemma-3-270m-it", "google/gemma-scope-2-270m-it/x")
    loader.start()
    loader.get()
    assert "could not load google/gemma-3-270m-it" in loader.status() and loader.status().startswith("Loaded: ok")
    strict = EngineLoader("nope/model", fallback=False)
    with pytest.raises(ModelLoadError, match="offline"):
        strict.get()
    assert strict.failed and strict.status().startswith("⚠ could not load the model")


def test_pairings():
    assert resolve(None, "m", None) == ("m", None)
    assert resolve("gemma-3-270m-it", None, None) == PAIRINGS["gemma-3-270m-it"][:2]
    assert resolve("gemma-2-2b-it", "local/model", None)[0] == "local/model"
    with pytest.raises(ValueError, match="unknown preset"):
        resolve("nope", None, None)


def test_spaces_files():
    """Spaces reads the README front matter and installs requirements.txt (not pyproject.toml)."""
    import tomllib

    front = (ROOT / "README.md").read_text().split("---")[1]
    for line in ("sdk: gradio", "app_file: app.py", 'python_version: "3.11"'):
        assert line in front
    required = {re.split(r"[<>=\[ ]", r)[0].lower() for r in (ROOT / "requirements.txt").read_text().split()
                if r and not r.startswith(("#", "-"))}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    needed = {re.split(r"[<>=\[ ]", d)[0].lower() for d in deps} - {"gradio"}  # Spaces pins gradio itself
    assert needed <= required


# -- through a server -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(engine):
    with serve(engine, concurrency_limit=2) as url:
        yield url


@pytest.fixture
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def test_stable_endpoints(client):
    assert set(client.view_api(return_format="dict", print_info=False)["named_endpoints"]) == {"/generate", "/search", "/concept"}


def test_concept_endpoint_gives_steering_that_generate_takes_unchanged(client, engine):
    from gradio_client.exceptions import AppError

    from chat.steer.concept import Concept

    engine.concepts.put(Concept("ocean", "add", ((DOGS, 2.0),), (1.0, 1.5), 0.75, 1.1, ("ocean",)))
    ocean = client.predict("ocean", api_name="/concept")
    assert ocean == {"concept": "ocean", "mode": "add", "scale": 1.0, "band": [1.0, 1.5], "rate": 0.75,
                     "features": [{"id": DOGS, "label": "dogs", "strength": 2.0}]}
    steer = {str(f["id"]): f["strength"] for f in ocean["features"]}
    reply = client.predict("Hello there", steer, ocean["mode"], 12, api_name="/generate")
    assert reply["text"] == engine.reply("Hello there", steer=engine.concept("ocean"), max_new_tokens=12).text
    assert client.predict("Ocean=-1", api_name="/concept")["features"][0]["strength"] == -2.0
    for bad, message in (("", "empty"), ("12", "letters"), ("ocean=x", "number")):
        with pytest.raises(AppError, match=message):
            client.predict(bad, api_name="/concept")


def test_search_endpoint(client):
    assert client.predict("brdige", api_name="/search") == [
        {"id": BRIDGE, "label": "golden gate bridge", "max_activation": 4.0, "density": 0.01, "steerability": 0.8,
         "name": "golden gate bridge", "kind": None, "reads": [], "writes": [], "score": None, "curated": True,
         "strengths": {"add": [3, 7]}}]
    assert client.predict("9", api_name="/search")[0]["id"] == DOGS
    assert client.predict("zzzz qqqq", api_name="/search") == []


def test_generate_with_and_without_steering(client, engine):
    plain = client.predict("Hello there", {}, api_name="/generate")
    assert plain["text"] == engine.reply("Hello there", max_new_tokens=64).text
    assert set(plain["top_features"][0]) == {"id", "label", "activation"} and plain["steer"] == []
    steered = client.predict("Hello there", {"bridge": 8, "9": -2}, "add", 12, api_name="/generate")
    assert steered["text"] == engine.reply("Hello there", steer={BRIDGE: 8, DOGS: -2}, max_new_tokens=12).text
    assert steered["text"] != engine.reply("Hello there", max_new_tokens=12).text
    assert steered["steer"] == [{"id": BRIDGE, "label": "golden gate bridge", "strength": 8.0},
                                {"id": DOGS, "label": "dogs", "strength": -2.0}]
    sampled = [client.predict("Hi", {}, "add", 8, 3, 1.0, api_name="/generate")["text"] for _ in range(2)]
    assert sampled[0] == sampled[1]  # same seed, same sample


def test_two_clients_steering_at_once_get_their_own_results(server, engine):
    from gradio_client import Client

    message = "Tell me about your weekend."
    asks = [({"dogs": 8.0}, "add"), ({"deception": 5.0}, "clamp"), ({}, "add")]
    expected = [engine.reply(message, steer=steer, mode=mode, max_new_tokens=16).text for steer, mode in asks]
    assert len(set(expected)) == len(asks)  # each steering shows in the text
    clients = [Client(server, verbose=False) for _ in asks]
    barrier = threading.Barrier(len(asks))
    results = [None] * len(asks)

    def ask(i):
        barrier.wait()  # all in flight together (the test server runs two at once)
        results[i] = clients[i].predict(message, *asks[i], 16, api_name="/generate")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(asks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert [r["text"] for r in results] == expected


def test_bad_requests_give_errors_and_the_server_stays_up(client):
    from gradio_client.exceptions import AppError

    bad = [
        (("Hi", {"bridge": "nan"}), "finite"),
        (("Hi", {"bridge": 1e9}), "outside"),
        (("Hi", {"zzzz qqqq": 1}), "no feature matches"),
        (("Hi", {"bridge": 1}, "sideways"), "mode must be"),
        (("   ", {}), "empty"),
        (("Hi", {}, "add", 0), "max_new_tokens"),
        (("Hi", {}, "add", 2.5), "integer"),
        (("Hi", "bridge=4"), "steer must be an object"),
        (("Hi", {"100000": 1}), "out of range"),
    ]
    for args, message in bad:
        with pytest.raises(AppError, match=message):
            client.predict(*args, api_name="/generate")
    with pytest.raises(AppError, match="empty search query"):
        client.predict("  ", api_name="/search")
    assert client.predict("Hi", {}, "add", 4, api_name="/generate")["text"] is not None


def test_a_concept_search_can_be_cancelled(engine, monkeypatch):
    """Cancel ends a running search within a decoding step; the rows stay, nothing is cached."""
    import threading

    import chat.steer.concept as concept_module

    steer = SteerHandlers(EngineLoader.ready(engine))
    request = type("Request", (), {"session_hash": "s1"})()
    real = concept_module.replies
    started = threading.Event()

    def slow_replies(*args, cancel=None, **kwargs):
        started.set()
        assert cancel is not None and cancel.wait(timeout=30)  # held until the user cancels
        return real(*args, cancel=cancel, **kwargs)

    monkeypatch.setattr(concept_module, "replies", slow_replies)
    kept = [st.row_for(engine.catalog[BRIDGE], "bridge", 3.0)]
    out = []
    worker = threading.Thread(target=lambda: out.append(steer.concept("umbrella", kept, "add", 2.0, request=request)))
    worker.start()
    assert started.wait(timeout=30)
    steer.cancel_concept(request=request)
    worker.join(timeout=60)
    view = out[0]
    assert [(r.id, r.strength) for r in view[0]] == [(BRIDGE, 2.0)] and view[-1].startswith("**Cancelled.**")
    assert engine.concepts.get("umbrella") is None and not steer._searches
