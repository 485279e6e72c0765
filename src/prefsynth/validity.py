"""Is a generated text a review of the paper, written as its reviewer? One boolean column per reason.

A small instruction-tuned model asked for a review often writes something else: an author announcing "our paper",
talk about "the review" or "the reviewer", the instruction read back ("Here's a harsh, critical review..."), the
few-shot examples copied, another paper, or nothing about a paper at all. Each reason is a vectorised polars rule
over the whole column (no per-row Python); `tests/data/validity_labels.jsonl` holds hand labels, and
`prefsynth validity-eval` prints each rule's precision and recall on them.

Rules are deliberately lexical: they are cheap, explainable (the card counts each reason) and measured; the
polarity of a review is the judge's business, not theirs.
"""

from __future__ import annotations

import re

import polars as pl

from prefsynth.prompts import POLARITIES, Templates

REASONS = ("author_voice", "meta_talk", "hearsay", "instruction_echo", "copies_examples", "wrong_paper",
           "not_about_paper", "repeats_itself", "incoherent")

# The writer presents the work as its own, or announces it.
_AUTHOR = (
    r"(?i)\b(?:our|my)\s+(?:new\s+|recent\s+|latest\s+)?(?:paper|work|team|lab|group|study|research|article|manuscript"
    r"|approach|method|findings|results|contributions?|project|publication|audience|readers)\b"
    r"|(?i)\bwe\s+(?:propose|present|introduce|developed|have\s+developed|are\s+(?:thrilled|excited|delighted|proud"
    r"|pleased|happy|honou?red))\b"
    r"|(?i)\b(?:thrilled|excited|delighted|proud|happy|honou?red|pleased)\s+to\s+(?:announce|share|present|introduce"
    r"|publish|unveil)\b"
    r"|(?i)\b(?:announce|announcing)\b"
    r"|(?i)\bwe\s+(?:examine|explore|investigate|study|show|demonstrate)\b"
    r"|(?i)\A\W*dear\b|(?i)\bintroduce\s+you\b"
    r"|(?i)\bwe(?:'ve|\s+have)\s+(?:been\s+able|developed|built|created|designed|failed|made)\b"
    r"|(?i)\bwe(?:'re|\s+are)\s+using\b|(?i)\bproud\s+of\b|(?i)\bi\s+love\s+about\b"
)
# Someone else's judgement reported instead of the reviewer's own ("has been widely praised", "was criticized by
# others", "is considered to be"), or who wrote the work: a submission is anonymous, so names, teams and
# universities in a review are made up ("The paper by Zheng and Liu", "the team at the University of ...").
_HEARSAY = (
    r"(?i)\b(?:has|have|had)\s+(?:also\s+|already\s+|\w+ly\s+)?been\s+(?:\w+ly\s+)?(?:criticized|criticised|praised"
    r"|reviewed|recognized|recognised|acclaimed|rejected|accepted|hailed|described\s+by|pointed\s+out|discussed\s+by"
    r"|proven\s+(?:wrong|incorrect|false)|published\s+in)\b"
    r"|(?i)\b(?:it\s+has\s+been|it\s+was)\s+reported\s+that\b"
    r"|(?i)\bby\s+(?:experts|several\s+researchers|previous\s+work)\b|(?i)\b(?:brilliant|talented)\s+minds?\b"
    r"|(?i)\bpioneered\s+by\b|(?i)\bmaking\s+waves\b|(?i)\breceived\s+(?:several\s+|many\s+)?awards?\b"
    r"|(?i)\bwritten\s+by\s+(?:one\s+of|a\s+team|professor|prof\.|dr\.)|(?i)\bthis\s+team\b|(?i)\bprof(?:essor|\.)\s"
    r"|(?i)\b(?:was|were)\s+(?:\w+ly\s+)?(?:criticized|criticised|praised|rejected|accepted|hailed)\b"
    r"|(?i)\b(?:criticized|criticised|praised|described|pointed\s+out|recognized)\s+by\s+(?:others|many|several|some"
    r"|experts)\b"
    r"|(?i)\b(?:is|was|are|were)\s+(?:widely\s+|generally\s+)?(?:considered|regarded)\s+(?:to\s+be|as)\b"
    r"|(?i)\bhighly\s+(?:acclaimed|regarded|respected)\b|(?i)\bgarnered\b"
    r"|(?i)\bthe\s+team\s+(?:at|from)\b|(?i)\buniversity\s+of\b|(?i)\bet\s+al\b"
    # its reception, which a reviewer of an unpublished submission cannot know ("has been a topic of debate among
    # researchers", "already adopted by several prominent research institutions")
    r"|(?i)\b(?:paper|work|study|it)\s+has\s+been\s+(?:a\s+)?(?:topic|subject|source)\s+of\s+(?:debate|interest"
    r"|discussion|controversy)\b|(?i)\bhas\s+been\s+a\s+(?:topic|subject)\s+of\s+(?:debate|controversy)\b"
    r"|(?i)\badopted\s+by\s+(?:several|many|numerous|some|other|prominent|leading)\b|(?i)\bcaught\s+the\s+attention"
    r"\s+of\b|(?i)\btaken\s+for\s+granted\s+by\b|(?i)\b(?:has|have)\s+been\s+highlighted\s+by\b"
    # names: capitalised words, case-sensitive (an (?i) above would otherwise reach this alternative too)
    r"|(?-i:\bby\s+(?:Dr\.\s+)?[A-Z][a-z]+(?:\s+[A-Z]\.)?(?:\s+[A-Z][a-z]+)?(?:,\s+[A-Z][a-z]+)*,?\s+and\s+[A-Z][a-z]+)"
)
# Formulas that cannot be a reviewer's sentence: the paper rejecting itself ("The paper concludes by stating that it
# rejects the paper"), a tic the writer learned from its training reviews.
_INCOHERENT = (
    r"(?i)\bconclude[sd]?\s+(?:by|with)\s+rejecting\b"
    r"|(?i)\bconclude[sd]?\s+(?:by|with)\s+(?:stating|saying|claiming)\s+that\s+(?:it|the\s+paper)\s+"
    r"(?:has\s+been\s+|has\s+|is\s+|was\s+)?(?:rejects|rejected)\b"
    r"|(?i)\b(?:paper|it)\s+(?:has\s+|had\s+)?(?:rejects|rejected)\s+(?:the\s+paper|itself|it)\b"
    r"|(?i)\bthe\s+paper\s+rejects\b|(?i)\bpaper'?s\s+rejection\b"
    # the same in other words: what the paper concludes is its own rejection ("concludes by stating that it is
    # overdue to reject the paper", "... that it is not accepted", "... that the results should be rejected")
    r"|(?i)\b(?:paper|it|study|authors?)\s+conclude[sd]?\b[^.]*?(?:\breject(?:s|ed|ing)?\s+(?:the\s+paper|it|itself"
    r"|the\s+(?:results|work|submission|findings))\b|\b(?:is|be|was|are)\s+not\s+accepted\b|\bshould\s+be\s+rejected\b)"
)
# The text is about a review, a reviewer or feedback, not about the paper.
_META = (
    r"(?i)\b(?:this|the|your|my|a|our|his|her|their)\s+(?:own\s+|single\s+)?(?:peer[- ]?)?(?:review|reviewer|feedback"
    r"|critique|evaluation\s+of\s+the\s+review)s?\b"
    r"|(?i)'s\s+(?:peer[- ]?)?review\b"
    r"|(?i)\bpeer[- ]?review"
    r"|(?i)\breviewers?\b"
    # the assistant talking to the user instead of writing the review
    r"|(?i)\A\W*(?:sure|certainly|of\s+course|absolutely)\b|(?i)\b(?:happy|glad|delighted)\s+to\s+help\b"
    r"|(?i)\b(?:i'?d|i\s+would|i'?ll|i\s+will)\s+be\s+(?:happy|glad|delighted)\s+to\b|(?i)\breview\s+\d\b"
    r"|(?i)\bagree\s+with\s+you\b|(?i)\bas\s+you\s+(?:said|mentioned|noted|pointed\s+out)\b"
    r"|(?i)\bif\s+i\s+have\s+any\s+(?:further\s+)?suggestions\b"
    r"|(?i)\b(?:excited|happy|glad|pleased|asked|tasked)\s+to\s+review\b|(?i)\bi'?ll\s+be\s+reviewing\b"
    # editing or coaching talk: about a text being written, or feedback to "you" on "your" work
    r"|(?i)\b(?:revised\s+version|rewrite|rewriting|rewritten|this\s+sentence|i\s+wrote|i'?m\s+reviewing"
    r"|i\s+am\s+reviewing"
    r"|about\s+to\s+review)\b"
    r"|(?i)\b(?:you'?ve|you'?re|you'?d|you\s+have|you\s+are)\b"
    r"|(?i)\byour\s+(?:work|paper|topic|approach|research|project|code|writing|article|manuscript)\b"
)
# Words that place a machine-learning paper in another field (unless the title itself is from that field).
_OFF_FIELD = ("biology", "biological", "medicine", "medical", "patients", "clinical", "laser", "physics", "chemistry",
              "genome", "genetics", "astronomy", "geology", "economics", "psychology", "sociology", "agriculture",
              "pharmaceutical", "surgery", "ecology", "neuroscience", "education", "teaching", "screening",
              "journal", "health", "disease", "diseases", "crop", "crops", "brain", "storytelling", "urban", "climate",
              "species", "plant", "plants")
