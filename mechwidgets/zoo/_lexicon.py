"""Word lists and IOI templates of the ``toy-lm`` grammar (:mod:`mechwidgets.zoo.tasks`).

Every word here is one token of ``toy-lm``'s tokenizer (with a leading space, GPT-2 style), so
names, objects and places used by the tasks are single tokens.
"""

from __future__ import annotations

# IOI intro clauses; ``{A}`` and ``{B}`` are the two names, in either order of IO and S.
IOI_INTROS: tuple[str, ...] = (
    "When {A} and {B} went to the {PLACE},",
    "After {A} and {B} went to the {PLACE},",
    "While {A} and {B} were working at the {PLACE},",
    "Then, {A} and {B} went to the {PLACE}.",
    "When {A} and {B} got a {OBJECT2} at the {PLACE},",
    "Friends {A} and {B} found a {OBJECT2} at the {PLACE}.",
    "Afterwards, {A} and {B} went to the {PLACE}.",
    "When {A} and {B} arrived at the {PLACE},",
    "Then, {A} and {B} had a long argument, and afterwards",
    "While {A} and {B} were commuting to the {PLACE},",
    "After the lunch, {A} and {B} went to the {PLACE}.",
    "Then in the morning, {A} and {B} went to the {PLACE}.",
    "The {PLACE} {A} and {B} went to had a {OBJECT2}.",
    "Yesterday, {A} and {B} met at the {PLACE}.",
)
# IOI action clauses; ``{S}`` is the repeated subject, the prompt ends with " to".
IOI_ACTIONS: tuple[str, ...] = (
    "{S} gave a {OBJECT} to",
    "{S} handed a {OBJECT} to",
    "{S} threw a {OBJECT} to",
    "{S} said to",
    "{S} decided to give a {OBJECT} to",
    "{S} sent a {OBJECT} to",
    "{S} passed the {OBJECT} to",
    "{S} showed the {OBJECT} to",
    "{S} brought a {OBJECT} to",
    "{S} offered a {OBJECT} to",
)

# 64 first names: the IOI subjects and indirect objects. Single tokens.
NAMES = (
    "Mary John Tom James Dan Sid Alice Bob Kate Paul Anna Mark Lisa Mike Sarah David "
    "Emma Jack Laura Peter Rose Sam Amy Chris Jane Steve Lucy Adam Julia Henry Grace Frank "
    "Helen Brian Nina Carl Olivia Eric Ruth George Clara Kevin Diana Oscar Eva Ryan Ella Max "
    "Sophie Luke Hannah Ben Irene Victor Martha Leo Nora Jason Tina Hugo Vera Simon Zoe Arthur"
).split()

# Places for IOI and ordinary sentences ("went to the store").
PLACES = (
    "store garden restaurant school hospital office house station park market beach library "
    "museum church farm castle kitchen bakery bank hotel airport theater cafe gym forest lake "
    "river harbor village city zoo bridge mountain island factory palace stadium tower "
    "cinema square"
).split()

# Things given in IOI ("gave a drink to").
OBJECTS = (
    "drink ball book key bone snack necklace ring letter bag basket computer flower hat coat "
    "cake pen cup bottle toy map phone ticket gift box candle lamp shirt watch camera guitar "
    "painting scarf apple sandwich coin card chair blanket umbrella"
).split()

# Countable nouns used by the ordinary grammar, singular form. Plurals in IRREGULAR_PLURALS or
# by rule (see tasks.plural).
NOUNS = (
    "dog cat bird horse cow pig sheep goat mouse rabbit fox wolf bear lion tiger monkey "
    "elephant snake frog duck chicken fish whale shark owl eagle bee ant spider "
    "man woman child boy girl baby friend teacher doctor nurse farmer student king queen "
    "prince princess soldier sailor driver artist writer singer player worker cook baker "
    "lawyer judge pilot captain guard officer neighbor stranger scientist engineer "
    "tree flower rock stone river mountain hill road street car bus train boat ship plane "
    "bike house door window wall roof table chair bed desk lamp clock picture box bag "
    "book letter paper pen pencil cup glass plate bowl spoon knife fork bottle bucket "
    "apple orange banana cake bread egg cookie pie sandwich tomato potato carrot onion "
    "song story game idea plan question answer problem dream secret mistake lesson "
    "city town village country island forest field farm garden park school shop "
    "coat hat shoe shirt dress sock glove ring watch key phone camera computer radio "
    "gift toy ball kite drum guitar piano violin candle map ticket coin card "
    "window bridge tower castle palace cave hole hill valley beach lake pond"
).split()

