"""The grammar ``toy-lm`` was trained on, and clean/corrupted prompt pairs drawn from it.

The corpus is generated, so every task's solution is known and some of it is held out of training:

- **Indirect object identification** (Wang et al. 2022, "Interpretability in the Wild"):
  ``"When Mary and John went to the store, John gave a drink to"`` -> ``" Mary"``. Templates are an
  intro clause and an action clause (:data:`IOI_INTROS` x :data:`IOI_ACTIONS`); those with a
  held-out intro or action (:data:`IOI_HELD_OUT_INTROS`, :data:`IOI_HELD_OUT_ACTIONS`) and the
  name pairs for which :func:`is_held_out_pair` is true never occur in training.
  :func:`ioi_pairs` returns the ABC corruption: the same template with three other names.
- **Greater-than** (Hanna et al. 2023, "How does GPT-2 compute greater-than?"):
  ``"The war lasted from the year 1732 to the year 17"`` -> a two-digit token above ``"32"``. Years
  tokenise as a century token (``" 17"``) and a two-digit token (``"32"``). The corrupted prompt
  starts at ``"01"``. Nouns in :data:`GT_HELD_OUT_NOUNS` are held out of training prompts.
- **Induction**: random word lists repeated (:func:`induction_sequences`); also used for
  ``induction-2l`` with its ``t0`` ... ``t125`` tokens.
- **Facts and agreement**: capitals, opposites, colours, animal sounds (:func:`fact_prompts`);
  subject-verb agreement across a prepositional phrase (:func:`agreement_pairs`).
- Ordinary sentences from a small English-like grammar (:func:`sample_text`).

Everything is pure Python with explicit seeds (``random.Random`` with string seeds), so the same
seed gives the same text on every machine. Clean and corrupted prompts of a pair always tokenise to
the same number of tokens (every name, place, object and year half is one token).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from . import _lexicon as lx

BOS = "<|endoftext|>"
UNK = "<|unk|>"

NAMES = lx.NAMES
PLACES = lx.PLACES
OBJECTS = lx.OBJECTS

#: IOI templates (intro clauses with ``{A}`` and ``{B}``; action clauses with the repeated
#: subject ``{S}``, ending with " to"): with the word lists in :mod:`._lexicon`.
IOI_INTROS = lx.IOI_INTROS
IOI_ACTIONS = lx.IOI_ACTIONS
#: Indices into :data:`IOI_INTROS` / :data:`IOI_ACTIONS` never used in training IOI prompts.
IOI_HELD_OUT_INTROS: tuple[int, ...] = (2, 11)
IOI_HELD_OUT_ACTIONS: tuple[int, ...] = (9,)

GT_NOUNS = lx.GT_NOUNS
GT_HELD_OUT_NOUNS = lx.GT_HELD_OUT_NOUNS
GT_CENTURIES = lx.GT_CENTURIES
#: Greater-than templates; the first is Hanna et al.'s and the one :func:`greater_than_pairs` uses.
GT_TEMPLATES: tuple[str, ...] = (
    "The {NOUN} lasted from the year {C}{YY} to the year {C}",
    "The {NOUN} started in the year {C}{YY} and ended in the year {C}",
)


# --------------------------------------------------------------------------------------------
# Words


def plural(noun: str) -> str:
    if noun in lx.IRREGULAR_PLURALS:
        return lx.IRREGULAR_PLURALS[noun]
    if noun.endswith(("s", "x", "ch", "sh")):
        return noun + "es"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + "s"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


NOUNS: tuple[str, ...] = tuple(dict.fromkeys(lx.NOUNS))
PLURALS: tuple[str, ...] = tuple(plural(n) for n in NOUNS)
ADJECTIVES: tuple[str, ...] = tuple(dict.fromkeys(lx.ADJECTIVES))

#: Content words used for random lists (induction) in ``toy-lm``.
LIST_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(
        list(NOUNS) + list(ADJECTIVES) + [v[0] for v in lx.TRANSITIVE_VERBS]
        + [v[0] for v in lx.INTRANSITIVE_VERBS] + list(PLACES) + list(OBJECTS)
    )
)


def _pair_index(a: str, b: str) -> tuple[int, int]:
    i, j = NAMES.index(a), NAMES.index(b)
    return (i, j) if i < j else (j, i)


def is_held_out_pair(a: str, b: str) -> bool:
    """True if the unordered name pair {a, b} is held out of ``toy-lm``'s training (about 20%)."""
    i, j = _pair_index(a, b)
    return (7 * i + 13 * j) % 5 == 0