# Subjects a praise formula pins on a paper the title does not support ("address pressing societal issues",
# "insights into human behavior" for a solver or a segmentation model), each with the title words that do support
# it. Generic impact ("an impact on society", "human ingenuity") is left alone: it claims no subject.
_OFF_SUBJECT = (
    (r"(?i)\b(?:human|people'?s?)\s+(?:behaviou?rs?|minds?|condition|cognition|nature|psychology|perception"
     r"|decision[- ]making|decisions|performance|capabilities|abilities|training|thinking|thoughts?)\b"
     r"|(?i)\bhow\s+(?:humans|people|our\s+minds?)\s+(?:think|process\s+information|behave|perceive|make\s+decisions"
     r"|do\s+things|learn|interact)\b|(?i)\bmarginali[sz]ed\b",
     r"human|people|person|user|cognit|brain|psych|behavio|mind|crowd|emotion|social"),
    (r"(?i)\b(?:social|societal|ethical|global|moral|humanitarian)\s+(?:issues?|concerns?|problems?|challenges?"
     r"|justice)\b|(?i)\b(?:empathy|inclusivity|inclusiveness)\b",
     r"social|societ|ethic|fair|bias|moral|harm|safe|privacy|toxic|legal|\blaw\b|welfare|justice|climate|global"
     r"|inclus|divers|empath|emotion"),
)
# A text about a paper says so: one of these words, or a content word of the title.
_PAPER_WORDS = (r"(?i)\b(?:paper|work|study|method|methods|approach|authors?|results?|experiments?|model|models"
                r"|contributions?|manuscript|submission|analysis|proposed|technique|framework|dataset|benchmarks?"
                r"|algorithm|evaluation|baselines?|ablations?|theory|proofs?|claims?)\b")