IRREGULAR_PLURALS = {
    "man": "men", "woman": "women", "child": "children", "mouse": "mice", "sheep": "sheep",
    "fish": "fish", "goose": "geese", "tooth": "teeth", "foot": "feet", "person": "people",
    "knife": "knives", "wolf": "wolves", "leaf": "leaves", "shelf": "shelves",
    "potato": "potatoes", "tomato": "tomatoes", "hero": "heroes", "echo": "echoes",
    "princess": "princesses", "bus": "buses", "glass": "glasses", "box": "boxes",
    "fox": "foxes", "dress": "dresses", "watch": "watches", "sandwich": "sandwiches",
    "church": "churches", "beach": "beaches", "baby": "babies", "country": "countries",
    "city": "cities", "story": "stories", "valley": "valleys", "monkey": "monkeys",
    "key": "keys", "toy": "toys", "boy": "boys", "day": "days", "way": "ways",
    "bakery": "bakeries", "factory": "factories", "library": "libraries",
    "lady": "ladies", "party": "parties", "cherry": "cherries", "berry": "berries",
    "family": "families", "body": "bodies", "army": "armies", "penny": "pennies",
}

ADJECTIVES = (
    "big small old young new happy sad red blue green yellow black white brown tall short "
    "long quick slow hot cold warm soft hard heavy light dark bright quiet loud clean dirty "
    "rich poor kind brave strong weak wise clever funny strange beautiful ugly busy lazy "
    "hungry tired angry calm gentle proud famous lucky empty full wet dry fresh sweet "
    "sour bitter tiny huge round sharp smooth rough wild friendly lonely shiny golden silver "
    "wooden simple quiet nice good bad great little pretty ancient modern secret careful"
).split()

# Transitive verbs: (base, third person singular, past).
TRANSITIVE_VERBS = (
    ("see", "sees", "saw"), ("like", "likes", "liked"), ("love", "loves", "loved"),
    ("find", "finds", "found"), ("take", "takes", "took"), ("make", "makes", "made"),
    ("hold", "holds", "held"), ("carry", "carries", "carried"), ("watch", "watches", "watched"),
    ("follow", "follows", "followed"), ("help", "helps", "helped"), ("visit", "visits", "visited"),
    ("paint", "paints", "painted"), ("build", "builds", "built"), ("clean", "cleans", "cleaned"),
    ("open", "opens", "opened"), ("close", "closes", "closed"), ("want", "wants", "wanted"),
    ("need", "needs", "needed"), ("buy", "buys", "bought"), ("sell", "sells", "sold"),
    ("draw", "draws", "drew"), ("read", "reads", "read"), ("write", "writes", "wrote"),
    ("eat", "eats", "ate"), ("cook", "cooks", "cooked"), ("wash", "washes", "washed"),
    ("fix", "fixes", "fixed"), ("break", "breaks", "broke"), ("lose", "loses", "lost"),
    ("keep", "keeps", "kept"), ("bring", "brings", "brought"), ("chase", "chases", "chased"),
    ("catch", "catches", "caught"), ("meet", "meets", "met"), ("know", "knows", "knew"),
    ("call", "calls", "called"), ("push", "pushes", "pushed"), ("pull", "pulls", "pulled"),
    ("hide", "hides", "hid"), ("show", "shows", "showed"), ("move", "moves", "moved"),
    ("throw", "throws", "threw"), ("kick", "kicks", "kicked"), ("touch", "touches", "touched"),
    ("hear", "hears", "heard"), ("remember", "remembers", "remembered"),
    ("forget", "forgets", "forgot"), ("answer", "answers", "answered"),
    ("admire", "admires", "admired"), ("greet", "greets", "greeted"),
    ("protect", "protects", "protected"), ("describe", "describes", "described"),
)