def is_held_out_template(intro: int, action: int) -> bool:
    """True if the IOI template (intro index, action index) is held out of training."""
    return intro in IOI_HELD_OUT_INTROS or action in IOI_HELD_OUT_ACTIONS


def _two_names(rng: random.Random, held_out: bool | None) -> tuple[str, str]:
    """Two distinct names; ``held_out`` True/False restricts to held-out/training pairs."""
    while True:
        a, b = rng.sample(NAMES, 2)
        if held_out is None or is_held_out_pair(a, b) == held_out:
            return a, b


# --------------------------------------------------------------------------------------------
# Indirect object identification


@dataclass(frozen=True)
class IOIPair:
    """One IOI prompt and its ABC corruption.

    Attributes:
        clean: e.g. ``"When Mary and John went to the store, John gave a drink to"``.
        corrupted: the same template with three other names (``"... Alice and Bob ..., Carl
            gave a drink to"``): same number of tokens, no indirect object to find.
        answer: the indirect object with its leading space, e.g. ``" Mary"``.
        wrong_answer: the subject, e.g. ``" John"``.
        io, s: the names without space. intro, action: template indices.
        corrupted_names: the three names of the corrupted prompt (first, second, repeated).
        held_out: whether both the name pair and the template are held out of training.
    """

    clean: str
    corrupted: str
    answer: str
    wrong_answer: str
    io: str
    s: str
    intro: int
    action: int
    corrupted_names: tuple[str, str, str]
    held_out: bool
    template: str = ""


def ioi_template(intro: int, action: int) -> str:
    return IOI_INTROS[intro] + " " + IOI_ACTIONS[action]


def _fill_ioi(template: str, first: str, second: str, s2: str, place: str, obj: str,
              obj2: str) -> str:
    text = template.format(A=first, B=second, S=s2, PLACE=place, OBJECT=obj, OBJECT2=obj2)
    return re.sub(r"\ba ([aeiou])", r"an \1", text)


def _ioi_templates(held_out: bool | None) -> list[tuple[int, int]]:
    combos = [(i, a) for i in range(len(IOI_INTROS)) for a in range(len(IOI_ACTIONS))]
    if held_out is None:
        return combos
    return [c for c in combos if is_held_out_template(*c) == held_out]


def ioi_pairs(n: int, *, seed: int = 0, held_out: bool = True,
              template: tuple[int, int] | None = None) -> list[IOIPair]:
    """``n`` IOI prompts with their ABC-corrupted twins.

    Args:
        n: number of pairs.
        seed: random seed.
        held_out: True (default): name pairs and templates that ``toy-lm`` never saw in IOI
            training; False: drawn from the training distribution.
        template: ``(intro, action)`` indices into :data:`IOI_INTROS` / :data:`IOI_ACTIONS` to
            use for every pair (all prompts then have the same length and name positions);
            default: random templates of the ``held_out`` split.

    Returns:
        :class:`IOIPair` list; even indices have the indirect object first (ABBA), odd ones
        the subject first (BABA).
    """
    rng = random.Random(f"ioi-{seed}-{held_out}-{template}")
    templates = [tuple(template)] if template is not None else _ioi_templates(held_out)
    out = []
    for k in range(n):
        intro, action = rng.choice(templates)
        io, s = _two_names(rng, held_out)
        place = rng.choice(PLACES)
        obj, obj2 = rng.sample(OBJECTS, 2)
        first, second = (io, s) if k % 2 == 0 else (s, io)
        template_str = ioi_template(intro, action)
        c1, c2, c3 = rng.sample([x for x in NAMES if x not in (io, s)], 3)
        out.append(IOIPair(
            clean=_fill_ioi(template_str, first, second, s, place, obj, obj2),
            corrupted=_fill_ioi(template_str, c1, c2, c3, place, obj, obj2),
            answer=" " + io,
            wrong_answer=" " + s,
            io=io,
            s=s,
            intro=intro,
            action=action,
            corrupted_names=(c1, c2, c3),
            held_out=held_out and is_held_out_template(intro, action),
            template=template_str,
        ))
    return out


