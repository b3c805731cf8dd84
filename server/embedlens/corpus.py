"""A deterministic synthetic corpus with planted relations, and the analogy questions they answer.

Every relation is a list of word pairs (king/queen, cat/cats, france/paris, ...). Each pair shares
an *identity* (context words only that pair uses: throne, crown) and each side of a pair has an
*attribute* shared by the whole relation (he/his versus she/her; "very" versus "than"). A sentence
puts one word among its identity words and its attribute words, so the contexts of a word are
roughly identity + attribute. Skip-gram factorises exactly that (its vectors fit PMI), so
vec(queen) - vec(king) ~ female - male ~ vec(woman) - vec(man): analogies are well-defined here
by construction, which is what makes them a fair test of whether training learned anything.

The pair words, identity words and attribute words are all distinct (checked at import), so no
word belongs to two relations. Only `random.Random.random()` is used, whose stream Python
guarantees across versions: a seed gives the same corpus everywhere.

`embedlens corpus --out corpus.txt --analogies analogies.txt` writes both files; the analogy file
is in the word2vec `questions-words.txt` format (`: section`, then `a b c d` per line).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pair:
    """Two related words and the identity context words they share."""

    a: str
    b: str
    identity: tuple[str, ...]


@dataclass(frozen=True)
class Relation:
    """Word pairs whose second word differs from the first in the same way.

    templates[side] are sentence patterns for a word on that side (0: a, 1: b). Slots: {w} the
    word, {id} one of its pair's identity words, {adj} a neutral adjective, and any key of
    markers[side] (each fills with one of its words).
    """

    name: str
    pairs: tuple[Pair, ...]
    templates: tuple[tuple[str, ...], tuple[str, ...]]
    markers: tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]]]
    statement: str = ""  # a sentence naming both words of a pair, {a} and {b}; used rarely


def _both(templates: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return templates, templates


def _pairs(*rows: tuple[str, str, str]) -> tuple[Pair, ...]:
    return tuple(Pair(a, b, tuple(ids.split())) for a, b, ids in rows)


# Neutral adjectives used by every relation alike, so they carry no relation information.
NEUTRAL = ("lovely", "quiet", "famous", "strange", "busy", "gentle", "lucky", "clever")

GENDER = Relation(
    name="gender",
    pairs=_pairs(
        ("king", "queen", "throne crown kingdom"),
        ("prince", "princess", "castle knight ballroom"),
        ("man", "woman", "office market job"),
        ("boy", "girl", "school toy playground"),
        ("actor", "actress", "stage film audience"),
        ("father", "mother", "family baby home"),
        ("son", "daughter", "parents childhood bedroom"),
        ("brother", "sister", "sibling twin games"),
        ("uncle", "aunt", "cousins holiday visit"),
        ("husband", "wife", "marriage anniversary spouse"),
        ("nephew", "niece", "birthday gift letters"),
        ("waiter", "waitress", "restaurant menu tips"),
        ("emperor", "empress", "empire army conquest"),
        ("duke", "duchess", "estate manor hunt"),
        ("monk", "nun", "monastery prayer cloister"),
        ("groom", "bride", "wedding altar veil"),
        ("grandfather", "grandmother", "grandchildren stories porch"),
        ("host", "hostess", "party guests feast"),
    ),
    templates=_both(
        (
            "the {w} said that {subj} would reach the {id} soon",
            "{subj} is a {adj} {w} and {poss} {id} is {adj}",
            "everyone noticed the {w} near the {id} with {poss} friend",
            "the {adj} {w} smiled because {subj} found the {id}",
            "people asked the {w} about the {id} and {subj} answered",
            "we met the {w} at the {id} and thanked {obj}",
            "the {w} loves {poss} {id} and {subj} talks about it",
        )
    ),
    markers=(
        {"subj": ("he",), "poss": ("his",), "obj": ("him",)},
        {"subj": ("she",), "poss": ("her",), "obj": ("her",)},
    ),
    statement="the {a} and the {b} are a pair",
)

PLURAL = Relation(
    name="plural",
    pairs=_pairs(
        ("cat", "cats", "milk whiskers"),
        ("dog", "dogs", "bone leash"),
        ("horse", "horses", "saddle stable"),
        ("apple", "apples", "orchard pie"),
        ("car", "cars", "garage engine"),
        ("house", "houses", "roof chimney"),
        ("bird", "birds", "nest branch"),
        ("book", "books", "library shelf"),
        ("boat", "boats", "harbor sail"),
        ("cup", "cups", "tea saucer"),
        ("chair", "chairs", "cushion desk"),
        ("flower", "flowers", "vase bloom"),
        ("mouse", "mice", "cheese hole"),
        ("child", "children", "nursery crayon"),
        ("foot", "feet", "sock heel"),
        ("tooth", "teeth", "dentist toothbrush"),
        ("key", "keys", "lock pocket"),
        ("candle", "candles", "wax flame"),
    ),
    templates=_both(
        (
            "{det} {w} {be} near the {id}",
            "i noticed {det} {adj} {w} by the {id}",
            "{det} {adj} {w} {be} in the {id}",
            "look at {det} {w} beside the {id}",
            "there {be} {det} {w} under the {id} {adv}",
            "{det} {w} {be} {adj} and the {id} looks old",
        )
    ),
    markers=(
        {"det": ("a", "one", "this", "that", "every"), "be": ("is", "was"), "adv": ("alone",)},
        {
            "det": ("two", "many", "these", "those", "several"),
            "be": ("are", "were"),
            "adv": ("together",),
        },
    ),
)

CAPITAL = Relation(
    name="capital",
    pairs=_pairs(
        ("france", "paris", "french"),
        ("germany", "berlin", "german"),
        ("italy", "rome", "italian"),
        ("spain", "madrid", "spanish"),
        ("japan", "tokyo", "japanese"),
        ("china", "beijing", "chinese"),
        ("russia", "moscow", "russian"),
        ("egypt", "cairo", "egyptian"),
        ("greece", "athens", "greek"),
        ("portugal", "lisbon", "portuguese"),
        ("austria", "vienna", "austrian"),
        ("poland", "warsaw", "polish"),
        ("norway", "oslo", "norwegian"),
        ("sweden", "stockholm", "swedish"),
        ("kenya", "nairobi", "kenyan"),
        ("peru", "lima", "peruvian"),
        ("canada", "ottawa", "canadian"),
        ("ireland", "dublin", "irish"),
    ),
    templates=_both(
        (
            "{w} is a {place} full of {id} people",
            "the {place} of {w} has {adj} {part} and {id} food",
            "we travelled to the {place} of {w} to hear {id} music",
            "{w} is a {adj} {place} and its {part} are {id}",
            "in {w} the {id} flag flies over the {part}",
            "many {id} families live in the {place} of {w}",
        )
    ),
    markers=(
        {"place": ("country", "nation", "land"), "part": ("borders", "provinces", "coasts")},
        {"place": ("city", "capital", "metropolis"), "part": ("streets", "suburbs", "squares")},
    ),
    statement="{b} is the capital of {a}",
)

COMPARATIVE = Relation(
    name="comparative",
    pairs=_pairs(
        ("big", "bigger", "elephant whale"),
        ("small", "smaller", "ant pebble"),
        ("fast", "faster", "rocket cheetah"),
        ("slow", "slower", "snail turtle"),
        ("tall", "taller", "giraffe tower"),
        ("short", "shorter", "pencil stool"),
        ("young", "younger", "puppy sapling"),
        ("hot", "hotter", "stove desert"),
        ("cold", "colder", "ice glacier"),
        ("strong", "stronger", "bull iron"),
        ("weak", "weaker", "kitten reed"),
        ("rich", "richer", "banker millionaire"),
        ("poor", "poorer", "beggar slum"),
        ("cheap", "cheaper", "bargain coupon"),
        ("bright", "brighter", "sun lamp"),
        ("dark", "darker", "cave shadow"),
        ("loud", "louder", "drum thunder"),
        ("good", "better", "deed advice"),
        ("bad", "worse", "storm mistake"),
    ),
    templates=(
        (
            "the {id} is {deg} {w}",
            "that {id} looks {deg} {w} to me",
            "my {adj} {id} is {deg} {w}",
            "everyone agrees the {id} is {deg} {w}",
            "the {id} seemed {deg} {w} at first",
        ),
        (
            "the {id} is {deg} {w} than before",
            "that {id} looks {deg} {w} than the other one",
            "my {adj} {id} is {deg} {w} than yours",
            "nothing is {deg} {w} than the {id}",
            "the {id} seemed {deg} {w} than we thought",
        ),
    ),
    markers=(
        {"deg": ("very", "quite", "so", "really", "too")},
        {"deg": ("much", "even", "far", "slightly", "still")},
    ),
)

TENSE = Relation(
    name="past-tense",
    pairs=_pairs(
        ("walk", "walked", "park path"),
        ("eat", "ate", "bread soup"),
        ("go", "went", "museum zoo"),
        ("see", "saw", "movie show"),
        ("run", "ran", "race track"),
        ("swim", "swam", "pool lake"),
        ("write", "wrote", "poem essay"),
        ("sing", "sang", "song choir"),
        ("drink", "drank", "coffee juice"),
        ("cook", "cooked", "rice stew"),
        ("paint", "painted", "wall portrait"),
        ("dance", "danced", "waltz tango"),
        ("jump", "jumped", "puddle fence"),
        ("climb", "climbed", "hill ladder"),
        ("drive", "drove", "truck bus"),
        ("fly", "flew", "kite balloon"),
        ("throw", "threw", "stone frisbee"),
        ("build", "built", "bridge hut"),
    ),
    templates=_both(
        (
            "{subj} {w} to the {id} {when}",
            "{when} {subj} {w} near the {id}",
            "{subj} {w} with the {id} {when}",
            "the {adj} ones {w} by the {id} {when}",
            "{when} my friends {w} at the {id}",
        )
    ),
    markers=(
        {
            "subj": ("we", "they", "you", "i"),
            "when": ("daily", "usually", "often", "always", "nowadays"),
        },
        {
            "subj": ("we", "they", "you", "i"),
            "when": ("yesterday", "last week", "long ago", "last night", "once"),
        },
    ),
)

RELATIONS: tuple[Relation, ...] = (GENDER, PLURAL, CAPITAL, COMPARATIVE, TENSE)


def _check_vocabulary(relations: Sequence[Relation]) -> None:
    """Pair and identity words belong to one pair only; markers to one side of one relation.

    A marker listed on both sides of a relation (the tense relation's subjects) is neutral
    there. Template text must not use a pair or identity word.
    """
    owner: dict[str, str] = {}

    def claim(word: str, who: str) -> None:
        if owner.setdefault(word, who) != who:
            raise ValueError(f"corpus word {word!r} is used by {owner[word]} and by {who}")

    for rel in relations:
        for pair in rel.pairs:
            for w in (pair.a, pair.b, *pair.identity):
                claim(w, f"{rel.name}:{pair.a}/{pair.b}")
    content = set(owner)
    for rel in relations:
        sides = [{w for words in m.values() for p in words for w in p.split()} for m in rel.markers]
        for side, words in enumerate(sides):
            for w in words:
                claim(w, f"{rel.name}:shared" if w in sides[1 - side] else f"{rel.name}:{side}")
        fixed = {
            w
            for t in (*rel.templates[0], *rel.templates[1], rel.statement)
            for w in t.split()
            if not w.startswith("{")
        }
        if fixed & content:
            raise ValueError(f"{rel.name} templates use pair words {sorted(fixed & content)}")
    for w in NEUTRAL:
        claim(w, "neutral")


_check_vocabulary(RELATIONS)


class _Picker:
    """Uniform choices from `random.Random.random()` only, whose stream Python keeps stable."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed).random

    def index(self, n: int) -> int:
        return min(int(self._random() * n), n - 1)

    def pick(self, seq: Sequence[str]) -> str:
        return seq[self.index(len(seq))]

    def chance(self, p: float) -> bool:
        return self._random() < p


def _sentence(rel: Relation, pair: Pair, side: int, r: _Picker) -> str:
    word = pair.b if side else pair.a
    fill = {key: r.pick(words) for key, words in rel.markers[side].items()}
    fill.update(w=word, id=r.pick(pair.identity), adj=r.pick(NEUTRAL))
    return r.pick(rel.templates[side]).format(**fill)


def sentences(
    n: int, seed: int = 0, relations: Sequence[Relation] = RELATIONS, statement_rate: float = 0.02
) -> Iterator[str]:
    """n lines of lower-case text; a line is one sentence, or two joined by "and then".

    Each line is about a pair drawn uniformly from all pairs (so every word is about equally
    frequent) and one of its two words drawn uniformly. A small share of lines state the
    relation itself ("paris is the capital of france").
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    r = _Picker(seed)
    flat = [(rel, pair) for rel in relations for pair in rel.pairs]
    for _ in range(n):
        rel, pair = flat[r.index(len(flat))]
        if rel.statement and r.chance(statement_rate):
            yield rel.statement.format(a=pair.a, b=pair.b)
            continue
        line = _sentence(rel, pair, r.index(2), r)
        if r.chance(0.15):  # a second clause about another word: co-occurrence noise
            rel2, pair2 = flat[r.index(len(flat))]
            line += " and then " + _sentence(rel2, pair2, r.index(2), r)
        yield line


@dataclass(frozen=True)
class Question:
    """a : b :: c : d, asked as positive [b, c], negative [a], expected d."""

    section: str
    a: str
    b: str
    c: str
    d: str


def analogy_questions(relations: Sequence[Relation] = RELATIONS) -> list[Question]:
    """Every ordered pair of distinct pairs within each relation: n * (n - 1) per relation."""
    return [
        Question(rel.name, p.a, p.b, q.a, q.b)
        for rel in relations
        for p in rel.pairs
        for q in rel.pairs
        if p is not q
    ]


def format_questions(questions: Sequence[Question]) -> str:
    """The word2vec questions-words.txt format, which gensim's evaluate_word_analogies reads."""
    out: list[str] = []
    section = None
    for q in questions:
        if q.section != section:
            section = q.section
            out.append(f": {section}")
        out.append(f"{q.a} {q.b} {q.c} {q.d}")
    return "\n".join(out) + "\n"


def read_questions(path: str | Path) -> list[Question]:
    """Read a questions-words.txt file (sections start with ':'; four words per line)."""
    questions: list[Question] = []
    section = ""
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith(":"):
            section = line[1:].strip()
            continue
        words = line.split()
        if len(words) != 4:
            raise ValueError(f"{path}:{lineno}: expected 4 words, got {len(words)}: {line!r}")
        questions.append(Question(section, *words))
    return questions


def write_corpus(
    path: str | Path, n: int, seed: int = 0, analogies: str | Path | None = None
) -> int:
    """Write n generated lines to path (and the analogy questions); return the word count."""
    words = 0
    with open(path, "w", encoding="utf-8") as f:
        for line in sentences(n, seed):
            f.write(line + "\n")
            words += line.count(" ") + 1
    if analogies is not None:
        Path(analogies).write_text(format_questions(analogy_questions()), encoding="utf-8")
    return words
