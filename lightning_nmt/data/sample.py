"""The embedded default corpus: English->French sentence pairs generated from a small grammar.

Sentences are lowercase, space-separated words with a final `` .``; French elisions are attached
(``l'homme``, ``qu'il``). The grammar covers subject-verb agreement in the present tense, negation,
determiners (articles, possessives, demonstratives, numbers), adjectives that agree in gender and number
(size/age/beauty adjectives before the noun, the others after it: "the small white cats" -> "les petits
chats blancs"), prepositional phrases with the contractions au/aux/du/des, relative clauses and
conjunctions. Lengths range from 3 to 30 words; about 40% of the sentences have 15 or more.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from itertools import islice
from pathlib import Path

from filelock import FileLock

from lightning_nmt.atomic import atomic_write_text
from lightning_nmt.data.corpus import PairSource, TextPair
from lightning_nmt.data.errors import DataError
from lightning_nmt.data.formats import CorpusFormat, register_corpus

GENERATOR_VERSION = 1
log = logging.getLogger("lightning_nmt.data")
DEFAULT_SIZES = {"train": 20000, "val": 500, "test": 500}
VOWELS = tuple("aeiouyéèêàâîïôœh")  # every French word starting with "h" in the vocabulary has a mute h
# (probability, complexity, min words, max words) of the three length bands
BANDS = ((0.3, 0.1, 3, 8), (0.3, 0.45, 9, 14), (0.4, 0.85, 15, 30))


@dataclass(frozen=True)
class Noun:
    en: str
    en_pl: str
    fr: str
    fr_pl: str
    gender: str  # "m" | "f"
    kinds: frozenset[str]


@dataclass(frozen=True)
class Adjective:
    en: str
    forms: tuple[str, str, str, str]  # m sg, f sg, m pl, f pl
    pre: bool  # placed before the noun in French
    kinds: frozenset[str]
    m_vowel: str | None = None  # m sg form before a vowel (vieil, bel, nouvel)

    def form(self, gender: str, plural: bool) -> str:
        return self.forms[(gender == "f") + 2 * plural]


@dataclass(frozen=True)
class Verb:
    en: str
    en_3sg: str
    fr: tuple[str, str, str, str, str]  # je, il, nous, vous, ils
    objects: frozenset[str]  # noun kinds accepted as direct object; empty: intransitive


@dataclass(frozen=True)
class Phrase:
    """A generated constituent: words on both sides plus what agreement needs."""

    en: list[str]
    fr: list[str]
    gender: str = "m"
    plural: bool = False
    person: int = 1  # index into Verb.fr: 0 je, 1 il, 2 nous, 3 vous, 4 ils


def _noun(en: str, fr: str, gender: str, kinds: str, en_pl: str = "", fr_pl: str = "") -> Noun:
    return Noun(en, en_pl or en + "s", fr, fr_pl or fr + "s", gender, frozenset(kinds.split()))


def _adj(en: str, m: str, kinds: str, f: str = "", m_pl: str = "", f_pl: str = "", pre: bool = False,
         m_vowel: str | None = None) -> Adjective:
    f = f or (m if m.endswith("e") else m + "e")
    m_pl = m_pl or (m if m[-1] in "sx" else m + "s")
    return Adjective(en, (m, f, m_pl, f_pl or f + "s"), pre, frozenset(kinds.split()), m_vowel)


def _er(en: str, en_3sg: str, infinitive: str, objects: str = "") -> Verb:
    stem = infinitive[:-2]
    nous = stem + ("eons" if stem.endswith("g") else "ons")
    forms = (stem + "e", stem + "e", nous, stem + "ez", stem + "ent")
    return Verb(en, en_3sg, forms, frozenset(objects.split()))


def _verb(en: str, en_3sg: str, forms: str, objects: str = "") -> Verb:
    je, il, nous, vous, ils = forms.split()
    return Verb(en, en_3sg, (je, il, nous, vous, ils), frozenset(objects.split()))


NOUNS = [
    _noun("man", "homme", "m", "person", en_pl="men"),
    _noun("woman", "femme", "f", "person", en_pl="women"),
    _noun("boy", "garçon", "m", "person"),
    _noun("girl", "fille", "f", "person"),
    _noun("child", "enfant", "m", "person", en_pl="children"),
    _noun("teacher", "professeur", "m", "person"),
    _noun("doctor", "médecin", "m", "person"),
    _noun("farmer", "fermier", "m", "person"),
    _noun("baker", "boulanger", "m", "person"),
    _noun("student", "étudiant", "m", "person"),
    _noun("friend", "ami", "m", "person"),
    _noun("neighbor", "voisin", "m", "person"),
    _noun("king", "roi", "m", "person"),
    _noun("queen", "reine", "f", "person"),
    _noun("sister", "sœur", "f", "person"),
    _noun("brother", "frère", "m", "person"),
    _noun("mother", "mère", "f", "person"),
    _noun("father", "père", "m", "person"),
    _noun("nurse", "infirmière", "f", "person"),
    _noun("cat", "chat", "m", "animal"),
    _noun("dog", "chien", "m", "animal"),
    _noun("horse", "cheval", "m", "animal", fr_pl="chevaux"),
    _noun("bird", "oiseau", "m", "animal", fr_pl="oiseaux"),
    _noun("mouse", "souris", "f", "animal", en_pl="mice", fr_pl="souris"),
    _noun("cow", "vache", "f", "animal"),
    _noun("rabbit", "lapin", "m", "animal"),
    _noun("duck", "canard", "m", "animal"),
    _noun("goat", "chèvre", "f", "animal"),
    _noun("frog", "grenouille", "f", "animal"),
    _noun("book", "livre", "m", "thing readable openable"),
    _noun("letter", "lettre", "f", "thing readable openable"),
    _noun("newspaper", "journal", "m", "thing readable", fr_pl="journaux"),
    _noun("car", "voiture", "f", "thing vehicle location"),
    _noun("bike", "vélo", "m", "thing vehicle"),
    _noun("boat", "bateau", "m", "thing vehicle location", fr_pl="bateaux"),
    _noun("ball", "balle", "f", "thing"),
    _noun("box", "boîte", "f", "thing openable location", en_pl="boxes"),
    _noun("chair", "chaise", "f", "thing location"),
    _noun("table", "table", "f", "thing location"),
    _noun("key", "clé", "f", "thing"),
    _noun("hat", "chapeau", "m", "thing", fr_pl="chapeaux"),
    _noun("shirt", "chemise", "f", "thing"),
    _noun("bag", "sac", "m", "thing openable location"),
    _noun("bottle", "bouteille", "f", "thing openable"),
    _noun("glass", "verre", "m", "thing", en_pl="glasses"),
    _noun("door", "porte", "f", "thing openable"),
    _noun("window", "fenêtre", "f", "thing openable"),
    _noun("picture", "tableau", "m", "thing", fr_pl="tableaux"),
    _noun("phone", "téléphone", "m", "thing"),
    _noun("lamp", "lampe", "f", "thing"),
    _noun("flower", "fleur", "f", "thing"),
    _noun("tree", "arbre", "m", "thing location"),
    _noun("umbrella", "parapluie", "m", "thing openable"),
    _noun("apple", "pomme", "f", "food"),
    _noun("cake", "gâteau", "m", "food", fr_pl="gâteaux"),
    _noun("orange", "orange", "f", "food"),
    _noun("egg", "œuf", "m", "food"),
    _noun("carrot", "carotte", "f", "food"),
    _noun("banana", "banane", "f", "food"),
    _noun("sandwich", "sandwich", "m", "food", en_pl="sandwiches"),
    _noun("garden", "jardin", "m", "place location"),
    _noun("house", "maison", "f", "place location"),
    _noun("park", "parc", "m", "place location"),
    _noun("kitchen", "cuisine", "f", "place location"),
    _noun("school", "école", "f", "place location"),
    _noun("city", "ville", "f", "place location", en_pl="cities"),
    _noun("forest", "forêt", "f", "place location"),
    _noun("street", "rue", "f", "place location"),
    _noun("market", "marché", "m", "place location"),
    _noun("station", "gare", "f", "place location"),
    _noun("hospital", "hôpital", "m", "place location", fr_pl="hôpitaux"),
    _noun("hotel", "hôtel", "m", "place location"),
    _noun("village", "village", "m", "place location"),
    _noun("library", "bibliothèque", "f", "place location", en_pl="libraries"),
    _noun("church", "église", "f", "place location", en_pl="churches"),
    _noun("room", "chambre", "f", "place location"),
    _noun("field", "champ", "m", "place location"),
    _noun("beach", "plage", "f", "place location", en_pl="beaches"),
]

ANIMATE = "person animal"
ADJECTIVES = [
    _adj("small", "petit", "person animal thing food place", pre=True),
    _adj("big", "grand", "person animal thing place", pre=True),
    _adj("old", "vieux", "person animal thing place", f="vieille", m_pl="vieux", pre=True, m_vowel="vieil"),
    _adj("young", "jeune", ANIMATE, pre=True),
    _adj("pretty", "joli", "person animal thing place", pre=True),
    _adj("beautiful", "beau", "person animal thing place", f="belle", m_pl="beaux", pre=True,
         m_vowel="bel"),
    _adj("new", "nouveau", "thing place", f="nouvelle", m_pl="nouveaux", pre=True, m_vowel="nouvel"),
    _adj("good", "bon", "person animal food", f="bonne", pre=True),
    _adj("fat", "gros", "animal", f="grosse", pre=True),
    _adj("white", "blanc", "animal thing food place", f="blanche"),
    _adj("black", "noir", "animal thing"),
    _adj("red", "rouge", "thing food"),
    _adj("green", "vert", "thing food place"),
    _adj("blue", "bleu", "thing"),
    _adj("yellow", "jaune", "animal thing food"),
    _adj("grey", "gris", "animal thing", f="grise"),
    _adj("happy", "heureux", ANIMATE, f="heureuse"),
    _adj("sad", "triste", ANIMATE),
    _adj("tired", "fatigué", ANIMATE),
    _adj("hungry", "affamé", ANIMATE),
    _adj("lazy", "paresseux", ANIMATE, f="paresseuse"),
    _adj("curious", "curieux", ANIMATE, f="curieuse"),
    _adj("famous", "célèbre", "person animal place"),
    _adj("heavy", "lourd", "thing"),
    _adj("light", "léger", "thing", f="légère"),
    _adj("clean", "propre", "thing place"),
    _adj("dirty", "sale", "animal thing place"),
    _adj("cold", "froid", "food place"),
    _adj("hot", "chaud", "food"),
    _adj("quiet", "calme", "person animal place"),
    _adj("strange", "étrange", "person animal thing place"),
    _adj("fast", "rapide", "animal thing"),
    _adj("slow", "lent", "animal thing"),
]

OBJ = "person animal thing food"
THINGS = "thing food animal"
TRANSITIVE = [
    _verb("see", "sees", "vois voit voyons voyez voient", OBJ),
    _er("like", "likes", "aimer", OBJ),
    _er("love", "loves", "adorer", OBJ),
    _er("watch", "watches", "regarder", OBJ),
    _er("find", "finds", "trouver", OBJ),
    _verb("call", "calls", "appelle appelle appelons appelez appellent", ANIMATE),
    _verb("follow", "follows", "suis suit suivons suivez suivent", ANIMATE),
    _er("help", "helps", "aider", ANIMATE),
    _er("wash", "washes", "laver", "animal thing"),
    _er("draw", "draws", "dessiner", OBJ + " place"),
    _verb("paint", "paints", "peins peint peignons peignez peignent", "thing place"),
    _verb("buy", "buys", "achète achète achetons achetez achètent", THINGS),
    _verb("sell", "sells", "vends vend vendons vendez vendent", THINGS),
    _er("carry", "carries", "porter", THINGS),
    _verb("take", "takes", "prends prend prenons prenez prennent", "thing food"),
    _verb("have", "has", "ai a avons avez ont", THINGS),
    _verb("want", "wants", "veux veut voulons voulez veulent", THINGS),
    _verb("open", "opens", "ouvre ouvre ouvrons ouvrez ouvrent", "openable"),
    _er("close", "closes", "fermer", "openable"),
    _er("eat", "eats", "manger", "food"),
    _er("cook", "cooks", "cuisiner", "food"),
    _verb("read", "reads", "lis lit lisons lisez lisent", "readable"),
    _verb("write", "writes", "écris écrit écrivons écrivez écrivent", "readable"),
    _er("break", "breaks", "casser", "thing"),
    _verb("clean", "cleans", "nettoie nettoie nettoyons nettoyez nettoient", "thing place"),
    _er("bring", "brings", "apporter", "thing food"),
    _verb("hold", "holds", "tiens tient tenons tenez tiennent", THINGS),
    _er("meet", "meets", "rencontrer", "person"),
    _er("visit", "visits", "visiter", "place"),
    _er("leave", "leaves", "quitter", "place person"),
    _verb("know", "knows", "connais connaît connaissons connaissez connaissent", "person place"),
    _er("forget", "forgets", "oublier", "thing"),
    _er("push", "pushes", "pousser", "thing animal"),
    _verb("choose", "chooses", "choisis choisit choisissons choisissez choisissent", "thing food"),
    _verb("hear", "hears", "entends entend entendons entendez entendent", ANIMATE),
]
INTRANSITIVE = [
    _verb("sleep", "sleeps", "dors dort dormons dormez dorment"),
    _verb("run", "runs", "cours court courons courez courent"),
    _er("walk", "walks", "marcher"),
    _er("play", "plays", "jouer"),
    _er("sing", "sings", "chanter"),
    _er("work", "works", "travailler"),
    _verb("wait", "waits", "attends attend attendons attendez attendent"),
    _er("swim", "swims", "nager"),
    _er("dance", "dances", "danser"),
    _verb("laugh", "laughs", "ris rit rions riez rient"),
    _er("live", "lives", "habiter"),
    _er("cry", "cries", "pleurer"),
    _er("jump", "jumps", "sauter"),
    _verb("read", "reads", "lis lit lisons lisez lisent"),
    _er("eat", "eats", "manger"),
]
EN_PRONOUNS = ["i", "he", "we", "you", "they"]  # indexed like Verb.fr; "she" is added in subject()
FR_PRONOUNS = ["je", "il", "nous", "vous", "ils"]
EN_BE = ["am", "is", "are", "are", "are"]
FR_BE = ["suis", "est", "sommes", "êtes", "sont"]
PREPOSITIONS = [  # (english, french, noun kinds)
    ("in", "dans", "location"), ("on", "sur", "location"), ("under", "sous", "location"),
    ("behind", "derrière", "location"), ("in front of", "devant", "location"),
    ("near", "près de", "location"), ("next to", "à côté de", "location"), ("far from", "loin de", "place"),
    ("at", "à", "place"), ("with", "avec", "person animal thing"), ("without", "sans", "person animal thing"),
]
CONJUNCTIONS = [("and", "et"), ("but", "mais"), ("because", "parce que"), ("while", "pendant que"),
                ("when", "quand")]
# determiners: singular english -> (masculine, feminine) french; plural english -> french
DETERMINERS_SG = {"the": ("le", "la"), "a": ("un", "une"), "my": ("mon", "ma"), "his": ("son", "sa"),
                  "her": ("son", "sa"), "our": ("notre", "notre"), "their": ("leur", "leur"),
                  "this": ("ce", "cette")}
DETERMINERS_PL = {"the": "les", "some": "des", "my": "mes", "his": "ses", "her": "ses", "our": "nos",
                  "their": "leurs", "these": "ces", "two": "deux", "three": "trois"}
INDEFINITE = {"a", "some"}
ELIDED = {"le": "l'", "la": "l'", "je": "j'", "ne": "n'", "que": "qu'", "de": "d'"}
BEFORE_VOWEL = {"ma": "mon", "sa": "son", "ce": "cet"}
CONTRACTED = {("de", "le"): "du", ("de", "les"): "des", ("à", "le"): "au", ("à", "les"): "aux"}


@cache
def _nouns(kinds: frozenset[str]) -> list[Noun]:
    return [n for n in NOUNS if n.kinds & kinds]


@cache
def _adjectives(kinds: frozenset[str], pre: bool) -> list[Adjective]:
    return [a for a in ADJECTIVES if a.kinds & kinds and a.pre == pre]


def _starts_with_vowel(word: str) -> bool:
    return word.startswith(VOWELS)


def french_surface(words: list[str]) -> str:
    """Apply elision (l', j', n', qu', d'), mon/son/cet before vowels, then au/aux/du/des contractions."""
    tokens = " ".join(words).split()
    elided: list[str] = []
    i = 0
    while i < len(tokens):
        word, nxt = tokens[i], tokens[i + 1] if i + 1 < len(tokens) else ""
        if _starts_with_vowel(nxt) and word in ELIDED:
            word, i = ELIDED[word] + nxt, i + 1
        elif _starts_with_vowel(nxt) and word in BEFORE_VOWEL:
            word = BEFORE_VOWEL[word]
        elided.append(word)
        i += 1
    out: list[str] = []
    for word in elided:
        if out and (out[-1], word) in CONTRACTED:
            out[-1] = CONTRACTED[out[-1], word]
        else:
            out.append(word)
    return " ".join(out)


def english_surface(words: list[str]) -> str:
    """Turn "a" into "an" before a vowel."""
    tokens = " ".join(words).split()
    return " ".join("an" if w == "a" and i + 1 < len(tokens) and tokens[i + 1][0] in "aeiou" else w
                    for i, w in enumerate(tokens))


class _Grammar:
    """Random generation of aligned English/French phrases; ``c`` (0..1) controls their complexity."""

    def __init__(self, rng: random.Random, c: float) -> None:
        self.rng, self.c = rng, c

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def noun_phrase(self, kinds: frozenset[str], definite: bool = False, depth: int = 0) -> Phrase:
        """Determiner, adjectives (up to one before and one after the noun in French), noun, modifier."""
        rng = self.rng
        noun = rng.choice(_nouns(kinds))
        plural = self.chance(0.35)
        dets = DETERMINERS_PL if plural else DETERMINERS_SG
        det = rng.choice([d for d in dets if not (definite and d in INDEFINITE)])
        pre = rng.choice(_adjectives(noun.kinds, True)) if self.chance(0.15 + 0.3 * self.c) else None
        post = rng.choice(_adjectives(noun.kinds, False)) if self.chance(0.15 + 0.3 * self.c) else None
        fr_noun = noun.fr_pl if plural else noun.fr
        fr_pre = []
        if pre is not None:
            special = pre.m_vowel and not plural and noun.gender == "m" and _starts_with_vowel(fr_noun)
            fr_pre = [pre.m_vowel if special else pre.form(noun.gender, plural)]
        fr_det = dets[det] if plural else dets[det][noun.gender == "f"]
        if fr_det == "des" and fr_pre:
            fr_det = "de"
        en = [det] + [a.en for a in (pre, post) if a] + [noun.en_pl if plural else noun.en]
        fr = [fr_det, *fr_pre, fr_noun] + ([post.form(noun.gender, plural)] if post else [])
        phrase = Phrase(en, fr, noun.gender, plural, 4 if plural else 1)
        if depth < 2 and self.chance(0.35 * self.c):
            return self.relative(phrase, noun, depth)
        if depth < 2 and "place" not in noun.kinds and self.chance(0.2 * self.c):
            pp = self.prepositional(depth + 1)
            return Phrase(en + pp.en, fr + pp.fr, phrase.gender, plural, phrase.person)
        return phrase

    def relative(self, head: Phrase, noun: Noun, depth: int) -> Phrase:
        """``head who/that VP`` (subject relative) or ``head that SUBJ V`` (object relative)."""
        animate = bool(noun.kinds & {"person", "animal"})
        objects = [v for v in TRANSITIVE if v.objects & noun.kinds]
        if animate and (not objects or self.chance(0.5)):
            vp = self.verb_phrase(head.person, depth + 1)
            return Phrase(head.en + ["who" if "person" in noun.kinds else "that", *vp.en],
                          head.fr + ["qui", *vp.fr], head.gender, head.plural, head.person)
        verb = self.rng.choice(objects)
        subj = self.subject(depth + 1)
        en = head.en + ["that", *subj.en, self.en_verb(verb, subj.person)]
        fr = head.fr + ["que", *subj.fr, verb.fr[subj.person]]
        return Phrase(en, fr, head.gender, head.plural, head.person)

    def prepositional(self, depth: int) -> Phrase:
        en, fr, kinds = self.rng.choice(PREPOSITIONS)
        np = self.noun_phrase(frozenset(kinds.split()), definite=True, depth=depth)
        return Phrase([en, *np.en], [fr, *np.fr])

    def subject(self, depth: int) -> Phrase:
        if self.chance(0.3):
            person = self.rng.randrange(5)
            if person == 1 and self.chance(0.5):
                return Phrase(["she"], ["elle"], "f", False, 1)
            return Phrase([EN_PRONOUNS[person]], [FR_PRONOUNS[person]], "m", person in (2, 3, 4), person)
        return self.noun_phrase(frozenset(ANIMATE.split()), depth=depth)

    @staticmethod
    def en_verb(verb: Verb, person: int) -> str:
        return verb.en_3sg if person == 1 else verb.en

    def verb_phrase(self, person: int, depth: int) -> Phrase:
        """Verb agreeing with ``person``, maybe negated, with its object and an optional PP."""
        verb = self.rng.choice(TRANSITIVE if self.chance(0.65) else INTRANSITIVE)
        negated = self.chance(0.15)
        if negated:
            en = ["does" if person == 1 else "do", "not", verb.en]
            fr = ["ne", verb.fr[person], "pas"]
        else:
            en, fr = [self.en_verb(verb, person)], [verb.fr[person]]
        if verb.objects:
            obj = self.noun_phrase(verb.objects, definite=negated, depth=depth + 1)
            en, fr = en + obj.en, fr + obj.fr
        if depth < 2 and self.chance(0.2 + 0.4 * self.c):
            pp = self.prepositional(depth + 1)
            en, fr = en + pp.en, fr + pp.fr
        return Phrase(en, fr)

    def predicate(self, subj: Phrase, depth: int) -> Phrase:
        """``SUBJ is ADJ`` or ``SUBJ is PP`` (adjective agreeing with the subject)."""
        be_en, be_fr = EN_BE[subj.person], FR_BE[subj.person]
        if self.chance(0.5):
            pp = self.prepositional(depth + 1)
            return Phrase([be_en, *pp.en], [be_fr, *pp.fr])
        adj = self.rng.choice([a for a in ADJECTIVES if "person" in a.kinds])
        return Phrase([be_en, adj.en], [be_fr, adj.form(subj.gender, subj.plural)])

    def clause(self) -> Phrase:
        subj = self.subject(depth=0)
        if subj.person in (1, 4) and self.chance(0.2):  # third person: "the cat is small"
            vp = self.predicate(subj, 0)
        else:
            vp = self.verb_phrase(subj.person, 0)
        return Phrase(subj.en + vp.en, subj.fr + vp.fr)

    def sentence(self) -> tuple[list[str], list[str]]:
        """Words (some multi-word entries like "in front of") of both sides, without the final period."""
        first = self.clause()
        en, fr = first.en, first.fr
        while self.chance(0.6 * self.c) and len(en) < 24:
            conj_en, conj_fr = self.rng.choice(CONJUNCTIONS)
            nxt = self.clause()
            en, fr = en + [conj_en, *nxt.en], fr + [conj_fr, *nxt.fr]
        return en, fr


def iter_pairs(seed: int) -> Iterator[tuple[str, str]]:
    """Endless deterministic stream of (english, french) pairs; lengths follow ``BANDS``."""
    rng = random.Random(seed)
    while True:
        r, band = rng.random(), BANDS[-1]
        for candidate in BANDS:
            if r < candidate[0]:
                band = candidate
                break
            r -= candidate[0]
        _, complexity, low, high = band
        grammar = _Grammar(rng, complexity)
        while True:
            en, fr = grammar.sentence()
            if low <= len(" ".join(en).split()) <= high:
                yield english_surface(en) + " .", french_surface(fr) + " ."
                break


def generate_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """The first ``n`` pairs of the stream for ``seed`` (duplicates possible)."""
    return list(islice(iter_pairs(seed), n))


def sample_dir_name(sizes: Mapping[str, int], seed: int) -> str:
    """Directory name identifying a generated corpus (generator version, seed and sizes)."""
    digest = hashlib.sha256(json.dumps(dict(sizes), sort_keys=True).encode()).hexdigest()[:10]
    return f"sample-v{GENERATOR_VERSION}-{seed}-{digest}"


def write_sample_corpus(
    directory: str | Path, sizes: Mapping[str, int] | None = None, seed: int = 1234
) -> dict[str, Path]:
    """Write ``<split>.en`` / ``<split>.fr`` for each split in ``sizes`` atomically; return the prefixes.

    ``train`` is drawn first; the other splits contain no English sentence of ``train`` nor of each
    other (and no duplicates).
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    pairs = iter_pairs(seed)
    splits = {"train": list(islice(pairs, sizes.pop("train", 0)))}
    seen = {en for en, _ in splits["train"]}
    for name, size in sizes.items():
        splits[name] = []
        while len(splits[name]) < size:
            en, fr = next(pairs)
            if en not in seen:
                seen.add(en)
                splits[name].append((en, fr))
    directory = Path(directory)
    for name, split in splits.items():
        for lang, side in (("en", 0), ("fr", 1)):
            atomic_write_text(directory / f"{name}.{lang}", "".join(pair[side] + "\n" for pair in split))
    return {name: directory / name for name in splits}


@register_corpus("sample")
@dataclass
class SampleCorpus(CorpusFormat):
    """`data=sample`: the embedded English<->French corpus, generated into `cache_dir` on first use (splits
    `sample_sizes`, drawn with `sample_seed`); extra tests are prefixes of other files."""

    sample_sizes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SIZES))
    sample_seed: int = 1234
    default_langs = ("en", "fr")

    def check_langs(self, src_lang: str, tgt_lang: str) -> None:
        if {src_lang, tgt_lang} != {"en", "fr"}:
            raise DataError(f"the sample corpus is English<->French; got {src_lang}->{tgt_lang}")

    def sources(self, splits: Mapping[str, str | None], extra_tests: Mapping[str, str], src_lang: str,
                tgt_lang: str, cache_dir: Path) -> dict[str, PairSource]:
        directory = cache_dir / sample_dir_name(self.sample_sizes, self.sample_seed)
        prefixes = {name: directory / name for name in self.sample_sizes}
        directory.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(directory) + ".lock"):
            if not all(Path(f"{p}.{lang}").is_file() for p in prefixes.values() for lang in ("en", "fr")):
                log.info("generating the sample corpus into %s", directory)
                write_sample_corpus(directory, self.sample_sizes, self.sample_seed)
        prefixes |= {name: Path(prefix) for name, prefix in extra_tests.items()}
        return {name: TextPair.from_prefix(prefix, src_lang, tgt_lang) for name, prefix in prefixes.items()}