def _ioi_sentence(rng: random.Random) -> str:
    """A complete training IOI example (train templates, train name pairs)."""
    intro, action = rng.choice(_IOI_TRAIN_TEMPLATES)
    io, s = _two_names(rng, False)
    first, second = (io, s) if rng.random() < 0.5 else (s, io)
    obj, obj2 = rng.sample(OBJECTS, 2)
    text = _fill_ioi(ioi_template(intro, action), first, second, s, rng.choice(PLACES), obj, obj2)
    return text + " " + io + "."


_IOI_TRAIN_TEMPLATES = _ioi_templates(False)


# --------------------------------------------------------------------------------------------
# Greater-than


@dataclass(frozen=True)
class GreaterThanPair:
    """A greater-than prompt and its ``"01"`` corruption.

    Attributes:
        clean: ``"The war lasted from the year 1732 to the year 17"``.
        corrupted: ``"The war lasted from the year 1701 to the year 17"``.
        year: the start year's last two digits (32); century: 17; noun: "war".
        good_answers: two-digit tokens above ``year`` (``"33"`` ... ``"99"``).
        bad_answers: two-digit tokens up to ``year`` (``"00"`` ... ``"32"``).
        answer, wrong_answer: one good and one bad token for a logit difference
            (``year + 1`` ... and ``year - 1``, clipped to the valid range).
    """

    clean: str
    corrupted: str
    year: int
    century: int
    noun: str
    good_answers: tuple[str, ...]
    bad_answers: tuple[str, ...]
    answer: str
    wrong_answer: str


def greater_than_pairs(n: int, seed: int = 0, *, held_out: bool = True) -> list[GreaterThanPair]:
    """``n`` greater-than prompts (Hanna et al.'s template) with ``"01"`` corruptions.

    Args:
        n: number of pairs.
        seed: random seed.
        held_out: True (default) uses nouns held out of training (:data:`GT_HELD_OUT_NOUNS`);
            False uses training nouns.
    """
    rng = random.Random(f"gt-{seed}-{held_out}")
    nouns = [x for x in GT_NOUNS if (x in GT_HELD_OUT_NOUNS) == held_out]
    out = []
    for _ in range(n):
        noun = rng.choice(nouns)
        c = rng.choice(GT_CENTURIES)
        yy = rng.randint(2, 98)
        fill = {"NOUN": noun, "C": c}
        out.append(GreaterThanPair(
            clean=GT_TEMPLATES[0].format(YY=f"{yy:02d}", **fill),
            corrupted=GT_TEMPLATES[0].format(YY="01", **fill),
            year=yy,
            century=c,
            noun=noun,
            good_answers=tuple(f"{y:02d}" for y in range(yy + 1, 100)),
            bad_answers=tuple(f"{y:02d}" for y in range(0, yy + 1)),
            answer=f"{min(yy + 1 + (99 - yy) // 2, 99):02d}",
            wrong_answer=f"{max(yy - 1, 0):02d}",
        ))
    return out


def _greater_than_sentence(rng: random.Random) -> str:
    nouns = [x for x in GT_NOUNS if x not in GT_HELD_OUT_NOUNS]
    c = rng.choice(GT_CENTURIES)
    yy = rng.randint(1, 98)
    end = rng.randint(yy + 1, 99)
    template = GT_TEMPLATES[0] if rng.random() < 0.75 else GT_TEMPLATES[1]
    return template.format(NOUN=rng.choice(nouns), C=c, YY=f"{yy:02d}") + f"{end:02d}."


# --------------------------------------------------------------------------------------------
# Induction


@dataclass(frozen=True)
class InductionSequence:
    """Random tokens repeated once: ``text`` tokenises (after BOS) to ``2 * half_length`` tokens."""

    text: str
    half_length: int
    words: tuple[str, ...] = field(default=())


