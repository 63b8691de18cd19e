"""Synthetic planted-fact conversations: a license-free, reproducible paging benchmark.

The paging simulators need conversations whose probes say exactly which turns must still
be reachable to answer them. LoCoMo has that but cannot ship with the project, so this
module grows its own: long user/assistant small talk, organised in topic threads, with a
handful of personal facts (an allergy, a budget, a phone number...) each planted in one
user turn, and questions about those facts asked mid-conversation and at the end.

The shape is chosen to exercise the segmentation and bookmark strategies fairly:
- filler comes in threads of a few exchanges on one topic, so word overlap drops where a
  thread ends and `topic_shift` has real boundaries to find;
- a fact interrupts whatever thread it lands in, as people do, rather than getting a
  page of its own;
- fact values are distinctive (a dose, a date, a phone number) and appear nowhere else,
  so a probe is answerable exactly when its evidence turn (or the acknowledgment right
  after it) is in context;
- questions name the fact's subject ("the kitchen renovation", "Dr. Patel") but never
  the value, so recall has something to search for and nothing to copy.

Everything is drawn from `random.Random(seed)`, so the same seed gives the same
conversation on every machine running the same Python version (`random` promises only its
`random()` sequence across versions, not `choice` or `sample`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Mapping, Sequence

from ..pages import Turn
from .conversations import Conversation, Probe

FACT_TYPES = ("allergy", "budget", "contact", "deadline", "medical", "number", "preference", "schedule")

# A conversation is a whole number of user/assistant exchanges, 120 to 200 turns.
_EXCHANGES = (60, 100)
_FACTS = (8, 16)
# Facts stay out of the last exchanges so that every fact has some conversation after it.
_QUIET_END_EXCHANGES = 5
# An interleaved probe comes at least this many turns after its fact, so the fact has
# left any small window of recent turns and the probe tests paging, not recency.
_MIN_PROBE_DISTANCE = 15
_THREAD_EXCHANGES = (2, 6)  # 4 to 12 turns
# A topic does not come back until this many other topics have had a thread.
_TOPIC_MEMORY = 4
# How often a turn gets a short topic-neutral second sentence: this breaks verbatim
# repeats between threads on the same topic without blurring the topics themselves.
_TAG_RATE = 0.3


# --- planted facts ---------------------------------------------------------------------


@dataclass(frozen=True)
class _FactSpec:
    subjects: Mapping[str, Sequence[str]]  # what a question names -> the values it can take
    statements: tuple[str, ...]  # the user's turn; each holds {value} verbatim
    questions: tuple[str, ...]  # name {subject}, never {value}
    acks: tuple[str, ...]  # the assistant's reply; some repeat {value}, some do not


@dataclass(frozen=True)
class _Fact:
    kind: str
    value: str
    statement: str
    ack: str
    questions: tuple[str, ...]


def _shared(subjects: Sequence[str], values: Sequence[str]) -> dict[str, Sequence[str]]:
    return {s: values for s in subjects}


_MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_CLOCK = ("7am", "7:30am", "8am", "9am", "10am", "12pm", "5pm", "5:30pm", "6pm", "6:30pm", "7pm", "7:30pm", "8pm")

_FACT_SPECS: dict[str, _FactSpec] = {
    "allergy": _FactSpec(
        subjects={
            "food": ("shellfish", "peanuts", "tree nuts", "sesame", "kiwi", "strawberries", "soy", "mustard",
                     "buckwheat", "mango"),
            "medication": ("penicillin", "sulfa drugs", "ibuprofen", "codeine", "aspirin", "amoxicillin"),
            "kind of pollen": ("birch pollen", "ragweed pollen", "grass pollen", "oak pollen", "cedar pollen",
                               "olive tree pollen"),
        },
        statements=(
            "Oh, before I forget: I'm allergic to {value}.",
            "Just so you know, I'm allergic to {value}, so keep that in mind.",
            "I found out the hard way that I'm allergic to {value}.",
            "My doctor confirmed I have an allergy to {value}.",
            "Quick heads-up: {value} gives me a bad allergic reaction.",
        ),
        questions=(
            "What {subject} am I allergic to?",
            "Remind me, which {subject} am I allergic to?",
            "Which {subject} did I say gives me an allergic reaction?",
        ),
        acks=(
            "Noted, I'll keep {value} in mind.",
            "Thanks for telling me; that's important to remember.",
            "Got it, no {value} for you.",
        ),
    ),
    "budget": _FactSpec(
        subjects=_shared(
            ("kitchen renovation", "wedding", "trip to Portugal", "new laptop", "home gym", "bathroom remodel",
             "birthday party", "garden makeover", "family reunion", "used car", "honeymoon", "new sofa"),
            tuple(f"${amount:,}" for amount in range(800, 15001, 50)),
        ),
        statements=(
            "We set a budget of {value} for the {subject}.",
            "I can spend at most {value} on the {subject}.",
            "The budget for the {subject} is {value}, and not a cent more.",
            "I've put aside {value} for the {subject}.",
            "My partner and I agreed on {value} for the {subject}.",
        ),
        questions=(
            "What was the budget for the {subject}?",
            "How much did I set aside for the {subject}?",
            "How much can I spend on the {subject}?",
        ),
        acks=(
            "{value} for the {subject}, got it.",
            "That sounds like a sensible limit.",
            "Noted, I'll keep the {subject} budget in mind.",
        ),
    ),
    "contact": _FactSpec(
        subjects=_shared(
            ("Dr. Patel", "Dr. Nakamura", "Coach Rivera", "Professor Lindqvist", "Aunt Rosa", "Uncle Teodor",
             "Ms. Okafor", "Grandma June", "Ines Moreau", "Tomasz Nowak", "Keiko Sato", "Rafael Ortiz",
             "Hannah Becker", "Samir Haddad", "Olu Adeyemi", "Bjorn Eriksen"),
            # 555-0100 to 555-0199 are the numbers reserved for fiction.
            tuple(f"555-01{n:02d}" for n in range(100)),
        ),
        statements=(
            "{subject}'s phone number is {value}, in case I need it later.",
            "If I ever need to reach {subject}, the number is {value}.",
            "Can you remember this for me? {subject}: {value}.",
            "I finally got {subject}'s number, it's {value}.",
        ),
        questions=(
            "What's {subject}'s phone number?",
            "What number do I call to reach {subject}?",
        ),
        acks=(
            "Saved: {subject}, {value}.",
            "Got it, I'll remember how to reach {subject}.",
            "Noted, that's {subject}'s number.",
        ),
    ),
    "deadline": _FactSpec(
        subjects=_shared(
            ("grant proposal", "quarterly report", "thesis draft", "tax return", "conference talk",
             "client presentation", "scholarship application", "book manuscript", "visa application",
             "research poster", "audit paperwork", "portfolio review"),
            # Two-digit days only: "March 1" would be a substring of "March 14".
            tuple(f"{month} {day}" for month in _MONTHS for day in range(10, 29)),
        ),
        statements=(
            "The {subject} is due on {value}.",
            "I have to hand in the {subject} by {value}.",
            "Everyone expects the {subject} to be finished by {value}.",
            "Hard deadline for the {subject}: {value}.",
        ),
        questions=(
            "When is the {subject} due?",
            "What's the deadline for the {subject}?",
        ),
        acks=(
            "{value} for the {subject}, noted.",
            "Got it; that gives you a clear target.",
            "I'll keep the {subject} deadline in mind.",
        ),
    ),
    "medical": _FactSpec(
        subjects={
            "blood pressure": ("lisinopril, 10 mg", "lisinopril, 20 mg", "amlodipine, 5 mg", "losartan, 50 mg"),
            "blood sugar": ("metformin, 500 mg", "metformin, 850 mg", "metformin, 1000 mg", "glipizide, 5 mg"),
            "cholesterol": ("atorvastatin, 20 mg", "atorvastatin, 40 mg", "rosuvastatin, 10 mg", "simvastatin, 20 mg"),
            "thyroid": ("levothyroxine, 50 mcg", "levothyroxine, 75 mcg", "levothyroxine, 100 mcg"),
            "acid reflux": ("omeprazole, 20 mg", "pantoprazole, 40 mg", "famotidine, 20 mg"),
            "migraines": ("sumatriptan, 50 mg", "topiramate, 25 mg", "propranolol, 40 mg"),
            "anxiety": ("sertraline, 50 mg", "escitalopram, 10 mg", "buspirone, 15 mg"),
            "asthma": ("montelukast, 10 mg", "budesonide, 180 mcg"),
        },
        statements=(
            "I take {value} for my {subject} every morning.",
            "For my {subject}, I'm on {value} once a day.",
            "My doctor just changed my {subject} medication to {value}.",
            "Note for later: {value} is what I take for my {subject}.",
        ),
        questions=(
            "What do I take for my {subject}, and at what dose?",
            "Which medication and dose am I on for my {subject}?",
        ),
        acks=(
            "Thanks, I'll remember you take {value}.",
            "Got it, that's useful to know about your {subject}.",
            "Noted. I hope the {subject} stays under control.",
        ),
    ),
    "number": _FactSpec(
        subjects=_shared(
            ("gym locker", "flight", "hotel booking", "parking spot", "storage unit", "insurance claim", "mailbox",
             "ferry ticket"),
            # Above every dose in the medical pool, so no answer hides inside another.
            tuple(str(n) for n in range(2000, 10000)),
        ),
        statements=(
            "My {subject} number is {value}, by the way.",
            "Remember that my {subject} number is {value}.",
            "I wrote down my {subject} number: {value}.",
            "Just confirmed it, my {subject} number is {value}.",
        ),
        questions=(
            "What's my {subject} number?",
            "Which number did I give you for my {subject}?",
        ),
        acks=(
            "Number {value} for your {subject}, got it.",
            "Noted, I'll remember your {subject} number.",
            "Good idea to write that down.",
        ),
    ),
    "preference": _FactSpec(
        # Value pools are disjoint across subjects, so two preferences never share an answer.
        subjects={
            "seats on flights": ("window seats", "aisle seats", "exit-row seats"),
            "coffee": ("oat milk", "almond milk", "a splash of cream", "black with no sugar", "an extra espresso shot"),
            "steak": ("medium rare", "medium well"),
            "hotel rooms": ("rooms on a high floor", "ground-floor rooms", "rooms away from the elevator"),
            "pizza": ("black olives", "pepperoni", "anchovies", "roasted peppers", "a thin crust"),
            "tea": ("chamomile", "Earl Grey", "jasmine green tea", "rooibos"),
            "ice cream": ("pistachio", "salted caramel", "mint chocolate chip", "stracciatella"),
            "background music while working": ("instrumental jazz", "film scores", "lo-fi beats", "rain sounds"),
        },
        statements=(
            "When it comes to {subject}, I always go for {value}.",
            "Small thing about me: for {subject}, it's {value} every time.",
            "I'm picky about {subject}, and I always pick {value}.",
            "For {subject}, I only ever choose {value}.",
        ),
        questions=(
            "What do I always go for when it comes to {subject}?",
            "What's my usual choice for {subject}?",
        ),
        acks=(
            "{value}, noted.",
            "Good to know your taste.",
            "Got it, I'll remember that about {subject}.",
        ),
    ),
    "schedule": _FactSpec(
        subjects=_shared(
            ("yoga class", "piano lesson", "book club", "pottery class", "Spanish lesson", "therapy session",
             "choir practice", "climbing session", "chess club", "swim lesson", "dance class", "volunteer shift"),
            tuple(f"{day}s at {clock}" for day in _WEEKDAYS for clock in _CLOCK),
        ),
        statements=(
            "I have my {subject} every week, {value}.",
            "My {subject} is on {value}, so I'm never free then.",
            "Don't let me book anything over my {subject}; it's {value}.",
            "Every week I go to my {subject}, {value}.",
        ),
        questions=(
            "When is my {subject}?",
            "What day and time is my {subject}?",
        ),
        acks=(
            "{value}, got it. I'll work around your {subject}.",
            "Noted, I'll keep that time free.",
            "That sounds like a nice routine.",
        ),
    ),
}


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _draw_facts(rng: random.Random) -> list[_Fact]:
    """Every type once, then up to one more of each, in random order."""
    kinds = list(FACT_TYPES) + rng.sample(FACT_TYPES, rng.randint(*_FACTS) - len(FACT_TYPES))
    rng.shuffle(kinds)
    used_subjects: set[tuple[str, str]] = set()
    used_values: set[str] = set()
    facts = []
    for kind in kinds:
        spec = _FACT_SPECS[kind]
        # A second fact of a type needs its own subject, or its question would be ambiguous.
        subject = rng.choice([s for s in spec.subjects if (kind, s) not in used_subjects])
        value = rng.choice([v for v in spec.subjects[subject] if v not in used_values])
        used_subjects.add((kind, subject))
        used_values.add(value)  # so no two probes of a conversation share an answer
        slots = {"subject": subject, "value": value}
        facts.append(
            _Fact(
                kind=kind,
                value=value,
                statement=_capitalized(rng.choice(spec.statements).format(**slots)),
                ack=_capitalized(rng.choice(spec.acks).format(**slots)),
                questions=tuple(q.format(**slots) for q in spec.questions),
            )
        )
    return facts


def _spread(rng: random.Random, k: int, limit: int) -> list[int]:
    """k distinct positions in [0, limit), one in each of k equal strata, so facts cover
    the whole conversation instead of clustering."""
    return [rng.randrange(i * limit // k, (i + 1) * limit // k) for i in range(k)]


# --- filler ----------------------------------------------------------------------------

# A user turn and the assistant reply that answers it.
_Exchange = tuple[str, str]


@dataclass(frozen=True)
class _Topic:
    slots: Mapping[str, Sequence[str]]  # drawn once per thread, so a thread keeps its subject
    openers: tuple[_Exchange, ...]  # how a thread on this topic starts
    follow_ups: tuple[_Exchange, ...]  # at least _THREAD_EXCHANGES[1] - 1 of them


# Names and times any topic may use. Filler pools share no value with the fact pools, so
# an answer never turns up in small talk.
_SHARED_SLOTS: dict[str, Sequence[str]] = {
    "friend": ("Sam", "Priya", "Jonah", "Leila", "Marcus", "Tess", "Diego", "Hana", "Felix", "Noor", "Callum", "Ruth"),
    "when": ("yesterday", "last night", "over the weekend", "on Saturday", "a few days ago", "this morning"),
}

_USER_TAGS = (
    "Curious what you think.",
    "It's been on my mind a lot.",
    "Just thinking out loud.",
    "Funny how that goes.",
    "Anyway, that's where I'm at.",
)
_ASSISTANT_TAGS = (
    "Hope that helps!",
    "Let me know how it goes.",
    "Keep me posted.",
    "Happy to talk it through more.",
    "Good luck with it!",
)

_TOPICS: dict[str, _Topic] = {
    "cooking": _Topic(
        slots={
            "dish": ("lasagna", "mushroom risotto", "chicken curry", "banana bread", "ramen", "shakshuka", "paella",
                     "lentil soup", "fish tacos", "sourdough", "gnocchi", "pot pie"),
            "ingredient": ("fresh basil", "smoked paprika", "garlic", "ginger", "lemon zest", "coconut milk",
                           "parmesan", "cumin", "chili flakes", "fresh thyme"),
            "tool": ("cast-iron skillet", "Dutch oven", "slow cooker", "air fryer", "wok", "stand mixer"),
        },
        openers=(
            ("I tried making {dish} {when} and it came out better than I expected.",
             "Nice! {dish} rewards a bit of patience; what did you change this time?"),
            ("Do you have any tips for {dish}? I want to cook it for {friend} this weekend.",
             "For {dish}, prep everything before you start and season in layers. {friend} is in for a treat."),
            ("I finally bought a {tool}, so now I want to cook {dish} in it.",
             "A {tool} is a great fit for {dish}; it holds heat evenly, so nothing scorches."),
        ),
        follow_ups=(
            ("Would adding {ingredient} to the {dish} work, or is that too much?",
             "{ingredient} would work well in {dish}; add it near the end so the flavor stays bright."),
            ("Last time the {dish} turned out a bit bland, honestly.",
             "Bland {dish} usually needs more salt or acid; taste as you cook and finish with a squeeze of lemon."),
            ("How long should the {dish} rest before serving?",
             "About ten minutes is plenty for {dish}; the flavors settle and it's easier to serve."),
            ("{friend} said my {dish} needed more {ingredient}.",
             "{friend} might be onto something; a little extra {ingredient} can lift the whole {dish}."),
            ("I always end up making way too much {dish} for two people.",
             "Leftover {dish} often tastes even better the next day, so that's not the worst problem."),
            ("My {tool} is a pain to clean after cooking {dish}.",
             "A quick scrub while the {tool} is still warm saves a lot of effort later."),
        ),
    ),
    "travel": _Topic(
        slots={
            "city": ("Lisbon", "Kyoto", "Reykjavik", "Oaxaca", "Edinburgh", "Vancouver", "Marrakech", "Prague",
                     "Hanoi", "Cape Town", "Istanbul", "Montreal"),
            "sight": ("old town", "night market", "harbor", "cathedral", "botanical garden", "hot springs",
                      "museum district", "waterfront"),
            "transport": ("train", "ferry", "rental car", "metro", "bike", "tram"),
        },
        openers=(
            ("I'm thinking about a trip to {city} sometime next year.",
             "{city} is a great pick. Are you more drawn to the {sight} or to wandering without a plan?"),
            ("My friend {friend} just got back from {city} and won't stop talking about it.",
             "Sounds like {friend} had a great time. Did they say what the highlight of {city} was?"),
            ("Have you heard much about {city}? I keep seeing photos of the {sight}.",
             "The {sight} in {city} is famous for good reason; it's worth seeing in person."),
        ),
        follow_ups=(
            ("Is it easy to get around {city} by {transport}?",
             "Yes, getting around {city} by {transport} is usually straightforward."),
            ("How many days would you spend in {city}?",
             "Three or four days lets you see {city} without rushing."),
            ("I'd mostly want to wander around the {sight}.",
             "The {sight} is lovely early in the day, before the tour groups arrive."),
            ("Packing light for {city} is my plan, but it never works out.",
             "For {city}, a small day pack and comfortable shoes matter more than anything else you bring."),
            ("What's the best season to visit {city}, do you think?",
             "Shoulder season tends to have fewer crowds and milder weather in {city}."),
            ("Should I book everything in {city} ahead or keep it loose?",
             "Booking the first night in {city} ahead and leaving the rest flexible works well."),
        ),
    ),
    "movies": _Topic(
        slots={
            "genre": ("heist thriller", "sci-fi epic", "romantic comedy", "horror film", "documentary",
                      "animated feature", "courtroom drama", "western"),
            "director": ("Denis Villeneuve", "Greta Gerwig", "Bong Joon-ho", "Agnès Varda", "Akira Kurosawa",
                         "Céline Sciamma", "Wes Anderson", "Jordan Peele"),
            "venue": ("the old cinema downtown", "a drive-in", "the film festival", "an outdoor screening"),
        },
        openers=(
            ("I watched a {genre} {when} and I can't stop thinking about the ending.",
             "That's the mark of a good {genre}. Did the ending feel earned to you?"),
            ("{friend} wants to do a {director} marathon. Where should we start?",
             "Start with the earlier {director} films; you'll notice the recurring themes as you go."),
            ("Any good {genre} recommendations? I'm in the mood for something new.",
             "For a {genre}, I'd look at what {director} has made; it's a good mix of craft and fun."),
        ),
        follow_ups=(
            ("The soundtrack was honestly the best part of the {genre}.",
             "A great score can carry a {genre} through its weaker scenes."),
            ("I saw it at {venue} and the crowd was really into it.",
             "Seeing it at {venue} with a lively crowd probably made it even better."),
            ("Do you think {director} is overrated?",
             "{director} has fans and critics, but the way those films build tension is hard to deny."),
            ("The second act of the {genre} dragged a little for me.",
             "Second acts are hard to get right, and a {genre} sags there more often than not."),
            ("I usually fall asleep during a long {genre}, but not this one.",
             "Staying awake through a long {genre} is the best review it can get."),
            ("{friend} thinks the book behind the {genre} was better.",
             "Readers rarely love adaptations, but a {genre} on screen can do things a book can't."),
        ),
    ),
    "sports": _Topic(
        slots={
            "sport": ("basketball", "soccer", "hockey", "baseball", "tennis", "cricket", "rugby", "volleyball"),
            "team": ("the Hawks", "the Rovers", "the Wolves", "the Mariners", "the Comets", "the Titans"),
            "rival": ("the Falcons", "the Rangers", "the Bears", "the Pirates", "the Storm", "the Giants"),
        },
        openers=(
            ("Did you catch the {sport} game {when}? {team} barely pulled it off.",
             "{team} have been streaky all season, so a close win is about right."),
            ("I've started playing {sport} again with a few people from work.",
             "That's a great way to stay active; {sport} with coworkers is fun and social."),
            ("{friend} got us tickets to see {team} play {rival}.",
             "{team} against {rival} should be a good one; enjoy the game with {friend}."),
        ),
        follow_ups=(
            ("{team} looked completely lost on defense in the second half.",
             "Defensive lapses late in {sport} games usually come down to fatigue."),
            ("I think {rival} will win the whole league this year.",
             "{rival} have depth, but injuries could change everything."),
            ("My knees are not as forgiving at {sport} as they used to be.",
             "Warming up properly makes a big difference for {sport} at any age."),
            ("The atmosphere at the {team} game was unreal.",
             "Live {sport} is a completely different experience from watching on TV."),
            ("Should I bother getting a season pass for {team}?",
             "A season pass pays off if you go to more than a handful of {team} games."),
            ("{friend} only ever watches the {sport} highlights.",
             "Highlights are efficient, but they miss all the tension of a close {sport} game."),
        ),
    ),
    "gardening": _Topic(
        slots={
            "plant": ("tomatoes", "sunflowers", "zucchinis", "roses", "chili peppers", "hydrangeas", "cucumbers",
                      "tulips", "dahlias", "sweet peas"),
            "pest": ("aphids", "slugs", "snails", "caterpillars", "spider mites", "earwigs"),
            "spot": ("balcony", "backyard", "raised bed", "allotment", "windowsill", "front porch"),
        },
        openers=(
            ("My {plant} on the {spot} are finally starting to come up.",
             "That's exciting! The first shoots are always the best moment with {plant}."),
            ("I want to plant {plant} this spring but I'm not sure where to start.",
             "{plant} are a good choice; start with rich soil and a spot that gets plenty of sun."),
            ("Something is eating my {plant} and I think it's {pest}.",
             "For {pest}, a gentle soap spray or picking them off by hand works without harsh chemicals."),
        ),
        follow_ups=(
            ("How often should I be watering the {plant}?",
             "{plant} usually like deep watering a couple of times a week rather than a little every day."),
            ("The {spot} only gets sun in the afternoon.",
             "Afternoon sun is fine for most {plant}; just keep an eye on the soil drying out."),
            ("I tried coffee grounds as fertilizer for the {plant}, not sure it helped.",
             "Coffee grounds help {plant} a little, but compost makes a much bigger difference."),
            ("My neighbor swears by talking to her {plant}.",
             "Talking to {plant} can't hurt, and it gets you out there checking on them."),
            ("Is it too late in the season to start {plant} from seed?",
             "Starting {plant} from seed indoors buys you a few weeks of growing time."),
            ("Weeds keep taking over the {spot}.",
             "A layer of mulch on the {spot} holds moisture and keeps weeds down."),
        ),
    ),
    "books": _Topic(
        slots={
            "kind": ("mystery novel", "memoir", "fantasy series", "history book", "poetry collection",
                     "short story collection", "graphic novel"),
            "author": ("Ursula K. Le Guin", "Toni Morrison", "Haruki Murakami", "Agatha Christie", "Kazuo Ishiguro",
                       "Chimamanda Ngozi Adichie", "Terry Pratchett", "Octavia Butler"),
            "place": ("on the train", "before bed", "at lunch", "on the porch", "on the bus"),
        },
        openers=(
            ("I just finished a {kind} by {author} and I loved it.",
             "{author} has a way of making quiet moments feel huge. What stayed with you?"),
            ("My reading group picked a {kind} this month.",
             "A {kind} is a good change of pace if the group usually reads something else."),
            ("I've been trying to read more {place} instead of scrolling my phone.",
             "Reading {place} is a nice habit; even twenty pages a day adds up."),
        ),
        follow_ups=(
            ("Have you read anything by {author}?",
             "I know {author}'s work well; the later books are especially rewarding."),
            ("The middle of the {kind} dragged, but the last chapters were worth it.",
             "Endings can redeem a slow middle, and it sounds like this {kind} did."),
            ("I can never decide between paper books and an e-reader for reading {place}.",
             "An e-reader is handy for reading {place}, though paper is easier on the eyes at night."),
            ("I keep buying books like that {kind} faster than I can read them.",
             "A to-read pile is a library of possibilities, not a chore; start with whichever {kind} calls to you."),
            ("{friend} lent me a {kind} and I feel bad it's taking so long.",
             "{friend} will probably just be happy you're reading the {kind}; there's no rush."),
            ("Do you ever reread books by {author}?",
             "Rereading {author} often shows you things you missed the first time."),
        ),
    ),
    "work": _Topic(
        slots={
            "project": ("the website redesign", "the client pitch", "the data migration", "the onboarding docs",
                        "the product launch", "the office move", "the hiring push"),
            "colleague": ("Ana", "Viktor", "Grace", "Omar", "Bea", "Kenji", "Lucía", "Theo"),
            "meeting": ("standup", "all-hands", "one-on-one", "planning session", "retrospective"),
        },
        openers=(
            ("Work has been hectic because of {project}.",
             "Big efforts like {project} always feel chaotic in the middle. Is there an end in sight?"),
            ("My coworker {colleague} and I keep disagreeing about {project}.",
             "Disagreements about {project} get easier when you each write down what you're optimizing for."),
            ("We had a really long {meeting} today.",
             "A long {meeting} can drain the whole afternoon. Was anything decided?"),
        ),
        follow_ups=(
            ("Half my day goes to answering messages about {project}.",
             "Batching messages about {project} into two or three slots a day can cut the noise a lot."),
            ("{colleague} is great but replies to everything at midnight.",
             "With {colleague}, it might help to agree on response-time expectations."),
            ("Should I push back when the priorities for {project} change every week?",
             "Asking which priority to drop when a new one lands on {project} keeps the trade-off visible."),
            ("I'm trying to block out focus time for {project} on my calendar.",
             "Blocking focus time for {project} and defending it is one of the best habits for a busy stretch."),
            ("The {meeting} could honestly have been an email.",
             "A short written summary after the {meeting} can save a lot of back and forth."),
            ("I haven't taken a real lunch break since {project} started.",
             "Even twenty minutes away from {project} makes the afternoon more productive."),
        ),
    ),
    "music": _Topic(
        slots={
            "instrument": ("guitar", "drums", "violin", "ukulele", "bass", "saxophone", "cello", "banjo"),
            "style": ("bluegrass", "indie rock", "synth-pop", "bossa nova", "folk", "hip-hop", "soul", "reggae"),
            "band": ("The Paper Lanterns", "Velvet Harbor", "North Static", "The Quiet Engines", "Marigold Radio",
                     "Copper Moths"),
        },
        openers=(
            ("I've been practicing {instrument} every evening this month.",
             "Daily practice is the way to go; adults often learn {instrument} faster than they expect."),
            ("I got tickets to see {band} live next month.",
             "Live shows give songs a completely different energy. Enjoy {band}!"),
            ("Lately I've been listening to a lot of {style}.",
             "{style} is a great rabbit hole; there is always another record to discover."),
        ),
        follow_ups=(
            ("My fingers still hurt after {instrument} practice.",
             "Short daily {instrument} sessions beat one long weekend session for building calluses."),
            ("Do you think it's too late to learn {instrument} as an adult?",
             "Not at all; adults practice {instrument} deliberately, which makes up for a lot."),
            ("{band} apparently changed their sound on the new album.",
             "Bands like {band} that change their sound often win over new listeners, even if old fans grumble."),
            ("I made a {style} playlist for {friend}'s road trip.",
             "A good {style} playlist has a shape: start easy, build up, and land softly."),
            ("{band} sound warmer on vinyl to me, but maybe that's nostalgia.",
             "It's a bit of both; vinyl is mastered differently, and putting on a {band} record is a ritual."),
            ("I want to start writing my own {style} songs.",
             "Start with a simple chord loop on the {instrument} and hum {style} melodies over it."),
        ),
    ),
    "pets": _Topic(
        slots={
            "pet": ("dog", "cat", "parrot", "rabbit", "hamster", "tortoise", "puppy", "kitten"),
            "pet_name": ("Biscuit", "Mochi", "Pepper", "Luna", "Rocket", "Waffles", "Ziggy", "Olive"),
            "habit": ("chewing shoes", "scratching the couch", "making noise at night", "stealing socks",
                      "waking me up at dawn", "knocking things off shelves"),
        },
        openers=(
            ("My {pet}, {pet_name}, has been {habit} all week.",
             "Sounds like {pet_name} has some extra energy to burn. Has anything changed in the routine?"),
            ("We're thinking about adopting a {pet}.",
             "Adopting is a big commitment, but a {pet} can really change a home."),
            ("{pet_name} had a checkup at the vet {when} and everything looked fine.",
             "Good news for {pet_name}! Regular checkups catch small problems early."),
        ),
        follow_ups=(
            ("How do I get {pet_name} to stop {habit}?",
             "Redirecting {pet_name} to something allowed works better than scolding."),
            ("Is it normal for a {pet} to sleep this much?",
             "A {pet} often sleeps a lot; as long as eating and energy are normal, it's fine."),
            ("{friend} offered to look after {pet_name} when I travel.",
             "Having {friend} look after {pet_name} is great because they already know each other."),
            ("I spent way too much on toys {pet_name} ignores.",
             "Cheap toys are often a {pet}'s favorites, which is a bit unfair to your wallet."),
            ("The cardboard box is still {pet_name}'s favorite toy.",
             "Boxes are undefeated; to a {pet}, they're cozy, safe, and free."),
            ("{pet_name} gets anxious when I leave the house.",
             "A {pet} settles when the day follows a predictable pattern, so a steady routine helps {pet_name}."),
        ),
    ),
    "weather": _Topic(
        slots={
            "storm": ("heatwave", "thunderstorm", "snowstorm", "cold snap", "hailstorm", "windstorm", "dust storm"),
            "season": ("spring", "summer", "autumn", "winter"),
            "gear": ("umbrella", "raincoat", "pair of snow boots", "sunhat", "wool scarf", "spare sweater"),
        },
        openers=(
            ("We had a {storm} {when} and it knocked out the power.",
             "That sounds rough. A charged phone and a flashlight help a lot when a {storm} takes the power out."),
            ("This {season} has been so strange, the weather keeps flipping.",
             "{season} transitions are often unsettled, so layers are your friend."),
            ("The forecast says another {storm} is coming.",
             "Forecasts are most reliable within two or three days, so it's worth preparing for the {storm}."),
        ),
        follow_ups=(
            ("I never know whether to bring a {gear}.",
             "Keeping a {gear} by the door saves a lot of guessing."),
            ("My commute was miserable in the {storm} today.",
             "Commutes in a {storm} go better if you leave a bit early and expect delays."),
            ("I actually like a good {storm} when I can stay inside.",
             "A {storm} is much easier to enjoy from indoors."),
            ("Is it just me or is {season} getting weirder every year?",
             "You're not imagining it; {season} has been less predictable in a lot of places."),
            ("The garden did not enjoy the {storm} at all.",
             "Plants usually bounce back from a {storm}; trim the damaged bits and give them time."),
            ("I should probably check the gutters before {season}.",
             "Clearing the gutters before {season} saves a lot of trouble later."),
        ),
    ),
    "tech": _Topic(
        slots={
            "device": ("phone", "tablet", "laptop", "desktop computer", "work laptop", "home computer"),
            "problem": ("the fan is loud all the time", "the connection keeps dropping", "the screen flickers",
                        "it overheats constantly", "updates take forever", "it randomly restarts"),
            "app": ("a note-taking app", "a password manager", "a to-do app", "a photo editor", "a podcast app"),
        },
        openers=(
            ("My {device} is acting up: {problem}.",
             "Before replacing the {device}, a clean reset and fresh updates can fix a surprising amount."),
            ("I'm finally switching to {app} to get organized.",
             "With {app}, start small and only add structure when you feel the need."),
            ("Should I upgrade my {device} this year or wait?",
             "If the {device} still does what you need, waiting a cycle usually gets you more for less."),
        ),
        follow_ups=(
            ("I already tried turning the {device} off and on again.",
             "Then it's worth checking the {device} for a firmware update or resetting its settings."),
            ("Everything has a subscription now, even {app}.",
             "Review your subscriptions twice a year; if {app} isn't earning its keep, cancel it."),
            ("{friend} keeps telling me to back up my {device}.",
             "{friend} is right: an automatic backup of the {device} is the cheapest insurance there is."),
            ("The old {device} still works, I just want something faster.",
             "Sometimes clearing storage makes an old {device} feel surprisingly quick again."),
            ("I don't trust cloud sync after losing notes in {app} once.",
             "Keeping one local copy alongside the cloud copy avoids the worst surprises with {app}."),
            ("I spend way too much time on my {device} at night.",
             "Setting a cutoff time for the {device} is a simple fix that works."),
        ),
    ),
    "fitness": _Topic(
        slots={
            "exercise": ("running", "swimming", "cycling", "weightlifting", "rowing", "jump rope", "kettlebells"),
            "goal": ("a 10k race", "a half marathon", "ten pull-ups", "a charity bike ride", "my first triathlon"),
            "muscles": ("shoulders", "hamstrings", "calves", "quads", "forearms"),
        },
        openers=(
            ("I started {exercise} three times a week.",
             "Three times a week is a solid rhythm; mixing {exercise} with easy days keeps it sustainable."),
            ("I'm training for {goal} and it's harder than I thought.",
             "Training for {goal} goes best with slow, steady increases each week."),
            ("My {muscles} are sore after {exercise} {when}.",
             "Sore {muscles} usually ease with gentle movement and a bit of stretching."),
        ),
        follow_ups=(
            ("How do you stay motivated for {exercise} when it's cold and dark outside?",
             "Laying out your {exercise} gear the night before removes one excuse."),
            ("I keep skipping stretching after {exercise} even though I know better.",
             "Even five minutes of stretching your {muscles} after {exercise} makes a difference."),
            ("Do rest days actually matter that much for {exercise}?",
             "Rest days are when {exercise} training turns into fitness, so they matter."),
            ("{friend} wants to join me for {exercise}, which should help.",
             "A training partner like {friend} makes skipping {exercise} much harder."),
            ("I bought new gear for {exercise} and it already feels better.",
             "Good gear makes {exercise} more comfortable, and that helps you keep going."),
            ("I'm not sure I'm eating enough protein for {goal}.",
             "Spreading protein across your meals supports recovery while you train for {goal}."),
        ),
    ),
    "hiking": _Topic(
        slots={
            "trail": ("the ridge trail", "the canyon loop", "the lakeside path", "the coastal walk",
                      "the forest trail", "the summit route"),
            "area": ("the national park", "the mountains", "the coast", "the lakes", "the high desert"),
            "kit": ("trekking poles", "a headlamp", "a water filter", "a rain shell", "a paper map"),
        },
        openers=(
            ("We hiked {trail} {when} and the views were incredible.",
             "{trail} sounds lovely! Did you start early to beat the heat?"),
            ("I'm planning a camping weekend near {area}.",
             "A weekend near {area} sounds great; check the campsite rules and the forecast before you go."),
            ("{friend} wants me to try {trail}, but it sounds steep.",
             "Steep trails like {trail} are fine at your own pace; take breaks and let {friend} lead."),
        ),
        follow_ups=(
            ("Do I really need {kit} for a day hike?",
             "Bringing {kit} is worth it on longer routes; the extra weight is tiny."),
            ("We saw a deer right on {trail}.",
             "Wildlife sightings are one of the best parts of being out near {area}."),
            ("My legs were jelly on the way down {trail}.",
             "Descents like {trail} are harder on the legs than people expect; shorter steps help a lot."),
            ("Is it safe to hike {trail} alone if I tell someone my route?",
             "Sharing your route on {trail} and your expected return time is the key safety step for solo hikes."),
            ("We got caught in the rain halfway up {trail}.",
             "Rain near {area} can come in fast; a packable layer makes it much more bearable."),
            ("I never know how much water to carry near {area}.",
             "About half a liter per hour of hiking near {area} is a good starting point, more in the heat."),
        ),
    ),
    "photography": _Topic(
        slots={
            "scene": ("street scenes", "portraits", "landscapes", "birds", "night skies", "old buildings"),
            "camera": ("film camera", "phone camera", "old DSLR", "mirrorless camera", "instant camera"),
            "spot": ("the riverside", "the market", "downtown", "the park", "the train station"),
        },
        openers=(
            ("I've gotten into taking photos of {scene} with my {camera}.",
             "With a {camera}, learning its limits is half the fun. {scene} are a great place to start."),
            ("I went out {when} to shoot {scene} around {spot}.",
             "{scene} around {spot} sound like a great subject; go back at different times of day."),
            ("{friend} asked me to take some photos at their party with my {camera}.",
             "Parties are great practice for a {camera}; candid shots usually end up being everyone's favorites."),
        ),
        follow_ups=(
            ("Most of my shots of {scene} come out a little blurry.",
             "Blurry {scene} usually come down to shutter speed; brace the {camera} or use a faster setting."),
            ("Is editing my {scene} cheating, or is that part of the craft?",
             "Editing has always been part of photography, and a light touch suits {scene} well."),
            ("Golden hour light makes {spot} look so much better.",
             "It really does; the low, warm light flatters {scene} around {spot}."),
            ("I'm nervous photographing strangers around {spot}.",
             "Asking permission first often gets you more natural portraits around {spot} than you'd think."),
            ("I can't decide whether to print my favorite {scene}.",
             "Printing your favorite {scene} makes you look at them differently, and it's worth doing."),
            ("My {camera} struggles in low light.",
             "A steady surface and a slower shutter can rescue a lot of low-light shots with a {camera}."),
        ),
    ),
}


def _say(rng: random.Random, template: str, slots: Mapping[str, str], tags: Sequence[str]) -> str:
    text = _capitalized(template.format(**slots))
    return f"{text} {rng.choice(tags)}" if rng.random() < _TAG_RATE else text


def _thread(rng: random.Random, topic: _Topic, exchanges: int) -> list[_Exchange]:
    slots = {name: rng.choice(pool) for name, pool in {**_SHARED_SLOTS, **topic.slots}.items()}
    # Sampling without replacement: no exchange repeats within a thread.
    chosen = [rng.choice(topic.openers), *rng.sample(topic.follow_ups, exchanges - 1)]
    return [(_say(rng, user, slots, _USER_TAGS), _say(rng, reply, slots, _ASSISTANT_TAGS)) for user, reply in chosen]


def _filler(rng: random.Random, exchanges: int) -> list[_Exchange]:
    out: list[_Exchange] = []
    recent: list[str] = []
    while len(out) < exchanges:
        name = rng.choice([t for t in _TOPICS if t not in recent])
        recent = [*recent, name][-_TOPIC_MEMORY:]
        out.extend(_thread(rng, _TOPICS[name], rng.randint(*_THREAD_EXCHANGES)))
    return out[:exchanges]


# --- probes and assembly ---------------------------------------------------------------


def _probes(rng: random.Random, facts: Sequence[_Fact], fact_turns: Sequence[int], n_turns: int) -> list[Probe]:
    probes = [
        Probe(n_turns, rng.choice(fact.questions), fact.value, (turn,), fact.kind)
        for fact, turn in zip(facts, fact_turns)
    ]
    # Mid-conversation probes land after an assistant turn (an even count of turns), as a
    # user's question would.
    first_at = [turn + _MIN_PROBE_DISTANCE + (turn + _MIN_PROBE_DISTANCE) % 2 for turn in fact_turns]
    eligible = [i for i, at in enumerate(first_at) if at < n_turns]
    for i in rng.sample(eligible, min(len(eligible), len(facts) // 2)):
        at = rng.randrange(first_at[i], n_turns, 2)
        probes.append(Probe(at, rng.choice(facts[i].questions), facts[i].value, (fact_turns[i],), facts[i].kind))
    return sorted(probes, key=lambda p: (p.at, p.evidence))


def generate(seed: int) -> Conversation:
    """One conversation, fully determined by `seed`.

    Use non-negative seeds: CPython seeds `Random` with abs(seed), so -n would repeat the
    conversation of n under another id.
    """
    rng = random.Random(seed)
    n_exchanges = rng.randint(*_EXCHANGES)
    facts = _draw_facts(rng)
    fact_at = dict(zip(_spread(rng, len(facts), n_exchanges - _QUIET_END_EXCHANGES), facts))
    filler = iter(_filler(rng, n_exchanges - len(facts)))
    exchanges = [(fact_at[i].statement, fact_at[i].ack) if i in fact_at else next(filler) for i in range(n_exchanges)]
    turns = tuple(
        Turn(index=2 * i + j, role=role, text=text)
        for i, pair in enumerate(exchanges)
        for j, (role, text) in enumerate(zip(("user", "assistant"), pair))
    )
    fact_turns = [2 * i for i in fact_at]
    probes = _probes(rng, list(fact_at.values()), fact_turns, len(turns))
    return Conversation(id=f"synthetic-{seed}", turns=turns, probes=tuple(probes))


def generate_many(n: int, seed: int = 0) -> list[Conversation]:
    """Conversations for seeds seed, seed + 1, ..., seed + n - 1."""
    return [generate(s) for s in range(seed, seed + n)]