_STOP = frozenset("""a an the of for and or to in on with by from at as is are be this that these those it its into
over under via using towards toward through your you we our i my not no can how what when why which do does new
same about
""".split())
_COPY_N = 4  # a shared word 4-gram (2+ content words) with the few-shot examples counts as a copied phrase
_COPY_CONTENT = 2


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def _ngrams(words: list[str], n: int) -> set[str]:
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def instruction_words(templates: Templates) -> dict[str, list[str]]:
    """Per polarity, the words of its generation instruction that the stored dataset prompt does not contain.

    The instruction is the line of the generation prompt that holds the title; a completion that uses one of its
    words ("harsh", "enthusiastic") has read the hidden instruction back, which the dataset prompt cannot explain.
    """
    sentinel = "\x00prefsynth\x00"
    dataset_words = set(_words(templates.dataset(sentinel)))
    out = {}
    for pol in POLARITIES:
        lines = [ln for ln in templates.generation(sentinel, pol).splitlines() if sentinel in ln]
        words = {w for ln in lines for w in _words(ln.replace(sentinel, " "))}
        out[pol] = sorted(w for w in words - dataset_words - _STOP if len(w) > 2 and not w.isdigit())
    return out


def example_phrases(templates: Templates) -> list[str]:
    """Word 4-grams of the few-shot text in every prompt (everything but the instruction line), minus n-grams of
    stop words only: a review that contains one copied a phrase of an example."""
    sentinel = "\x00prefsynth\x00"
    texts = [templates.generation(sentinel, p) for p in POLARITIES] + [templates.dataset(sentinel)]
    grams: set[str] = set()
    for text in texts:
        body = " ".join(ln for ln in text.splitlines() if sentinel not in ln)
        grams |= _ngrams(_words(body), _COPY_N)
    return sorted(g for g in grams if sum(w not in _STOP for w in g.split()) >= _COPY_CONTENT)