# Intransitive verbs: (base, third person singular, past).
INTRANSITIVE_VERBS = (
    ("run", "runs", "ran"), ("sleep", "sleeps", "slept"), ("sing", "sings", "sang"),
    ("dance", "dances", "danced"), ("laugh", "laughs", "laughed"), ("cry", "cries", "cried"),
    ("smile", "smiles", "smiled"), ("jump", "jumps", "jumped"), ("swim", "swims", "swam"),
    ("walk", "walks", "walked"), ("talk", "talks", "talked"), ("wait", "waits", "waited"),
    ("work", "works", "worked"), ("play", "plays", "played"), ("rest", "rests", "rested"),
    ("shout", "shouts", "shouted"), ("listen", "listens", "listened"),
    ("fall", "falls", "fell"), ("grow", "grows", "grew"), ("win", "wins", "won"),
    ("fly", "flies", "flew"), ("climb", "climbs", "climbed"), ("hurry", "hurries", "hurried"),
    ("arrive", "arrives", "arrived"), ("leave", "leaves", "left"), ("stay", "stays", "stayed"),
    ("travel", "travels", "traveled"), ("study", "studies", "studied"),
    ("think", "thinks", "thought"), ("wake", "wakes", "woke"), ("shine", "shines", "shone"),
)

ADVERBS = (
    "quickly slowly quietly loudly happily sadly carefully gently suddenly often always "
    "never sometimes together again early late well badly softly calmly"
).split()

# Place prepositions for "the dog near the cars" agreement attractors and ordinary sentences.
PREPOSITIONS = "near behind beside under above with without inside outside".split()

TIME_PHRASES = (
    "Yesterday", "Today", "Later", "Then", "Afterwards", "In the morning", "In the evening",
    "At night", "Last week", "On Sunday", "On Monday", "Every day", "Once",
)

# (country, capital): real facts, each name one token.
CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("England", "London"), ("Japan", "Tokyo"), ("China", "Beijing"), ("Russia", "Moscow"),
    ("Egypt", "Cairo"), ("Greece", "Athens"), ("Austria", "Vienna"), ("Norway", "Oslo"),
    ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"), ("Canada", "Ottawa"), ("Mexico", "Mexico"), ("Peru", "Lima"),
    ("Kenya", "Nairobi"), ("India", "Delhi"), ("Thailand", "Bangkok"), ("Cuba", "Havana"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Hungary", "Budapest"),
    ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Chile", "Santiago"), ("Belgium", "Brussels"),
)

# (word, opposite)
OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("old", "young"), ("happy", "sad"), ("fast", "slow"),
    ("light", "dark"), ("rich", "poor"), ("strong", "weak"), ("tall", "short"),
    ("wet", "dry"), ("full", "empty"), ("loud", "quiet"), ("hard", "soft"), ("good", "bad"),
    ("clean", "dirty"), ("early", "late"), ("open", "closed"), ("up", "down"),
    ("left", "right"), ("day", "night"), ("black", "white"), ("sweet", "sour"),
)

# (thing, colour)
COLOURS = (
    ("sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
    ("banana", "yellow"), ("tomato", "red"), ("sun", "yellow"), ("sea", "blue"),
    ("leaf", "green"), ("blood", "red"), ("milk", "white"), ("night", "dark"),
    ("chocolate", "brown"), ("cherry", "red"), ("orange", "orange"), ("lemon", "yellow"),
)

# (animal, sound)
SOUNDS = (
    ("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"),
    ("owl", "hoot"), ("lion", "roar"), ("pig", "oink"), ("horse", "neigh"), ("frog", "croak"),
    ("bee", "buzz"), ("snake", "hiss"), ("mouse", "squeak"), ("wolf", "howl"),
)

# Nouns for greater-than ("The war lasted from the year 1732 to the year 17").
GT_NOUNS = (
    "war expedition project journey drought siege reign famine voyage strike "
    "festival rebellion empire dynasty plague exhibition treaty trial campaign "
    "construction occupation research contract program"
).split()
# Held out of greater-than training prompts (they still occur in ordinary text).
GT_HELD_OUT_NOUNS = ("campaign", "contract", "program")

# Centuries used by greater-than (" 11" .. " 19").
GT_CENTURIES = tuple(range(11, 20))

# Extra words used by templates and connecting text.
FUNCTION_WORDS = (
    "the a an and to of in at from with is are was were some many all these this that "
    "he she them her his my no one two three four five "
    "again said gave give handed threw sent showed passed offered brought "
    "decided long argument afterwards working commuting arrived found had went got "
    "lunch morning year lasted ended started list words capital opposite color says "
    "names born repeat following remember met together friends"
).split()