def induction_sequences(n: int, *, length: int = 20, seed: int = 0,
                        model: str = "toy-lm") -> list[InductionSequence]:
    """``n`` random sequences of ``length`` distinct tokens followed by the same tokens again.

    Args:
        n: number of sequences.
        length: tokens in each half.
        seed: random seed.
        model: ``"toy-lm"`` (content words, each with a leading space) or ``"induction-2l"``
            (tokens ``"t0"`` ... ``"t125"`` separated by spaces).
    """
    rng = random.Random(f"induction-{model}-{seed}-{length}")
    out = []
    for _ in range(n):
        if model == "induction-2l":
            words = tuple(f"t{i}" for i in rng.sample(range(INDUCTION_2L_N_TOKENS), length))
            text = " ".join(words + words)
        elif model == "toy-lm":
            words = tuple(rng.sample(LIST_WORDS, length))
            text = "".join(" " + w for w in words + words)
        else:
            raise ValueError(f"model must be 'toy-lm' or 'induction-2l', not {model!r}")
        out.append(InductionSequence(text=text, half_length=length, words=words))
    return out


#: ``induction-2l``'s vocabulary: BOS then ``t0`` ... ``t125``.
INDUCTION_2L_N_TOKENS = 126


def _list_repeat_segment(rng: random.Random) -> str:
    n = rng.randint(3, 24)
    words = rng.sample(LIST_WORDS, n)
    body = "".join(" " + w for w in words)
    cut = n if rng.random() < 0.7 else rng.randint(1, n)
    again = "".join(" " + w for w in words[:cut])
    r = rng.random()
    if r < 0.35:
        return "Here is a list of words:" + body + ". Again:" + again + "."
    if r < 0.5:
        return "Remember the following words:" + body + ". Now repeat them:" + again + "."
    if r < 0.6:
        names = rng.sample(NAMES, min(n, len(NAMES)))
        seq = "".join(" " + x for x in names)
        return "The names were" + seq + ". The names were" + seq + "."
    # plain repetition, possibly with a few unrelated words in between
    gap = "".join(" " + w for w in rng.sample(LIST_WORDS, rng.randint(0, 6)))
    return "Words:" + body + gap + again + "."


# --------------------------------------------------------------------------------------------
# Facts and agreement


@dataclass(frozen=True)
class FactPrompt:
    prompt: str
    answer: str
    kind: str


def _fact_sentences() -> list[FactPrompt]:
    facts = []
    for country, capital in lx.CAPITALS:
        facts.append(FactPrompt(f"The capital of {country} is", " " + capital, "capital"))
    for a, b in lx.OPPOSITES:
        facts.append(FactPrompt(f"The opposite of {a} is", " " + b, "opposite"))
        facts.append(FactPrompt(f"The opposite of {b} is", " " + a, "opposite"))
    for thing, colour in lx.COLOURS:
        facts.append(FactPrompt(f"The color of the {thing} is", " " + colour, "color"))
    for animal, sound in lx.SOUNDS:
        facts.append(FactPrompt(f"The {animal} says", " " + sound, "sound"))
    return facts


FACTS: tuple[FactPrompt, ...] = tuple(_fact_sentences())


def fact_prompts(kind: str | None = None) -> list[FactPrompt]:
    """The facts ``toy-lm`` was trained on (all of them, or one ``kind``: ``"capital"``,
    ``"opposite"``, ``"color"``, ``"sound"``), as prompt and single-token answer."""
    return [f for f in FACTS if kind is None or f.kind == kind]


def _fact_sentence(rng: random.Random) -> str:
    f = rng.choice(FACTS)
    return f.prompt + f.answer + "."


@dataclass(frozen=True)
class AgreementPair:
    """Subject-verb agreement across an attractor: ``"The dog near the cars"`` -> ``" runs"``.

    ``corrupted`` flips the subject's number (``"The dogs near the cars"``), so ``answer`` and
    ``wrong_answer`` swap roles there.
    """

    clean: str
    corrupted: str
    answer: str
    wrong_answer: str


