"""The model's own essays, stories, letters and dialogues about everyday topics: dense text for
concepts that human text here mentions rarely ("coffee" a few hundred times in all of it).

A base model continues a plain-text opening ("Here is a short story about coffee.\\n\\n"), so each
document is the opening and its continuation, written in paragraphs (the chat frame stops after
one line). Sampling is top-k with a mild repetition penalty, in batches of rows with their own
decode loop: `generate`'s top-p sorts all 262k logits a row and its processors cost more than
the model at batch 64 here.

Documents go to a JSON-lines file, one batch appended whole and synced at a time; a re-run skips
the (topic, genre, round) keys already there, so an interrupted run goes on where it stopped.

    python -m features essays --out ~/.cache/steerchat/text/essays.jsonl --rounds 2
"""
from __future__ import annotations

import json
import os
import random
import re
import time
import zlib
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

import torch

# Openings that make a base model write paragraphs on one topic, each a different register.
GENRES = {
    "essay": "Here is a short essay about {t}.\n\n",
    "story": "Here is a short story about {t}.\n\n",
    "letter": "A letter to a friend about {t}.\n\nDear Sam,\n\n",
    "dialogue": "Two friends talk about {t}.\n\nAnna:",
    "diary": "From my diary: a day of {t}.\n\n",
    "facts": "Everything you should know about {t}\n\n",
}

# Everyday topics, by hand: feelings, food and drink, animals, people and family, work, places,
# weather, health, travel, sport, music, objects, stories and conversation.
EVERYDAY = """
anger, fear, joy, sadness, love, hate, jealousy, pride, shame, guilt, loneliness, boredom, surprise,
disgust, hope, worry, anxiety, stress, happiness, grief, gratitude, kindness, courage, embarrassment,
excitement, nostalgia, regret, trust, friendship, romance, heartbreak, forgiveness, patience,
laughter, tears, a first kiss,
coffee, tea, wine, beer, milk, juice, bread, cheese, butter, eggs, breakfast, lunch, dinner, soup,
pizza, pasta, rice, chocolate, cake, cookies, ice cream, fruit, apples, bananas, oranges, vegetables,
potatoes, tomatoes, salad, meat, chicken, sandwiches, honey, sugar, spices, cooking, baking,
a restaurant, a picnic, a birthday party,
dogs, cats, horses, cows, pigs, sheep, birds, fish, bees, butterflies, spiders, snakes, lions, tigers,
elephants, monkeys, bears, wolves, rabbits, mice, a pet, a zoo, a farm, insects, whales, dolphins,
mother, father, parents, children, a baby, brothers, sisters, grandparents, a family dinner,
a wedding, divorce, neighbours, a best friend, a teacher, a doctor, a nurse, a police officer,
a firefighter, a farmer, a soldier, a king, a queen, a boss, coworkers, a job interview, an office,
a factory, a shop, unemployment, a salary, money, debt, shopping, a bank, taxes, rent, a new house,
moving house, cleaning the house, laundry, a kitchen, a garden, a bedroom,
a city, a village, the countryside, a beach, the ocean, a river, a lake, a forest, a desert,
mountains, an island, a road, a bridge, a school, a university, a hospital, a church, a library,
a museum, a park, a market, an airport, a train station, a hotel, a prison, a castle,
the weather, rain, snow, wind, a storm, thunder, sunshine, a hot summer, winter, autumn, spring, fog,
clouds, a flood, an earthquake, a fire, a drought, ice, the moon, the stars, the sun, the sky,
night, morning, evening,
health, a cold, the flu, a headache, a broken leg, medicine, pills, a disease, cancer, sleep, dreams,
nightmares, exercise, a diet, getting old, death, a funeral, pregnancy, a dentist,
travel, a holiday, a road trip, a plane flight, a train journey, trains, a ship, a car, a bicycle,
a bus, a taxi, a passport, a suitcase, camping, hiking, getting lost, a foreign country,
France, Italy, Japan, America, London, Paris, New York, China, India, Africa, Mexico, Egypt, Germany,
Russia, Spain, Ireland, Scotland,
football, soccer, basketball, baseball, tennis, golf, swimming, running, a marathon, boxing, skiing,
chess, the Olympics, a football match, a team, winning, losing, a race,
music, a song, singing, a guitar, a piano, drums, a concert, a band, an orchestra, dancing, a choir,
jazz, rock music, a radio, a movie, the theatre, a book, a poem, a painting, photography, television,
a phone, a computer, the internet, a letter, a newspaper, a clock, a key, a door, a window, a chair,
a bed, a table, a lamp, a mirror, shoes, a dress, a hat, a coat, jewellery, a ring, a gift, a toy,
a ball, a knife, a hammer, a camera, glasses, an umbrella, a candle, a map, a bag, a wallet, a watch,
a fairy tale, a ghost story, a mystery, a secret, a lie, a promise, an argument, a fight,
a conversation, a phone call, gossip, a joke, an apology, a compliment, advice, a complaint,
a war, an army, a battle, peace, a revolution, an election, a president, the government, the law,
a crime, a thief, a murder, a court, a judge, a prisoner, freedom, a protest,
God, prayer, heaven, angels, the Bible, Christmas, Easter, Halloween, a birthday,
science, a scientist, an experiment, space, a rocket, a robot, electricity, a machine, an invention,
mathematics, history, art, gold, diamonds, a treasure, a pirate, a dragon, a wizard, magic, a witch,
a monster, a hero, a princess, a giant, the Golden Gate Bridge
"""


