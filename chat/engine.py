"""The Python API: a model, a dictionary on one of its layers, and the dictionary's catalog.

    from chat import load
    engine = load()                                  # embedded Gemma 3 270M + default dictionary
    engine.search("bridge")[:3]                      # named features
    reply = engine.reply("Tell me about your weekend.", steer={"bridge": 6})
    reply.text, reply.top_features
    for delta in (stream := engine.stream("Hi", steer={1234: -2}, mode="clamp")):
        print(delta, end="")
    engine.encode("The Golden Gate Bridge").tokens

An Engine holds no steering state: every call gets its own steering and its own hooks, so one
engine serves many users (threads) at once.
"""
from __future__ import annotations

import numbers
import threading
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Callable, Mapping

import torch
from torch import Tensor

from chat.steer.concept import CONCEPTS_FILE, Concept, ConceptCache, ConceptError, find, parse_concept, related, user_file
from chat.steer.generate import Reply, ReplyStream, generate
from chat.steer.settings import GenerationSettings
from chat.steer.hooks import Recorder, StopForward, attach
from chat.steer.loops import bad_reply, garbled
from chat.runtime.models import LoadedModel, load_model
from chat.steer.prompt import Prompt, PromptError, build_prompt, clean_text
from chat.steer.steering import FeatureSteerer, Steering, SteeringError
from features import formats, neuronpedia
from features.catalog import Catalog, Feature, neighbours
from features.dictionary import Dictionary, DictionaryError
from features.placeholder import placeholder_catalog, placeholder_dictionary

DEFAULT_DICTIONARY = Path(__file__).resolve().parents[1] / "assets" / "dictionary"
MAX_CONTEXT = 8192  # prompt + reply tokens; long contexts are slow on CPU
MAX_ENCODE_CHARS = 100_000

# A varied paragraph for estimating max activations when a dictionary ships no stats.
CALIBRATION_TEXT = (
    "The Golden Gate Bridge opened in 1937 and spans the strait between San Francisco Bay and "
    "the Pacific Ocean. My dog loves running on the beach, but the cat prefers sleeping by the "
    "window when it rains. In the beginning God created the heaven and the earth. She was angry "
    "and afraid; he lied to her, flattered her, and promised everything would be fine. "
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))  # 5\n"
    "On Monday, 14 March 2022, the temperature fell to -3 degrees and snow covered the hills. "
    "Bach wrote music for the organ; Monet painted water lilies in soft blue and green. "
    "Fresh bread, cheese, apples and a cup of coffee make a fine breakfast. "
    "Warning: the chemical is toxic and may explode if heated. The doctor said the patient's "
    "heart rate was stable. Thank you so much, you are truly brilliant and kind!"
)


@dataclass
class Encoded:
    tokens: list[str]  # (T,) TEXT's tokens, BOS excluded
    token_ids: list[int]  # (T,)
    acts: Tensor  # (T, d_sae) dictionary activations, float32 CPU

    def top(self, k: int) -> list[list[tuple[int, float]]]:
        """Per token, its k strongest (feature id, activation) pairs, strongest first."""
        if self.acts.numel() == 0:
            return [[] for _ in self.tokens]
        vals, idx = torch.topk(self.acts, min(k, self.acts.shape[1]), dim=-1)  # (T, k)
        return [
            [(int(i), float(v)) for i, v in zip(ri, rv) if v > 0]
            for ri, rv in zip(idx.tolist(), vals.tolist())
        ]


def feature_id(catalog: Catalog, query: str | int) -> int:
    """A feature id from an id or a label query (the catalog's best match)."""
    if isinstance(query, bool) or not isinstance(query, (str, numbers.Integral)):
        raise SteeringError(f"a feature is an id or a label query, got {query!r}")
    return catalog.resolve(query)


def resolve_features(catalog: Catalog, steer: Mapping) -> dict[int, float]:
    """{feature id or label query: strength} -> {feature id: strength}; two keys that resolve to
    one feature are an error."""
    resolved: dict[int, float] = {}
    for key, strength in steer.items():
        fid = feature_id(catalog, key)
        if fid in resolved:
            raise SteeringError(f"{key!r} resolves to feature {fid}, which is already steered")
        resolved[fid] = strength
    return resolved