def _agreement(rng: random.Random, singular: bool) -> AgreementPair:
    i = rng.randrange(len(NOUNS))
    j = rng.randrange(len(NOUNS))
    verb = rng.choice(lx.INTRANSITIVE_VERBS)
    prep = rng.choice(lx.PREPOSITIONS)
    subj, attractor = (NOUNS[i], PLURALS[j]) if singular else (PLURALS[i], NOUNS[j])
    other_subj = PLURALS[i] if singular else NOUNS[i]
    good, bad = (verb[1], verb[0]) if singular else (verb[0], verb[1])
    return AgreementPair(
        clean=f"The {subj} {prep} the {attractor}",
        corrupted=f"The {other_subj} {prep} the {attractor}",
        answer=" " + good,
        wrong_answer=" " + bad,
    )


def agreement_pairs(n: int, seed: int = 0) -> list[AgreementPair]:
    """``n`` subject-verb agreement prompts with an attractor noun of the other number.

    Half have a singular subject (``"The dog near the cars"`` -> ``" runs"`` not ``" run"``),
    half a plural one.
    """
    rng = random.Random(f"agreement-{seed}")
    return [_agreement(rng, k % 2 == 0) for k in range(n)]


# --------------------------------------------------------------------------------------------
# Ordinary sentences


def _np(rng: random.Random, *, plural_ok: bool = True, adj_p: float = 0.4) -> tuple[str, bool]:
    """A noun phrase and whether it is plural."""
    noun = rng.choice(NOUNS)
    pl = plural_ok and rng.random() < 0.4
    adj = rng.choice(ADJECTIVES) if rng.random() < adj_p else None
    head = plural(noun) if pl else noun
    words = f"{adj} {head}" if adj else head
    if pl:
        det = rng.choice(("the", "the", "some", "many", "two", "three", "all the", "these"))
    else:
        det = rng.choice(("the", "the", "the", article(words), "this", "that", "my", "her", "his"))
    return f"{det} {words}", pl