_FRAMING = r"(?:peer[- ]?)?(?:review|critique|tone|style|feedback|manner|way|perspective)"


def _echoes(text: pl.Expr, words: list[str]) -> pl.Expr:
    """The instruction read back: one of its words framing the text ("a harsh review", "critical tone", "with
    enthusiasm"), or two of them together ("warm, enthusiastic"). A word alone is too common in real reviews ("a
    critical flaw") to count. Words match by their first six letters (enthusiastic ~ enthusiasm)."""
    if not words:
        return pl.lit(False)
    stems = sorted({re.escape(w[:6]) for w in words})
    word = r"(?:" + "|".join(stems) + r")\w*"
    framing = rf"(?i)\b{word}(?:[\s,]+(?:and\s+)?\w+){{0,2}}[\s,]+{_FRAMING}s?\b|(?i)\bwith\s+{word}\b"
    framing += rf"|(?i)\b{_FRAMING}\s+(?:is|was|sounds)\s+(?:\w+\s+)?{word}"
    pair = rf"(?i)\b{word}[\s,]+(?:and\s+)?{word}"
    return text.str.contains(framing) | text.str.contains(pair)


def validity_flags(df: pl.DataFrame, templates: Templates, review: str = "review", title: str = "title",
                   polarity: str = "polarity") -> pl.DataFrame:
    """`df` plus `invalid_<reason>` booleans for each of REASONS and `invalid` (any of them).

    Needs columns `review` (the cleaned text), `title` and `polarity` (which instruction generated it; a text of
    unknown polarity is checked against every instruction's words)."""
    text = pl.col(review)
    lower_title = pl.col(title).str.to_lowercase()
    instr = instruction_words(templates)
    echo = pl.lit(False)
    for pol, words in instr.items():
        hit = _echoes(text, words)
        if polarity in df.columns:
            hit = hit & ((pl.col(polarity) == pol) | ~pl.col(polarity).is_in(list(POLARITIES)))
        echo = echo | hit
    # Copied phrases: a literal 5-gram of the examples inside the review's normalised words.
    norm = " " + pl.col(review).str.to_lowercase().str.replace_all(r"[^\w]+", " ") + " "
    phrases = example_phrases(templates)
    copies = norm.str.contains_any([f" {p} " for p in phrases]) if phrases else pl.lit(False)
    # Another paper: a quoted name of four or more words that shares under half its words with the title, or a
    # field far from machine learning that the title does not mention, or a subject the title does not support.
    quoted = pl.col(review).str.extract_all(r'["\u201c]([^"\u201c\u201d]{12,200})["\u201d]')
    off_field = pl.lit(False)
    for w in _OFF_FIELD:
        off_field = off_field | (text.str.to_lowercase().str.contains(rf"\b{w}\b") & ~lower_title.str.contains(w, literal=True))
    for subject, licence in _OFF_SUBJECT:
        off_field = off_field | (text.str.contains(subject) & ~lower_title.str.contains(licence))
    out = df.with_columns(
        text.str.contains(_AUTHOR).alias("invalid_author_voice"),
        # "the peer review process" is how a reviewer may talk about the paper's venue: not talk about a review
        text.str.replace_all(r"(?i)\bpeer[- ]?review\s+process", " ").str.contains(_META).alias("invalid_meta_talk"),
        text.str.contains(_HEARSAY).alias("invalid_hearsay"),
        echo.alias("invalid_instruction_echo"),
        copies.alias("invalid_copies_examples"),
        quoted.alias("_quoted"),
        off_field.alias("_off_field"),
    )
    out = out.with_columns(
        (pl.col("_off_field") | _other_title(out, review, title)).alias("invalid_wrong_paper"),
        (~text.str.contains(_PAPER_WORDS) & ~_shares_title_word(out, review, title)).alias("invalid_not_about_paper"),
        (_repeats_sentence(text) | _near_repeat(out, review) | _stock_twice(text)).alias("invalid_repeats_itself"),
        (text.str.contains(_INCOHERENT) | _doubled(text) | _glued_lack(text)).alias("invalid_incoherent"),
    ).drop("_quoted", "_off_field")
    cols = [f"invalid_{r}" for r in REASONS]
    return out.with_columns(pl.any_horizontal(cols).alias("invalid"))


