"""The embedded English->French generator: determinism, French agreement, lengths, split hygiene."""

import re

import pytest

from lightning_nmt.data.sample import english_surface, french_surface, generate_pairs, write_sample_corpus

PAIRS = generate_pairs(20000, seed=1234)


def test_deterministic_for_a_seed_and_different_across_seeds():
    assert generate_pairs(300, seed=7) == generate_pairs(300, seed=7)
    assert generate_pairs(300, seed=7) != generate_pairs(300, seed=8)
    assert PAIRS[:100] == generate_pairs(100, seed=1234)  # a prefix of the same stream


def test_format_lowercase_with_final_period():
    for en, fr in PAIRS[:2000]:
        for sentence in (en, fr):
            assert sentence == sentence.lower() and sentence.endswith(" .") and "  " not in sentence


@pytest.mark.parametrize(("english", "french"), [
    (r"\bwhite cats\b", "chats blancs"),
    (r"\bwhite cat\b", "chat blanc"),
    (r"\bwhite mice\b", "souris blanches"),
    (r"\bsmall cats\b", "petits chats"),
    (r"\bsmall girls\b", "petites filles"),
    (r"\bold man\b", "vieil homme"),
    (r"\bold men\b", "vieux hommes"),
    (r"\bold woman\b", "vieille femme"),
    (r"\bbeautiful tree\b", "bel arbre"),
    (r"\bbeautiful flowers\b", "belles fleurs"),
    (r"\bhappy girls\b", "filles heureuses"),
    (r"\bgreen cars\b", "voitures vertes"),
    (r"\b(women|girls|queens|sisters|mothers|nurses|cows|goats|frogs|mice) are tired\b", "sont fatiguées"),
    (r"\b(women|girls|queens|sisters|mothers|nurses|cows|goats|frogs|mice) are happy\b", "sont heureuses"),
    (r"\b(men|boys|kings|brothers|fathers|doctors) are happy\b", "sont heureux"),
    (r"\bshe is tired\b", "elle est fatiguée"),
    (r"\bthe school\b", "l'école"),
    (r"\bat the market\b", "au marché"),
    (r"\bat the churches\b", "aux églises"),
    (r"\bnear the garden\b", "près du jardin"),
    (r"\bnear the hospital\b", "près de l'hôpital"),
    (r"\bnear the cars\b", "près des voitures"),
    (r"^i like\b", "j'aime"),
    (r"\bhe does not eat\b", "il ne mange pas"),
    (r"\bwe eat\b", "nous mangeons"),
    (r"\bthey open\b", "ils ouvrent"),
])
def test_french_agreement_elision_and_contractions(english, french):
    matches = [fr for en, fr in PAIRS if re.search(english, en)]
    assert matches, f"no sentence matches {english}"
    assert all(french in fr for fr in matches), [fr for fr in matches if french not in fr][:3]


def test_hand_checked_surface_rules():
    assert french_surface(["les", "petits", "chats", "blancs"]) == "les petits chats blancs"
    assert french_surface(["je", "aime", "le", "homme", "qui", "habite", "à", "le", "hôtel"]) == (
        "j'aime l'homme qui habite à l'hôtel")
    assert french_surface(["près de", "le", "parc", "à", "les", "écoles"]) == "près du parc aux écoles"
    assert french_surface(["ma", "école", "et", "ce", "arbre", "parce que", "il", "ne", "est", "pas"]) == (
        "mon école et cet arbre parce qu'il n'est pas")
    assert english_surface(["a", "old", "cat", "and", "a", "dog"]) == "an old cat and a dog"


def test_length_range_and_long_sentences():
    lengths = [len(en.split()) - 1 for en, _ in PAIRS]
    assert min(lengths) >= 3 and max(lengths) <= 30
    assert sum(n >= 15 for n in lengths) / len(lengths) > 0.34
    assert sum(n <= 8 for n in lengths) / len(lengths) > 0.2
    vocabulary = {w for en, fr in PAIRS for w in (en + " " + fr).split()}
    assert 300 < len(vocabulary) < 1500


def test_written_splits_do_not_overlap(tmp_path):
    prefixes = write_sample_corpus(tmp_path, {"train": 3000, "val": 300, "test": 300}, seed=11)
    assert prefixes == {name: tmp_path / name for name in ("train", "val", "test")}
    splits = {name: (tmp_path / f"{name}.en").read_text().splitlines() for name in prefixes}
    french = (tmp_path / "test.fr").read_text().splitlines()
    assert [len(s) for s in splits.values()] == [3000, 300, 300] and len(french) == 300
    train = set(splits["train"])
    assert not train & set(splits["val"]) and not train & set(splits["test"])
    assert not set(splits["val"]) & set(splits["test"])
    assert len(set(splits["test"])) == 300
    assert sum(len(s.split()) - 1 >= 15 for s in splits["test"]) >= 100  # the longest third is long
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted(f"{name}.{lang}" for name in prefixes for lang in ("en", "fr"))