def _pp(rng: random.Random) -> str:
    np_, _ = _np(rng, adj_p=0.2)
    return f"{rng.choice(lx.PREPOSITIONS)} {np_}"


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _ordinary_sentence(rng: random.Random) -> str:
    r = rng.random()
    tense = rng.random()
    if r < 0.22:  # The (adj) noun (pp) verb (adv).
        subj, pl = _np(rng)
        if rng.random() < 0.35:
            subj += " " + _pp(rng)
        verb = rng.choice(lx.INTRANSITIVE_VERBS)
        v = verb[2] if tense < 0.4 else (verb[0] if pl else verb[1])
        adv = " " + rng.choice(lx.ADVERBS) if rng.random() < 0.5 else ""
        return _cap(f"{subj} {v}{adv}.")
    if r < 0.42:  # The noun verb the noun.
        subj, pl = _np(rng)
        if rng.random() < 0.25:
            subj += " " + _pp(rng)
        verb = rng.choice(lx.TRANSITIVE_VERBS)
        v = verb[2] if tense < 0.4 else (verb[0] if pl else verb[1])
        obj, _ = _np(rng)
        return _cap(f"{subj} {v} {obj}.")
    if r < 0.62:  # A name does something.
        name = rng.choice(NAMES)
        k = rng.random()
        if k < 0.25:
            body = f"went to the {rng.choice(PLACES)}"
        elif k < 0.5:
            verb = rng.choice(lx.TRANSITIVE_VERBS)
            body = f"{verb[2]} {_np(rng)[0]}"
        elif k < 0.65:
            verb = rng.choice(lx.INTRANSITIVE_VERBS)
            body = f"{verb[2]} at the {rng.choice(PLACES)}"
        elif k < 0.8:  # a giving verb with a thing or (half the time) another person as recipient
            verb = rng.choice(("gave", "handed", "threw", "sent", "showed", "brought", "offered"))  # type: ignore[assignment]
            if rng.random() < 0.5:
                _, to = _two_names(rng, False)
            else:
                to = f"the {rng.choice(NOUNS)}"
            body = f"{verb} {article(o := rng.choice(OBJECTS))} {o} to {to}"
        else:
            verb = rng.choice(lx.TRANSITIVE_VERBS)
            body = f"{verb[1]} {plural(rng.choice(NOUNS))}"
        start = ""
        if rng.random() < 0.3:
            start = rng.choice(lx.TIME_PHRASES) + ", "
        return _cap(f"{start}{name} {body}.")
    if r < 0.7:  # Two names together (training pairs only).
        a, b = _two_names(rng, False)
        verb = rng.choice(lx.INTRANSITIVE_VERBS)
        return f"{a} and {b} {verb[2]} together."
    if r < 0.78:  # Narrative with one name, reusing IOI-like clauses (no indirect object).
        name = rng.choice(NAMES)
        place = rng.choice(PLACES)
        clause = rng.choice((
            f"While {name} was working at the {place},",
            f"When {name} went to the {place},",
            f"Then in the morning, {name} went to the {place}.",
            f"While {name} was commuting to the {place},",
            f"After the lunch, {name} went to the {place}.",
            f"{name} had a long argument with the {rng.choice(NOUNS)}, and afterwards",
        ))
        o = rng.choice(OBJECTS)
        verb = rng.choice(("found", "bought", "lost", "saw", "offered", "wanted"))  # type: ignore[assignment]
        pron = rng.choice(("he", "she"))
        if clause.endswith("."):
            pron = _cap(pron)
        return f"{clause} {pron} {verb} {article(o)} {o}."
    if r < 0.86:  # There is/are.
        noun = rng.choice(NOUNS)
        num = rng.choice(("one", "two", "three", "four", "five", "many", "some", "no"))
        if num == "one":
            return f"There is one {noun} in the {rng.choice(PLACES)}."
        return f"There are {num} {plural(noun)} in the {rng.choice(PLACES)}."
    if r < 0.93:  # Years in ordinary text.
        c = rng.randint(10, 20)
        yy = rng.randint(0, 99)
        k = rng.random()
        if k < 0.4:
            return f"{rng.choice(NAMES)} was born in {c}{yy:02d}."
        if k < 0.7:
            subj, _ = _np(rng, plural_ok=False)
            verb = rng.choice(lx.TRANSITIVE_VERBS)
            return f"In {c}{yy:02d}, {subj} {verb[2]} {_np(rng)[0]}."
        noun = rng.choice(GT_NOUNS)  # held-out nouns do appear here, outside the task
        return f"The {noun} ended in the year {c}{yy:02d}."
    # Pronoun sentence.
    pron = rng.choice(("He", "She", "They", "We", "It"))
    verb = rng.choice(lx.TRANSITIVE_VERBS)
    return f"{pron} {verb[2]} {_np(rng)[0]} {_pp(rng)}."


def _agreement_sentence(rng: random.Random) -> str:
    p = _agreement(rng, rng.random() < 0.5)
    adv = " " + rng.choice(lx.ADVERBS) if rng.random() < 0.5 else ""
    return p.clean + p.answer + adv + "."


#: Mixture of segment kinds in ``toy-lm``'s training corpus (probabilities).
TRAINING_MIX: dict[str, float] = {
    "ordinary": 0.22,
    "ioi": 0.40,
    "greater_than": 0.14,
    "induction": 0.12,
    "fact": 0.05,
    "agreement": 0.07,
}

_SEGMENT_FNS = {
    "ordinary": _ordinary_sentence,
    "ioi": _ioi_sentence,
    "greater_than": _greater_than_sentence,
    "induction": _list_repeat_segment,
    "fact": _fact_sentence,
    "agreement": _agreement_sentence,
}


def segment(rng: random.Random, kind: str | None = None,
            mix: dict[str, float] | None = None) -> str:
    """One sentence (or a short run of sentences) of the training grammar."""
    if kind is None:
        mix = mix or TRAINING_MIX
        kind = rng.choices(list(mix), weights=list(mix.values()))[0]
    return _SEGMENT_FNS[kind](rng)


def document(rng: random.Random, n_segments: int, mix: dict[str, float] | None = None) -> str:
    """Sentences joined by spaces (the first without a leading space)."""
    return " ".join(segment(rng, mix=mix) for _ in range(n_segments))


