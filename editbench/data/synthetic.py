"""Generated edit requests for scale tests: any number up to 1,000,000, seeded, no file.

Requests are built from templates over a made-up world: people, towns and companies
(names combined from lists) crossed with 16 relations, each with a cloze prompt, two
paraphrases and a pool of real-looking objects. The world has one "true" object per
(subject, relation), so every request carries what the evaluator needs: the true and the
new target, paraphrases, a neighbourhood prompt (same relation, another subject) and a
distant one (another relation and subject), whose gold answers are the world's. Locality
subjects come from a reserved range that is never edited at any size, so no edit changes a
locality answer, and no (subject, relation) is edited twice.

Request ``i`` depends only on ``(seed, i)``: the first N of a larger draw are the draw of
N, generating is cheap (100K in about a second), and the result is the same on every
machine. Numbers on this data measure speed and memory, not editing quality: the model
knows none of these facts, so runs on it are marked ``synthetic`` in ``config.json``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from editbench.api import EditbenchError, EditRequest, LocalityPrompt

MAX_REQUESTS = 1_000_000
DEFAULT_SIZE = 10_000
DEFAULT_SEED = 0
GENERATOR_VERSION = 1  # bump when the output changes: it is part of the dataset's hash

FIRST_NAMES = (
    "Ada", "Adrian", "Aiko", "Alejandro", "Amara", "Anders", "Anika", "Arjun", "Astrid", "Bao",
    "Beatriz", "Bruno", "Camille", "Carlos", "Chiara", "Chidi", "Clara", "Daniel", "Dmitri",
    "Elena", "Elif", "Emeka", "Emil", "Esther", "Fatima", "Felix", "Freya", "Gabriel", "Greta",
    "Hana", "Hassan", "Helena", "Hiroshi", "Ingrid", "Isaac", "Ivan", "Jana", "Javier", "Jonas",
    "Julia", "Kai", "Kamala", "Karim", "Katarina", "Kenji", "Lars", "Layla", "Leon", "Lina",
    "Lorenzo", "Lucia", "Luis", "Maja", "Malik", "Marco", "Maria", "Mateo", "Mei", "Mikael",
    "Mira", "Nadia", "Naveen", "Nia", "Nikolai", "Noor", "Olga", "Omar", "Oskar", "Paula",
    "Pedro", "Priya", "Rafael", "Rania", "Ravi", "Rosa", "Ruben", "Sakura", "Samir", "Sara",
    "Sebastian", "Sofia", "Soren", "Tariq", "Tatiana", "Teodor", "Tomas", "Valentina", "Vera",
    "Viktor", "Wei", "Yara", "Yusuf", "Zara", "Zofia", "Alma", "Boris", "Celia", "Dario",
    "Edith", "Farid",
)
LAST_NAMES = (
    "Abadi", "Adeyemi", "Almeida", "Andersen", "Aziz", "Bauer", "Becker", "Bianchi", "Brandt",
    "Castillo", "Chen", "Costa", "Dahl", "Demir", "Dubois", "Eriksen", "Esposito", "Fischer",
    "Fontaine", "Garcia", "Gomez", "Haddad", "Hansen", "Hoffmann", "Horvath", "Ibrahim",
    "Ivanova", "Jansen", "Jovanovic", "Kaur", "Keller", "Kim", "Kowalski", "Kruger", "Larsen",
    "Laurent", "Lindqvist", "Lopez", "Marino", "Martins", "Mendes", "Meyer", "Moreau", "Murphy",
    "Nakamura", "Navarro", "Nguyen", "Nielsen", "Novak", "Okafor", "Olsen", "Ortiz", "Ozturk",
    "Park", "Pereira", "Petrov", "Popescu", "Quinn", "Ramos", "Reyes", "Ricci", "Rossi",
    "Sato", "Schmidt", "Schneider", "Silva", "Sokolov", "Suzuki", "Svensson", "Takahashi",
    "Tanaka", "Torres", "Varga", "Vasquez", "Vogel", "Wagner", "Walsh", "Weber", "Wojcik",
    "Yamamoto", "Yilmaz", "Zhang", "Zielinski", "Arslan", "Bakker", "Coelho", "Dimitrov",
    "Ekström", "Farkas", "Galli", "Holm", "Ilic", "Jensen", "Kaya", "Lehmann", "Moretti",
    "Nowak", "Oliveira", "Pavlov", "Richter",
)
INITIALS = ("", "A. ", "B. ", "J. ", "K. ", "L. ", "M. ", "R. ")
TOWN_ROOTS = (
    "Ald", "Ash", "Bar", "Bel", "Bran", "Brook", "Cal", "Carn", "Cor", "Dal", "Dun", "East",
    "Elm", "Fair", "Fen", "Glen", "Gold", "Green", "Hal", "Hart", "Hazel", "High", "Holt",
    "Iron", "Kel", "Kings", "Lang", "Lin", "Loch", "Mal", "Mar", "Mead", "Mill", "Moss", "Nor",
    "Oak", "Pen", "Pine", "Quar", "Raven", "Red", "Ros", "Rye", "Salt", "Sel", "Silver", "Stan",
    "Stone", "Sun", "Tarn", "Thorn", "Tor", "Wal", "Water", "Well", "West", "White", "Wil",
    "Win", "Wolf", "Wood", "Yar", "Zell", "Amber", "Birch", "Cedar", "Crow", "Dover", "Ember",
    "Frost", "Gale", "Heron", "Ivy", "Juniper", "Kestrel", "Lark", "Maple", "North", "Orchard",
    "Pearl", "Quill", "Rowan", "Sage", "Swan", "Teal", "Umber", "Vine", "Willow", "Wren",
    "Alder", "Bramble", "Copper", "Dusk", "Elder", "Fern", "Granite", "Hollow", "Jasper",
    "Linden", "Marsh",
)
TOWN_SUFFIXES = (
    "ford", "mere", "wick", "ton", "bury", "stead", "haven", "field", "dale", "holm", "by",
    "thorpe", "mouth", "port", "gate", "ley", "worth", "ham", "stoke", "minster", "brook",
    "cliff", "moor", "wood", "ridge", "vale", "burg", "stadt", "ville", "polis",
)
TOWN_PREFIXES = (
    "", "North ", "South ", "East ", "West ", "New ", "Old ", "Upper ", "Lower ", "Great ",
    "Little ", "Port ", "Saint ", "Mount ", "Fort ", "Lake ", "Glen ", "Cape ", "Greater ",
    "Central ", "Inner ", "Outer ", "High ", "Nether ",
)
COMPANY_WORDS = (
    "Systems", "Industries", "Logistics", "Pharmaceuticals", "Motors", "Foods", "Media",
    "Energy", "Labs", "Software", "Airlines", "Bank", "Insurance", "Textiles", "Robotics",
    "Records", "Publishing", "Brewing", "Shipping", "Telecom", "Mining", "Steel", "Chemicals",
    "Studios", "Games", "Apparel", "Semiconductors", "Biotech", "Capital", "Electronics",
    "Aerospace", "Construction", "Hotels", "Railways", "Optics", "Instruments", "Paper",
    "Glass", "Tools", "Furniture",
)
COMPANY_TAILS = (
    "", " Group", " International", " & Co.", " Ltd", " Inc.", " AG", " SA", " Corporation",
    " Partners", " Worldwide", " Global", " Holdings", " Enterprises", " Works", " Brothers",
    " & Sons", " Limited", " GmbH", " BV",
)

LANGUAGES = (
    "English", "French", "German", "Spanish", "Italian", "Portuguese", "Dutch", "Swedish",
    "Norwegian", "Danish", "Finnish", "Polish", "Czech", "Hungarian", "Romanian", "Greek",
    "Turkish", "Russian", "Ukrainian", "Arabic", "Hebrew", "Persian", "Hindi", "Bengali",
    "Tamil", "Japanese", "Korean", "Mandarin", "Vietnamese", "Swahili",
)
COUNTRIES = (
    "France", "Germany", "Spain", "Italy", "Portugal", "the Netherlands", "Belgium", "Sweden",
    "Norway", "Denmark", "Finland", "Poland", "Austria", "Switzerland", "Hungary", "Greece",
    "Turkey", "Egypt", "Morocco", "Nigeria", "Kenya", "South Africa", "India", "China", "Japan",
    "South Korea", "Vietnam", "Thailand", "Indonesia", "Australia", "New Zealand", "Canada",
    "the United States", "Mexico", "Brazil", "Argentina", "Chile", "Peru", "Colombia", "Ireland",
)
CITIES = (
    "Paris", "Berlin", "Madrid", "Rome", "Lisbon", "Amsterdam", "Brussels", "Stockholm", "Oslo",
    "Copenhagen", "Helsinki", "Warsaw", "Vienna", "Zurich", "Budapest", "Athens", "Istanbul",
    "Cairo", "Lagos", "Nairobi", "Cape Town", "Mumbai", "Delhi", "Beijing", "Shanghai", "Tokyo",
    "Osaka", "Seoul", "Hanoi", "Bangkok", "Jakarta", "Sydney", "Melbourne", "Auckland",
    "Toronto", "Vancouver", "Chicago", "Boston", "Mexico City", "Sao Paulo", "Buenos Aires",
    "Santiago", "Lima", "Bogota", "Dublin", "Edinburgh", "Prague", "Munich", "Milan", "Lyon",
)
OCCUPATIONS = (
    "architect", "surgeon", "journalist", "violinist", "chemist", "novelist", "diplomat",
    "economist", "photographer", "lawyer", "engineer", "painter", "astronomer", "chef",
    "historian", "mathematician", "pilot", "sculptor", "composer", "geologist", "actor",
    "philosopher", "biologist", "translator", "judge", "teacher", "nurse", "programmer",
    "farmer", "banker",
)
INSTRUMENTS = (
    "piano", "violin", "cello", "guitar", "flute", "trumpet", "saxophone", "clarinet", "harp",
    "drums", "oboe", "trombone", "viola", "accordion", "banjo", "mandolin", "organ", "bassoon",
    "sitar", "ukulele",
)
COMPANIES = (
    "Siemens", "Toyota", "Nestle", "Philips", "Samsung", "Nokia", "Volvo", "Renault", "Sony",
    "IBM", "Intel", "Boeing", "Airbus", "Shell", "Unilever", "Ericsson", "Honda", "Bosch",
    "Lufthansa", "Heineken", "Adidas", "Lego", "Ikea", "Danone", "Bayer", "Canon", "Fiat",
    "Pirelli", "Maersk", "Spotify",
)
SPORTS = (
    "tennis", "football", "basketball", "cricket", "rugby", "golf", "hockey", "volleyball",
    "baseball", "handball", "badminton", "squash", "fencing", "rowing", "cycling", "boxing",
    "judo", "swimming", "skiing", "chess",
)
UNIVERSITIES = (
    "Oxford University", "Cambridge University", "Harvard University", "Yale University",
    "Stanford University", "Princeton University", "the Sorbonne", "Heidelberg University",
    "the University of Bologna", "the University of Tokyo", "Peking University",
    "the University of Toronto", "McGill University", "the University of Sydney",
    "Uppsala University", "Leiden University", "ETH Zurich", "the University of Vienna",
    "Charles University", "the University of Cape Town",
)
CONTINENTS = ("Europe", "Asia", "Africa", "North America", "South America", "Oceania")
PRODUCTS = (
    "cars", "software", "steel", "beer", "chocolate", "furniture", "aircraft", "medicines",
    "smartphones", "toys", "shoes", "cameras", "tyres", "ships", "paper", "glass", "chips",
    "bicycles", "watches", "textiles", "fertiliser", "cement", "batteries", "coffee", "cheese",
)


@dataclass(frozen=True)
class Relation:
    """One relation of the generated world: how to ask it, and which objects it takes."""

    kind: str  # "person" | "town" | "company": which names its subjects get
    prompt: str  # with "{}" for the subject
    paraphrases: tuple[str, str]
    objects: tuple[str, ...]


RELATIONS: tuple[Relation, ...] = (
    Relation("person", "The native language of {} is",
             ("{}'s mother tongue is", "{} grew up speaking"), LANGUAGES),
    Relation("person", "{} is a citizen of",
             ("{} holds the citizenship of", "The country of citizenship of {} is"), COUNTRIES),
    Relation("person", "The profession of {} is",
             ("{}'s occupation is", "By profession, {} is"), OCCUPATIONS),
    Relation("person", "{} was born in",
             ("The birthplace of {} is", "{} came into the world in"), CITIES),
    Relation("person", "{} plays the",
             ("The instrument played by {} is the", "{} is known for playing the"), INSTRUMENTS),
    Relation("person", "{} is employed by",
             ("The employer of {} is", "{} works for"), COMPANIES),
    Relation("person", "The sport played by {} is",
             ("{} competes in", "{} is a professional player of"), SPORTS),
    Relation("person", "{} studied at",
             ("{} is a graduate of", "The alma mater of {} is"), UNIVERSITIES),
    Relation("town", "{} is located in",
             ("{} lies in the country of", "The country that contains {} is"), COUNTRIES),
    Relation("town", "The official language of {} is",
             ("In {}, the official language is", "People in {} officially speak"), LANGUAGES),
    Relation("town", "{} is twinned with",
             ("The sister city of {} is", "{} has a partnership with the city of"), CITIES),
    Relation("town", "{} is on the continent of",
             ("{} belongs to the continent of", "The continent where {} lies is"), CONTINENTS),
    Relation("company", "The headquarters of {} are in",
             ("{} is headquartered in", "{} has its head office in"), CITIES),
    Relation("company", "{} is owned by",
             ("The parent company of {} is", "{} is a subsidiary of"), COMPANIES),
    Relation("company", "{} was founded in",
             ("The country where {} was founded is", "{} was established in"), COUNTRIES),
    Relation("company", "The main product of {} is",
             ("{} is best known for making", "{} mainly produces"), PRODUCTS),
)

_PER_RELATION = -(-MAX_REQUESTS // len(RELATIONS))
"""Subjects of one relation that requests may edit (at any size); the rest are for locality."""

_MASK = (1 << 64) - 1


def _mix(*values: int) -> int:
    """A 64-bit hash of small integers (splitmix-style): cheap, the same on every machine."""
    h = 0x243F6A8885A308D3
    for v in values:
        h = ((h ^ v) * 0x9E3779B97F4A7C15) & _MASK
        h ^= h >> 31
    return h


class _Names:
    """Subject names of one kind, a seeded bijection from an index to a distinct name."""

    def __init__(self, parts: tuple[Sequence[str], Sequence[str], Sequence[str]], template: str,
                 seed: int, salt: int) -> None:
        rng = random.Random(f"synthetic-names:{seed}:{salt}")
        self.parts = [rng.sample(list(p), len(p)) for p in parts]
        self.template = template
        self.size = 1
        for p in self.parts:
            self.size *= len(p)
        self.step = self._coprime_step(rng)
        self.offset = rng.randrange(self.size)

    def _coprime_step(self, rng: random.Random) -> int:
        from math import gcd

        while True:
            step = rng.randrange(self.size // 3, self.size)
            if gcd(step, self.size) == 1:
                return step

    def __call__(self, index: int) -> str:
        x = (index * self.step + self.offset) % self.size  # a permutation of [0, size)
        first, second, third = self.parts
        x, a = divmod(x, len(first))
        c, b = divmod(x, len(second))
        return self.template.format(first[a], second[b], third[c])


class SyntheticWorld:
    """The generated world of one seed: subject names and each (subject, relation)'s object."""

    def __init__(self, seed: int = DEFAULT_SEED) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise EditbenchError(f"synthetic: seed: expected an integer, got {seed!r}")
        self.seed = seed
        self.names = {
            "person": _Names((INITIALS, FIRST_NAMES, LAST_NAMES), "{1} {0}{2}", seed, 1),
            "town": _Names((TOWN_PREFIXES, TOWN_ROOTS, TOWN_SUFFIXES), "{0}{1}{2}", seed, 2),
            "company": _Names((LAST_NAMES, COMPANY_WORDS, COMPANY_TAILS), "{0} {1}{2}", seed, 3),
        }
        for kind, names in self.names.items():
            if names.size <= _PER_RELATION:
                raise EditbenchError(f"synthetic: only {names.size} {kind} names for {_PER_RELATION} subjects")
        self._names_of = [self.names[rel.kind] for rel in RELATIONS]
        self._offsets = [_mix(seed, r, -1) for r in range(len(RELATIONS))]

    def subject(self, relation: int, index: int) -> str:
        """The subject of the ``index``-th fact of ``relation`` (distinct for distinct indices)."""
        names = self._names_of[relation]
        return names((index + self._offsets[relation]) % names.size)

    def true_object(self, relation: int, index: int) -> int:
        return _mix(self.seed, relation, index) % len(RELATIONS[relation].objects)

    def _reserved(self, relation: int, h: int) -> int:
        """A subject index of ``relation`` in the range no request ever edits."""
        return _PER_RELATION + h % (self._names_of[relation].size - _PER_RELATION)

    def request(self, i: int) -> EditRequest:
        """Request ``i``: the ``i // 16``-th subject of relation ``i % 16`` gets a new object."""
        r, index = i % len(RELATIONS), i // len(RELATIONS)
        rel = RELATIONS[r]
        h = _mix(self.seed, -1 - i)  # this request's choices, from disjoint bits of one hash
        subject = self.subject(r, index)
        true = self.true_object(r, index)
        new = (true + 1 + (h & 0xFFFF) % (len(rel.objects) - 1)) % len(rel.objects)
        other = (r + 1 + ((h >> 16) & 0xFF) % (len(RELATIONS) - 1)) % len(RELATIONS)
        near = self._reserved(r, (h >> 24) & 0xFFFFF)
        far = self._reserved(other, h >> 44)
        return EditRequest(
            case_id=str(i),
            prompt=rel.prompt.format(subject),
            subject=subject,
            target_new=rel.objects[new],
            target_true=rel.objects[true],
            rephrase_prompts=(rel.paraphrases[0].format(subject), rel.paraphrases[1].format(subject)),
            locality=(
                LocalityPrompt(rel.prompt.format(self.subject(r, near)),
                               rel.objects[self.true_object(r, near)], "neighbourhood"),
                LocalityPrompt(RELATIONS[other].prompt.format(self.subject(other, far)),
                               RELATIONS[other].objects[self.true_object(other, far)], "distant"),
            ),
        )