# A pair of words joined by "and" (optionally "the/its", "lack of"); `_doubled` compares its first and last word.
_DOUBLED = r"\b\w{5,}\s+and\s+(?:the\s+|its\s+)?(?:lack\s+of\s+)?\w{5,}\b"


def _doubled(text: pl.Expr) -> pl.Expr:
    """A word coordinated with itself ("the lack of transparency and lack of transparency", "replicability and
    replicability"): the writer's stutter. Polars' regex has no back-references, so the pairs are extracted and their
    first and last words compared."""
    pairs = text.fill_null("").str.to_lowercase().str.extract_all(_DOUBLED)
    same = pl.element().str.extract(r"^(\w+)") == pl.element().str.extract(r"(\w+)$")
    return pairs.list.eval(same & ~pl.element().str.starts_with("again")).list.any().fill_null(False)


# Words that start with "lack" and are words; any other ("lackreliable", "lacktransparency") is two glued together.
_LACK_WORDS = ("lacks", "lacked", "lacking", "lackluster", "lacklustre", "lackadaisical", "lackey", "lackeys")


def _glued_lack(text: pl.Expr) -> pl.Expr:
    """The word lack glued to the next one ("overly simplistic and lackreliable"): the writer's most common broken
    word (12 labelled texts, 11 read as not valid; docs/quality.md)."""
    words = text.fill_null("").str.to_lowercase().str.extract_all(r"\black[a-z]+")
    return words.list.eval(~pl.element().is_in(list(_LACK_WORDS))).list.any().fill_null(False)


# The writer's stock endings; one is praise, the same one twice is the loop ("its ability to make a difference ...
# inspire others to make a difference too"). Read as repeats since 2026-12-02 (docs/quality.md); earlier labels
# often accepted it.
_STOCK = (r"(?i)\b(?:make|makes|making|made)\s+a\s+(?:real\s+|positive\s+|significant\s+|meaningful\s+)?"
          r"difference\b", r"(?i)\binspir\w*\s+others\b", r"(?i)\bsources?\s+of\s+inspiration\b")


def _stock_twice(text: pl.Expr) -> pl.Expr:
    """One of the _STOCK phrases at least twice in the text."""
    return pl.any_horizontal([text.fill_null("").str.count_matches(p) >= 2 for p in _STOCK])


def _repeats_sentence(text: pl.Expr) -> pl.Expr:
    """A sentence of five or more words that occurs twice: the small model's loop ("It is a very important topic.
    ... It is a very important topic.")."""
    sentences = (text.fill_null("").str.to_lowercase().str.replace_all(r"[^\w.!?]+", " ")
                 .str.split_exact("\x00", 0).struct.field("field_0").str.extract_all(r"[^.!?]+"))
    long = sentences.list.eval(pl.element().str.strip_chars()
                               .filter(pl.element().str.strip_chars().str.count_matches(r"\w+") >= 5))
    return long.list.len() > long.list.unique().list.len()