class Job(NamedTuple):
    topic: str
    genre: str
    round: int

    @property
    def key(self) -> str:
        return f"{self.genre}|{self.round}|{self.topic}"

    @property
    def opening(self) -> str:
        return GENRES[self.genre].format(t=self.topic)


def everyday_topics() -> list[str]:
    return [t.strip() for t in EVERYDAY.replace("\n", " ").split(",") if t.strip()]


def topics(extra: Iterable[str] = ()) -> list[str]:
    """The everyday topics, then `extra` ones (benchmark concepts, queries), without repeats."""
    return list(dict.fromkeys([*everyday_topics(), *extra]))


def jobs(topic_list: Sequence[str], rounds: int) -> list[Job]:
    """Every (topic, genre, round), shuffled once (seed 0): any first part of a run covers
    topics and genres evenly."""
    out = [Job(t, g, r) for r in range(rounds) for t in topic_list for g in GENRES]
    random.Random(0).shuffle(out)
    return sorted(out, key=lambda j: j.round)  # round by round, so round 1 is whole first


def done_keys(path: Path) -> set[str]:
    if not path.exists():
        return set()
    keys = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            keys.add(json.loads(line)["key"])
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by an interruption: its job runs again
    return keys


def _ends_line(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def clean(text: str) -> str:
    """Drop HTML tags and trailing half-sentences; the model writes web-page markup now and then."""
    text = re.sub(r"</?[a-zA-Z][^>]{0,40}>", "", text)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    cut = max(text.rfind(". "), text.rfind(".\n"), text.rfind("!"), text.rfind("?"), text.rfind('."'))
    return text[:cut + 1 + (text[cut + 1:cut + 2] == '"')] if cut > len(text) // 2 else text


@torch.inference_mode()
def sample(lm, openings: Sequence[str], *, max_new_tokens: int = 256, top_k: int = 40, temperature: float = 0.9,
           repetition_penalty: float = 1.15, seed: int = 0) -> list[str]:
    """Continue each opening (one batch, left-padded), top-k sampling; returns the continuations.
    Rows stop at EOS; a repetition penalty (CTRL-style, on the row's own new tokens) keeps a
    small model from looping."""
    tok, model = lm.tokenizer, lm.model
    enc = [[tok.bos_token_id] + tok.encode(o, add_special_tokens=False) for o in openings]
    width, pad = max(map(len, enc)), tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc], device=lm.device)  # (B, W)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc], device=lm.device)  # (B, W)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, W)
    gen = torch.Generator(device=lm.device).manual_seed(seed)
    eos = torch.tensor(sorted(_eos_ids(lm)), device=lm.device)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    B = len(enc)
    new = torch.zeros(B, 0, dtype=torch.long, device=lm.device)  # (B, t)
    done = torch.zeros(B, dtype=torch.bool, device=lm.device)
    for _ in range(max_new_tokens):
        logits = out.logits[:, -1].float()  # (B, V)
        if new.shape[1] and repetition_penalty != 1.0:
            seen = logits.gather(1, new)  # (B, t)
            logits.scatter_(1, new, torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty))
        top, idx = logits.topk(top_k, dim=-1)  # (B, k)
        pick = torch.multinomial(torch.softmax(top / temperature, -1), 1, generator=gen)  # (B, 1)
        nxt = idx.gather(1, pick)  # (B, 1)
        nxt[done] = pad
        new = torch.cat([new, nxt], 1)
        done |= torch.isin(nxt[:, 0], eos)
        if done.all():
            break
        mask = torch.cat([mask, (~done).long()[:, None]], 1)
        pos = pos[:, -1:] + 1
        out = model(input_ids=nxt, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True)
    texts = []
    for row in new.tolist():
        row = [t for t in row if t != pad]
        cut = next((i for i, t in enumerate(row) if t in set(eos.tolist())), len(row))
        texts.append(tok.decode(row[:cut], skip_special_tokens=True))
    return texts


def _eos_ids(lm) -> set[int]:
    ids = lm.model.generation_config.eos_token_id
    ids = set(ids if isinstance(ids, (list, tuple)) else [ids]) if ids is not None else set()
    return ids | {lm.tokenizer.eos_token_id} - {None}


def write(lm, job_list: Sequence[Job], out: Path, *, batch: int = 64, max_new_tokens: int = 256,
          progress: Callable[[str], None] | None = None) -> int:
    """Write a document for each job not yet in `out`; returns how many `out` holds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seen = done_keys(out)
    todo = [j for j in job_list if j.key not in seen]
    started, made = time.time(), 0
    for a in range(0, len(todo), batch):
        chunk = todo[a:a + batch]
        texts = sample(lm, [j.opening for j in chunk], max_new_tokens=max_new_tokens, seed=zlib.crc32(chunk[0].key.encode()))
        lines = [json.dumps({"key": j.key, "topic": j.topic, "genre": j.genre,
                             "text": j.opening + clean(t)}, ensure_ascii=False) for j, t in zip(chunk, texts)]
        with open(out, "a", encoding="utf-8") as f:
            if f.tell() and not _ends_line(out):
                f.write("\n")  # after a line an interruption cut
            f.write("\n".join(lines) + "\n")
            f.flush()
            os.fsync(f.fileno())
        made += len(chunk)
        if progress:
            rate = made / (time.time() - started)
            left = (len(todo) - made) / rate if rate else 0
            progress(f"essays: {len(seen) + made}/{len(seen) + len(todo)} documents, "
                     f"{rate * 60:.0f}/min, about {left / 60:.0f} min left")
    return len(done_keys(out))