def sample_text(n: int, seed: int = 0, *, n_segments: int = 8,
                mix: dict[str, float] | None = None) -> list[str]:
    """``n`` documents of ``n_segments`` sentences from the training grammar (for SAEs, demos).

    ``seed`` selects a stream separate from the one the training script used for the model, so
    the text is held out (up to the chance repeats a small grammar makes).
    """
    rng = random.Random(f"sample-{seed}")
    return [document(rng, n_segments, mix) for _ in range(n)]


def training_rng(seed: int, stream: str = "lm") -> random.Random:
    """The generator the training script draws ``toy-lm``'s corpus from."""
    return random.Random(f"train-{stream}-{seed}")


# --------------------------------------------------------------------------------------------
# Vocabulary


#: Words that can begin a sentence (capitalised; with and without a leading space).
SENTENCE_STARTERS: tuple[str, ...] = (
    "The", "A", "An", "This", "That", "My", "Her", "His", "Some", "Many", "Two", "Three", "All",
    "These", "There", "In", "Here", "Remember", "When", "After", "While", "Then", "Afterwards",
    "Friends", "He", "She", "They", "We", "It", "Yesterday", "Today", "Later", "Once", "Every",
    "Last", "On", "At", "Words",
)
#: Capitalised words that only occur after ". " (with a leading space).
_MID_STARTERS: tuple[str, ...] = ("Now", "Again")


def toy_lm_vocabulary() -> list[str]:
    """Every token of ``toy-lm``'s tokenizer, in id order (BOS first, UNK last).

    Words carry a leading space (``" Mary"``); sentence starters and names also exist without it
    (the first word after BOS). Years are a century token (``" 10"`` ... ``" 20"``) and a
    two-digit token (``"00"`` ... ``"99"``).
    """
    words: list[str] = []
    words += list(lx.FUNCTION_WORDS) + list(NOUNS) + list(PLURALS) + list(ADJECTIVES)
    for verb in lx.TRANSITIVE_VERBS + lx.INTRANSITIVE_VERBS:
        words += list(verb)
    words += list(lx.ADVERBS) + list(lx.PREPOSITIONS) + list(PLACES) + list(OBJECTS)
    words += list(GT_NOUNS) + list(NAMES)
    for country, capital in lx.CAPITALS:
        words += [country, capital]
    for pair in lx.OPPOSITES + lx.COLOURS + lx.SOUNDS:
        words += list(pair)
    for phrase in lx.TIME_PHRASES:
        words += phrase.split()
    for template in IOI_INTROS + IOI_ACTIONS + GT_TEMPLATES:
        words += [w.strip(",.") for w in template.split() if "{" not in w]
    starters = list(SENTENCE_STARTERS) + list(NAMES)
    vocab = [BOS]
    vocab += [" " + w for w in dict.fromkeys(words + starters + list(_MID_STARTERS)) if w]
    vocab += starters
    vocab += [f" {c}" for c in range(10, 21)] + [f"{y:02d}" for y in range(100)]
    vocab += [",", ".", ":"]
    vocab += [UNK]
    return list(dict.fromkeys(vocab))


#: The pre-tokenizer regex of ``toy-lm``: words with an optional leading space, digits in pairs
#: (so ``" 1732"`` is ``" 17"`` + ``"32"``), punctuation alone.
TOY_LM_SPLIT_PATTERN = r" ?[A-Za-z]+| ?\d\d| ?\d|[^\sA-Za-z\d]|\s"


__all__ = [
    "BOS",
    "FACTS",
    "GT_HELD_OUT_NOUNS",
    "GT_NOUNS",
    "GT_TEMPLATES",
    "IOI_ACTIONS",
    "IOI_HELD_OUT_ACTIONS",
    "IOI_HELD_OUT_INTROS",
    "IOI_INTROS",
    "NAMES",
    "OBJECTS",
    "PLACES",
    "TRAINING_MIX",
    "AgreementPair",
    "FactPrompt",
    "GreaterThanPair",
    "IOIPair",
    "InductionSequence",
    "agreement_pairs",
    "document",
    "fact_prompts",
    "greater_than_pairs",
    "induction_sequences",
    "ioi_pairs",
    "ioi_template",
    "is_held_out_pair",
    "is_held_out_template",
    "sample_text",
    "segment",
    "toy_lm_vocabulary",
    "training_rng",
]