def _check_size(num: int | None) -> int:
    if num is None:
        return DEFAULT_SIZE
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise EditbenchError(f"synthetic: expected a positive number of requests, got {num!r}")
    if num > MAX_REQUESTS:
        raise EditbenchError(
            f"synthetic: at most {MAX_REQUESTS:,} requests can be generated, {num:,} were asked for")
    return num


def generate(num: int | None = None, seed: int = DEFAULT_SEED) -> list[EditRequest]:
    """``num`` requests (default :data:`DEFAULT_SIZE`); the first N of any draw are the draw of N."""
    count = _check_size(num)
    world = SyntheticWorld(seed)
    return [world.request(i) for i in range(count)]


def requests_sha256(requests: Sequence[EditRequest]) -> str:
    """A hash of everything a request holds, standing in for a file's SHA-256."""
    h = hashlib.sha256(f"editbench-synthetic:v{GENERATOR_VERSION}\n".encode())
    for r in requests:
        loc = "\x1f".join(f"{p.prompt}\x1e{p.answer}\x1e{p.kind}" for p in r.locality)
        h.update("\x1d".join((r.case_id, r.prompt, r.subject, r.target_new, r.target_true or "",
                              "\x1f".join(r.rephrase_prompts), loc)).encode() + b"\n")
    return h.hexdigest()


def zsre_records(requests: Sequence[EditRequest]) -> Iterator[dict[str, Any]]:
    """The requests as records of the zsRE/MEND layout (for files a loader test reads back)."""
    for r in requests:
        distant = next((p for p in r.locality if p.kind == "distant"), r.locality[-1])
        yield {"subject": r.subject, "src": r.prompt, "pred": r.target_true,
               "rephrase": r.rephrase_prompts[0], "alt": r.target_new, "answers": [r.target_true],
               "loc": distant.prompt, "loc_ans": distant.answer,
               "cond": f"{r.target_true} >> {r.target_new} || {r.prompt}"}