class Engine:
    def __init__(self, lm: LoadedModel, dictionary: Dictionary, catalog: Catalog, layer: int,
                 dictionary_name: str, folder: Path | None = None):
        if dictionary.d_in != lm.d_model:
            raise DictionaryError(
                f"dictionary {dictionary_name!r} reads vectors of size {dictionary.d_in} but "
                f"{lm.name} has d_model {lm.d_model}; pick a dictionary made for this model"
            )
        if not 0 <= layer < lm.n_layers:
            raise DictionaryError(f"layer {layer} does not exist ({lm.name} has layers 0..{lm.n_layers - 1})")
        self.lm, self.catalog, self.layer, self.dictionary_name = lm, catalog, layer, dictionary_name
        self.folder = folder  # the dictionary's local folder (its catalog, presets), if any
        self.dictionary = dictionary.to(lm.layer_device(layer))
        self.placeholder = bool(dictionary.cfg.get("placeholder"))
        self._concepts: ConceptCache | None = None
        self._concept_search = threading.Lock()  # one search at a time: each one uses every core
        if catalog.max_activation(0) is None:  # no feature has stats
            self._calibrate()
        self.max_acts = torch.tensor(
            [catalog.max_activation(i) or 1.0 for i in range(dictionary.d_sae)], dtype=torch.float32
        )  # (d_sae,) the unit of steering strength per feature
        bad = (~torch.isfinite(self.max_acts) | (self.max_acts < 0)).nonzero()
        if bad.numel():
            i = int(bad[0])
            raise DictionaryError(f"the features file of {dictionary_name!r} gives feature {i} max_activation "
                                  f"{self.max_acts[i].item()}; it must be a finite number >= 0")

    def _calibrate(self) -> None:
        """Documented fallback for dictionaries without stats: max activation and density on
        CALIBRATION_TEXT; features that never fire there get the median (Catalog's fallback)."""
        acts = self.encode(CALIBRATION_TEXT).acts  # (T, d_sae)
        peak = acts.max(dim=0).values
        density = (acts > 0).float().mean(dim=0)
        self.catalog.set_stats(peak.masked_fill(peak <= 0, float("nan")).tolist(), density.tolist())

    def status(self) -> str:
        kind = "PLACEHOLDER dictionary (random, untrained: features mean nothing)" if self.placeholder \
            else f"dictionary {self.dictionary_name}"
        labels = f" · {self.catalog.labels_source}" if getattr(self.catalog, "labels_source", "") else ""
        return (f"{self.lm.name} · layer {self.layer} · {kind} · {self.dictionary.d_sae} features{labels} · "
                f"{self.lm.device.type} {str(self.lm.dtype).removeprefix('torch.')}"
                f"{' · int8 weights' if self.lm.weights == 'int8' else ''}")

    # -- features -------------------------------------------------------------------------
    def search(self, query: str, top: int = 10) -> list[Feature]:
        return self.catalog.search(query, top=top)

    def _feature_id(self, query: str | int) -> int:
        return feature_id(self.catalog, query)

    def feature(self, query: str | int) -> Feature:
        return self.catalog[self._feature_id(query)]

    def neighbours(self, feature: str | int, k: int = 10) -> list[tuple[int, float]]:
        return neighbours(self.dictionary, self._feature_id(feature), k)

    def steering(self, steer: Steering | Mapping | None = None, mode: str = "add") -> Steering:
        """{feature id or label query: strength} -> Steering (labels resolved by the catalog)."""
        if isinstance(steer, Steering):
            return steer
        if isinstance(steer, Concept):
            return steer.steering()
        if steer is not None and not isinstance(steer, Mapping):
            raise SteeringError(f"steering is a mapping {{feature: strength}}, got {type(steer).__name__}")
        return Steering(resolve_features(self.catalog, steer or {}), mode=mode)

    @property
    def concepts(self) -> ConceptCache:
        """Concepts measured for this dictionary: shipped beside it, then the user's cache."""
        if self._concepts is None:
            key = self.dictionary.fingerprint()
            shipped = self.folder / CONCEPTS_FILE if self.folder is not None else None
            self._concepts = ConceptCache(key, shipped, user_file(key))
        return self._concepts

    def concept(self, concept: str, scale: float | None = None,
                progress: Callable[[float, str], None] | None = None,
                cancel: threading.Event | None = None) -> Concept:
        """Ready steering toward `concept` ("ocean", or "ocean=2" for twice the measured strength):
        features, mode and strengths chosen by a measured search (chat/steer/concept.py, ~15 s the
        first time, then cached). A negative scale pushes the same features the other way, to
        keep the concept out. ConceptError (one line) when no feature writes it; `cancel`, once
        set, ends a search (chat.errors.Cancelled; nothing is kept)."""
        word, parsed = parse_concept(concept)
        scale = parsed if scale is None else scale
        if self.placeholder:
            raise ConceptError("the placeholder dictionary's features are random; load a trained dictionary "
                               "to steer toward a concept")
        try:
            found = self._measured(word, progress, cancel)
        except ConceptError as e:
            near = related(word, self.concepts.found())
            raise ConceptError(f"{e}. Near it, these work: {', '.join(near)}" if near else str(e)) from None
        return found.scaled(scale)

    def _measured(self, word: str, progress: Callable[[float, str], None] | None,
                  cancel: threading.Event | None = None) -> Concept:
        """The cached concept, else one search (kept, found or not); ConceptError when nothing writes it."""
        found = self.concepts.get(word)
        if found is None:
            with self._concept_search:
                found = self.concepts.get(word)  # another request may have searched it meanwhile
                if found is None:
                    try:
                        found = find(self, word, progress, cancel)
                    except ConceptError as e:
                        self.concepts.put(e, word)
                        raise
                    self.concepts.put(found)
        return found

    # -- generation -----------------------------------------------------------------------
    def prompt(self, messages, max_new_tokens: int, frame: str = "chat") -> Prompt:
        context = min(self.lm.context_length, MAX_CONTEXT)
        if max_new_tokens >= context:
            raise PromptError(f"max_new_tokens must be below {context}, the context length here "
                              f"(the prompt needs room too), got {max_new_tokens}")
        return build_prompt(self.lm.tokenizer, messages, max_tokens=context - max_new_tokens, frame=frame)

    def _prepare(self, messages, steer, mode, settings: dict):
        base = settings.pop("settings", None) or GenerationSettings()
        if not isinstance(base, GenerationSettings):
            raise TypeError(f"settings must be a GenerationSettings, got {type(base).__name__}")
        gen = replace(base, **settings)
        steering = self.steering(steer, mode)
        steerer = FeatureSteerer(self.dictionary, steering, self.max_acts)
        return self.prompt(messages, gen.max_new_tokens, gen.frame), steerer, gen

    def _generate(self, prompt, steerer, gen, streamer=None, cancel=None) -> Reply:
        reply = generate(self.lm, self.layer, steerer, prompt, gen, self.catalog.label, self.max_acts,
                         streamer=streamer, cancel=cancel)
        if prompt.dropped_turns or prompt.clipped_tokens:
            reply.warnings.append(
                f"the conversation was too long: dropped {prompt.dropped_turns} older turn(s) and "
                f"{prompt.clipped_tokens} token(s) from the start of the oldest kept message"
            )
        broken = garbled(reply.text) if not steerer.steering.is_noop else None
        if broken:
            reply.warnings.append(f"the steered reply looks garbled ({broken}): the steering is too strong for "
                                  "this reply; lower the strength")
        bad = bad_reply(reply.text) if reply.finish_reason != "cancelled" else None
        if bad == "loops":
            reply.warnings.append("the reply repeats itself; the model will see it only up to where it starts "
                                  "repeating (try Retry, or another seed with temperature > 0)")
        elif bad == "empty":
            reply.warnings.append("the reply is empty; the model will not see this exchange again")
        return reply

    def reply(self, messages, steer: Steering | Mapping | None = None, mode: str = "add", **settings) -> Reply:
        """One reply to `messages` (a str, or [{"role", "content"}] ending with a user turn).
        settings: GenerationSettings fields (max_new_tokens, temperature, top_p, seed, ...), or
        `settings=GenerationSettings.greedy()` (a whole set) plus fields that override it."""
        return self._generate(*self._prepare(messages, steer, mode, settings))

    def stream(self, messages, steer: Steering | Mapping | None = None, mode: str = "add", **settings) -> ReplyStream:
        """Like `reply`, but iterate the result for text as it is generated; `.reply` after."""
        prompt, steerer, gen = self._prepare(messages, steer, mode, settings)
        return ReplyStream(partial(self._generate, prompt, steerer, gen), self.lm.tokenizer, prompt.stop_strings, gen.timeout)

    # -- reading --------------------------------------------------------------------------
    def encode(self, text: str) -> Encoded:
        """Dictionary activations on every token of `text` (BOS added for the model, not shown).
        Runs the model only up to the dictionary's layer."""
        if not isinstance(text, str) or not text.strip():
            raise PromptError("the text to encode is empty")
        text = clean_text(text)
        if len(text) > MAX_ENCODE_CHARS:
            raise PromptError(f"the text is {len(text)} characters; encode takes at most {MAX_ENCODE_CHARS}")
        tok = self.lm.tokenizer
        ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)[: MAX_CONTEXT - 1]
        prefix = [tok.bos_token_id] if tok.bos_token_id is not None else []
        input_ids = torch.tensor([prefix + ids], device=self.lm.device)  # (1, T)
        recorder = Recorder(start=len(prefix))
        steerer = FeatureSteerer(self.dictionary, Steering(), torch.ones(self.dictionary.d_sae))
        with torch.inference_mode(), attach(self.lm, self.layer, steerer, recorder, stop_after=True):
            try:
                self.lm.model(input_ids=input_ids, use_cache=False)
            except StopForward:
                pass
        return Encoded([tok.decode([t]) for t in ids], ids, recorder.dense(len(ids), self.dictionary.d_sae))