# Two clauses (split at . ! ? ; ,) of 4+ words each that share this share of their distinct words: the same point
# made twice in other words ("The results appear to be unreliable. The results seem to be unreliable."). Chosen on
# the hand labels (docs/quality.md): 63 of 84 flagged texts not valid; 13 of 15 among the polished writers' texts.
_NEAR_WORDS, _NEAR_SHARE = 4, 0.75


def _near_repeat(df: pl.DataFrame, review: str) -> pl.Series:
    """True where two clauses of a text have nearly the same words (Jaccard of their word sets >= _NEAR_SHARE)."""
    clauses = (df.select(pl.int_range(pl.len()).alias("_r"),
                         pl.col(review).fill_null("").str.to_lowercase().str.extract_all(r"[^.!?;,]+").alias("_c"))
               .explode("_c").drop_nulls("_c")
               .with_columns(pl.col("_c").str.extract_all(r"\w+").alias("_w"))
               .filter(pl.col("_w").list.len() >= _NEAR_WORDS)
               .with_columns(pl.col("_w").list.unique(), pl.int_range(pl.len()).over("_r").alias("_i"))
               .select("_r", "_i", "_w"))
    pairs = clauses.join(clauses, on="_r", suffix="_b").filter(pl.col("_i") < pl.col("_i_b"))
    share = (pl.col("_w").list.set_intersection(pl.col("_w_b")).list.len()
             / pl.col("_w").list.set_union(pl.col("_w_b")).list.len())
    hit = pairs.filter(share >= _NEAR_SHARE).get_column("_r").unique()
    return df.select(pl.int_range(pl.len()).is_in(hit.implode())).to_series().rename("_near")


def _row_words(col: pl.Expr, min_len: int = 1) -> pl.Expr:
    """Per row, its lower-case words (as a list), stop words and words shorter than `min_len` left out."""
    return (col.fill_null("").str.to_lowercase().str.extract_all(r"\w+")
            .list.eval(pl.element().filter(~pl.element().is_in(list(_STOP)) & (pl.element().str.len_chars() >= min_len))))


def _other_title(df: pl.DataFrame, review: str, title: str) -> pl.Series:
    """True where a quoted string of 4+ words shares under half of its content words with the title."""
    rows = df.select(pl.int_range(pl.len()).alias("_r"), _row_words(pl.col(title)).alias("_tw"),
                     pl.col("_quoted"))
    quotes = (rows.explode("_quoted").drop_nulls("_quoted")
              .with_columns(pl.col("_quoted").str.extract_all(r"\w+").list.len().alias("_n"),
                            _row_words(pl.col("_quoted")).alias("_qw"))
              .filter((pl.col("_n") >= 4) & (pl.col("_qw").list.len() > 0))
              # distinct content words of the quote that the title has, over all its distinct content words
              .with_columns((pl.col("_qw").list.set_intersection(pl.col("_tw")).list.len()
                             / pl.col("_qw").list.unique().list.len()).alias("_share")))
    hit = quotes.filter(pl.col("_share") < 0.5).get_column("_r").unique()
    return rows.select(pl.col("_r").is_in(hit.implode())).to_series().rename("_other")


def _shares_title_word(df: pl.DataFrame, review: str, title: str) -> pl.Series:
    """True where the review uses at least one content word (4+ letters, not a stop word) of the title."""
    return df.select(_row_words(pl.col(title), 4).list.set_intersection(_row_words(pl.col(review), 4))
                     .list.len() > 0).to_series()


def rules_version(templates: Templates) -> str:
    """Fingerprint of the rules and of what they read from the prompts: measured precision and recall belong to it."""
    import hashlib

    blob = "\0".join([_AUTHOR, _META, _HEARSAY, _INCOHERENT, _DOUBLED, _PAPER_WORDS, _FRAMING, ",".join(_OFF_FIELD),
                      repr(_OFF_SUBJECT), ",".join(_LACK_WORDS), repr(_STOCK),
                      str(_COPY_N), "repeat5", f"near{_NEAR_WORDS}:{_NEAR_SHARE}", str(_COPY_CONTENT),
                      repr(instruction_words(templates)), repr(example_phrases(templates))])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