def load_catalog(model: str | Path | None = None, dictionary: str | Path | None = None,
                 *, allow_pickle: bool = False, progress: Callable[[str], None] | None = None) -> Catalog:
    """The feature catalog that `load` would use, without loading the model (fast search).
    A catalog without labels gets Neuronpedia's, where the dictionary maps to a source
    (features/neuronpedia.py; `progress` hears about a download); `.labels_source` says which."""
    if dictionary is None and model is None and DEFAULT_DICTIONARY.exists():
        dictionary = DEFAULT_DICTIONARY
    if dictionary is None:
        return placeholder_catalog()
    d, folder = formats.load(dictionary, allow_pickle=allow_pickle)
    catalog = Catalog.load(folder, d.d_sae, key=d.fingerprint())
    neuronpedia.name_catalog(catalog, d.cfg, folder, ref=dictionary, model=model, progress=progress)
    return catalog


def load(model: str | Path | None = None, dictionary: str | Path | None = None, layer: int | None = None,
         *, device: str | None = None, allow_pickle: bool = False, lm: LoadedModel | None = None,
         progress: Callable[[str], None] | None = None, catalog: Catalog | None = None) -> Engine:
    """Load a model and a dictionary into an Engine.

    model: None (embedded Gemma 3 270M), a hub id or a local folder. dictionary: a local path
    or `owner/repo/sub/folder` on the hub; None uses assets/dictionary for the embedded model
    and otherwise a clearly labelled random placeholder. layer: overrides the dictionary's own.
    `lm` reuses an already loaded model (tests, several dictionaries on one model); `catalog`, the
    catalog `load_catalog` gave for the same model and dictionary (the CLI resolves names first).
    A dictionary without labels gets Neuronpedia's where it maps to a source (fetched once and
    cached; `progress` hears about each batch, default stderr); `status()` says where labels
    came from, or that the features are unnamed and how to name them.
    """
    lm = lm or load_model(model, device=device)
    if dictionary is None and model is None and lm.name.startswith("gemma-3-270m") and DEFAULT_DICTIONARY.exists():
        dictionary = DEFAULT_DICTIONARY
    if dictionary is None:
        layer = lm.n_layers // 2 if layer is None else layer
        d, catalog = placeholder_dictionary(lm.d_model, layer)
        return Engine(lm, d, catalog, layer, "placeholder")
    d, folder = formats.load(dictionary, allow_pickle=allow_pickle)
    layer = d.hook_layer if layer is None else layer
    if layer is None:
        raise DictionaryError(f"dictionary {str(dictionary)!r} does not say which layer it reads; pass a layer")
    if catalog is None or catalog.d_sae != d.d_sae:
        catalog = Catalog.load(folder, d.d_sae, key=d.fingerprint())
        neuronpedia.name_catalog(catalog, d.cfg, folder, ref=dictionary, model=model, progress=progress)
    return Engine(lm, d, catalog, layer, str(dictionary), folder)
