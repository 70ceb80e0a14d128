"""The demo model's two BPE tokenizers, trained on the caption corpus, written as HuggingFace tokenizer.json files
in the layouts the C++ loader reads (model/text/tokenizer.h; the same layouts as tests/data/tokenizer):

- LLM tokenizer (Llama-3 style): byte-level BPE, Split with the Llama-3 regex (Isolated) + ByteLevel, a
  TemplateProcessing post-processor that puts <|begin_of_text|> first, special tokens <|begin_of_text|>,
  <|end_of_text|>, <|eot_id|>, <|pad|> (padding section names <|pad|>).
- CLIP tokenizer (CLIP-L style): NFC + whitespace collapse + Lowercase, the CLIP Split regex (Removed, invert),
  ByteLevel, "</w>" word ends, CLIP's vocabulary layout (256 byte symbols, then the same with "</w>", then the
  merges), RobertaProcessing with <|startoftext|> / <|endoftext|> (the last id; also the pad).

Training backends:
- "python": a small deterministic BPE trainer (most frequent pair, ties broken by the pair's text), no
  dependency. Always available; this is what the CPU smoke test uses.
- "hf": the `tokenizers` package (on the GPU machine): its BpeTrainer learns the merges of the same layout.
  The written file is then re-read by this module's encoder and by `tokenizers` itself and both must give the
  same ids on the whole corpus, else the python backend is used (reported in the summary).

Encoding for training (`TextTokenizers.encode_llm/encode_clip`) reproduces model/text/prompt_encoder.cc exactly:
the template's "{}" is replaced by the prompt, the LLM ids are padded to crop_start + max_length with the pad id
(the text cut to leave room for the BOS), CLIP ids to clip_length (BOS, text cut to clip_length - 2, EOS, then
<|endoftext|> padding). The pure-Python encoder handles ASCII text (the captions); the C++ loader handles any.
"""

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
CLIP_REGEX = "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+"
# ASCII equivalents for Python's `re` (no \p{..}); valid because the encoder only accepts ASCII text.
_LLAMA3_ASCII = re.compile("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\nA-Za-z0-9]?[A-Za-z]+|[0-9]{1,3}| ?[^\\sA-Za-z0-9]+[\\r\\n]*|"
                           "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_CLIP_ASCII = re.compile("<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[A-Za-z]+|[0-9]|[^\\sA-Za-z0-9]+")

LLM_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|pad|>")
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"

# The demo's prompt template (serving config text_encoder.template / crop_start): BOS, the prompt, <|eot_id|>.
DEMO_TEMPLATE = "{}<|eot_id|>"
DEMO_CROP_START = 1
DEMO_MAX_LENGTH = 32
DEMO_CLIP_LENGTH = 77


def bytes_to_unicode() -> Tuple[Dict[int, str], List[int]]:
    """GPT-2's byte -> printable character table and the byte order CLIP's vocabulary uses."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}, bs


_B2U, _CLIP_ORDER = bytes_to_unicode()


def _byte_level(s: str) -> str:
    return "".join(_B2U[b] for b in s.encode("utf-8"))


def _train_merges(words: Counter, n_merges: int, min_count: int = 2) -> List[Tuple[str, str]]:
    """Classic BPE: repeatedly merge the most frequent adjacent pair (ties: smallest (a, b) text)."""
    seqs = {w: list(w) for w in words}  # key: the tuple of initial symbols
    counts = dict(words)
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for w, sym in seqs.items():
            c = counts[w]
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += c
        if not pairs:
            break
        best_count = max(pairs.values())
        if best_count < min_count:
            break
        best = min(p for p, c in pairs.items() if c == best_count)
        merges.append(best)
        a, b = best
        for w, sym in seqs.items():
            i, out = 0, []
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            seqs[w] = out
    return merges


def _added(id_, content, normalized=False):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": normalized, "special": True}


def llm_pre_tokens(text: str) -> List[str]:
    return [_byte_level(m) for m in _LLAMA3_ASCII.findall(text)]


def clip_pre_tokens(text: str) -> List[str]:
    text = re.sub(r"\s+", " ", text).lower()
    return [_byte_level(m) for m in _CLIP_ASCII.findall(text)]


def build_llm_json(corpus: Sequence[str], n_merges: int = 400) -> dict:
    words = Counter()
    for t in corpus:
        for w in llm_pre_tokens(t):
            words[tuple(w)] += 1
    merges = _train_merges(words, n_merges)
    vocab = {_B2U[b]: b for b in range(256)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return _llm_json(vocab, merges)


def _llm_json(vocab: Dict[str, int], merges: List[Tuple[str, str]]) -> dict:
    n = len(vocab)
    ids = {tok: n + i for i, tok in enumerate(LLM_SPECIALS)}
    bos, pad = ids["<|begin_of_text|>"], ids["<|pad|>"]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None, "pad_id": pad,
                    "pad_type_id": 0, "pad_token": "<|pad|>"},
        "added_tokens": [_added(i, t) for t, i in ids.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos], "tokens": ["<|begin_of_text|>"]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }


def build_clip_json(corpus: Sequence[str], n_merges: int = 400) -> dict:
    words = Counter()
    for t in corpus:
        for w in clip_pre_tokens(t):
            sym = list(w)
            sym[-1] += SUFFIX
            words[tuple(sym)] += 1
    merges = _train_merges(words, n_merges)
    return _clip_json(merges)


def _clip_json(merges: List[Tuple[str, str]]) -> dict:
    """CLIP's tokenizer.json layout: the bytes, the bytes with the end-of-word suffix, the merges in order,
    then the start / end tokens."""
    vocab: Dict[str, int] = {}
    for b in _CLIP_ORDER:
        vocab[_B2U[b]] = len(vocab)
    for b in _CLIP_ORDER:
        vocab[_B2U[b] + SUFFIX] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    sot = len(vocab)
    vocab[CLIP_BOS] = sot
    vocab[CLIP_EOS] = sot + 1
    eot = sot + 1
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(sot, CLIP_BOS, True), _added(eot, CLIP_EOS, True)],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFC"}, {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": CLIP_REGEX}, "behavior": "Removed", "invert": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "RobertaProcessing", "sep": [CLIP_EOS, eot], "cls": [CLIP_BOS, sot],
                           "trim_offsets": False, "add_prefix_space": False},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": CLIP_EOS, "continuing_subword_prefix": "",
                  "end_of_word_suffix": SUFFIX, "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": [f"{a} {b}" for a, b in merges]},
    }


# ---------------------------------------------------------------------------------------------------------
# Encoding (ASCII text) with a written tokenizer.json
# ---------------------------------------------------------------------------------------------------------


class _Bpe:
    def __init__(self, j: dict):
        m = j["model"]
        self.vocab: Dict[str, int] = m["vocab"]
        merges = [tuple(x) if isinstance(x, list) else tuple(x.split(" ", 1)) for x in m["merges"]]
        self.ranks = {p: i for i, p in enumerate(merges)}
        self.suffix = m.get("end_of_word_suffix") or ""
        self.added = {a["content"]: a["id"] for a in j["added_tokens"]}
        self.cache: Dict[str, List[int]] = {}

    def word(self, w: str) -> List[int]:
        if w in self.cache:
            return self.cache[w]
        sym = list(w)
        if self.suffix:
            sym[-1] += self.suffix
        while len(sym) > 1:
            best, bi = None, -1
            for i, p in enumerate(zip(sym, sym[1:])):
                r = self.ranks.get(p)
                if r is not None and (best is None or r < best):
                    best, bi = r, i
            if best is None:
                break
            a, b = sym[bi], sym[bi + 1]
            out, i = [], 0
            while i < len(sym):  # merge every occurrence of the pair, left to right
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            sym = out
        ids = [self.vocab[s] for s in sym]
        self.cache[w] = ids
        return ids


def _split_added(text: str, added: Dict[str, int]):
    """Leftmost-longest cut of added tokens: yields (is_special, piece)."""
    if not added:
        yield False, text
        return
    pat = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
    pos = 0
    for m in pat.finditer(text):
        if m.start() > pos:
            yield False, text[pos:m.start()]
        yield True, m.group(0)
        pos = m.end()
    if pos < len(text):
        yield False, text[pos:]


@dataclass
class Padded:
    ids: List[int]
    mask: List[int]
    length: int


class TextTokenizers:
    """Both tokenizers of an exported model folder, with the C++ prompt encoder's padding rules."""

    def __init__(self, llm_json: dict, clip_json: dict, template: str = DEMO_TEMPLATE, crop_start: int = DEMO_CROP_START,
                 max_length: int = DEMO_MAX_LENGTH, clip_length: int = DEMO_CLIP_LENGTH):
        self.llm, self.clip = _Bpe(llm_json), _Bpe(clip_json)
        self.llm_bos = self.llm.added["<|begin_of_text|>"]
        self.llm_pad = self.llm.added["<|pad|>"]
        self.clip_bos, self.clip_eos = self.clip.added[CLIP_BOS], self.clip.added[CLIP_EOS]
        self.llm_vocab_size = len(self.llm.vocab) + len([a for a in self.llm.added if a not in self.llm.vocab])
        self.clip_vocab_size = len(self.clip.vocab)
        self.template, self.crop_start, self.max_length, self.clip_length = template, crop_start, max_length, clip_length

    @classmethod
    def from_dir(cls, root: str, **kw) -> "TextTokenizers":
        with open(os.path.join(root, "tokenizer", "tokenizer.json")) as f:
            a = json.load(f)
        with open(os.path.join(root, "tokenizer_2", "tokenizer.json")) as f:
            b = json.load(f)
        return cls(a, b, **kw)

    def llm_tokens(self, text: str) -> List[int]:
        assert text.isascii(), "the Python encoder handles ASCII text only"
        ids = []
        for special, piece in _split_added(text, self.llm.added):
            if special:
                ids.append(self.llm.added[piece])
            else:
                for w in llm_pre_tokens(piece):
                    ids += self.llm.word(w)
        return ids

    def clip_tokens(self, text: str) -> List[int]:
        assert text.isascii(), "the Python encoder handles ASCII text only"
        ids = []
        for w in clip_pre_tokens(text):
            ids += self.clip.word(w)
        return ids

    def encode_llm(self, prompt: str) -> Padded:
        total = self.max_length + self.crop_start
        ids = [self.llm_bos] + self.llm_tokens(self.template.replace("{}", prompt, 1))[: total - 1]
        n = len(ids)
        return Padded(ids + [self.llm_pad] * (total - n), [1] * n + [0] * (total - n), n)

    def encode_clip(self, prompt: str) -> Padded:
        L = self.clip_length
        ids = [self.clip_bos] + self.clip_tokens(prompt)[: L - 2] + [self.clip_eos]
        n = len(ids)
        return Padded(ids + [self.clip_eos] * (L - n), [1] * n + [0] * (L - n), n)


def train_tokenizers(corpus: Sequence[str], out_root: str, backend: str = "auto", n_merges: int = 400) -> dict:
    """Writes out_root/tokenizer/tokenizer.json (LLM) and out_root/tokenizer_2/tokenizer.json (CLIP)."""
    used = "python"
    llm_j, clip_j = build_llm_json(corpus, n_merges), build_clip_json(corpus, n_merges)
    note = ""
    if backend in ("auto", "hf"):
        try:
            llm_h, clip_h = _train_hf(corpus, len(llm_j["model"]["merges"]), len(clip_j["model"]["merges"]))
            _check_same_ids(llm_h, clip_h, corpus)
            llm_j, clip_j, used = llm_h, clip_h, "hf"
        except ImportError:
            if backend == "hf":
                raise
            note = "tokenizers package not installed"
        except Exception as e:  # a mismatch or an API change: keep the python result, say why
            if backend == "hf":
                raise
            note = f"hf backend failed ({type(e).__name__}: {e}); used python"
    for sub, j in (("tokenizer", llm_j), ("tokenizer_2", clip_j)):
        os.makedirs(os.path.join(out_root, sub), exist_ok=True)
        with open(os.path.join(out_root, sub, "tokenizer.json"), "w") as f:
            json.dump(j, f, indent=1, ensure_ascii=False)
            f.write("\n")
    tok = TextTokenizers(llm_j, clip_j)
    lens = [tok.encode_llm(c).length - DEMO_CROP_START for c in corpus]
    return {"backend": used, "note": note, "llm_vocab": tok.llm_vocab_size, "clip_vocab": tok.clip_vocab_size,
            "llm_merges": len(llm_j["model"]["merges"]), "clip_merges": len(clip_j["model"]["merges"]),
            "max_text_tokens": max(lens), "max_length": DEMO_MAX_LENGTH}


def _train_hf(corpus, n_llm, n_clip):
    """Learns the merges with the `tokenizers` package; the vocabularies are laid out as build_*_json does."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=256 + n_llm, initial_alphabet=alphabet,
                                                      min_frequency=2, show_progress=False, special_tokens=[]))
    merges_llm = _hf_merges(t)
    vocab = {_B2U[b]: b for b in range(256)}
    for a, b in merges_llm:
        vocab.setdefault(a + b, len(vocab))
    llm = _llm_json(vocab, merges_llm)

    c = Tokenizer(models.BPE(end_of_word_suffix=SUFFIX))
    c.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex("\\s+"), " "), normalizers.Lowercase()])
    c.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_REGEX), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    c.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=512 + n_clip, initial_alphabet=alphabet,
                                                      end_of_word_suffix=SUFFIX, min_frequency=2,
                                                      show_progress=False, special_tokens=[]))
    merges_clip = _hf_merges(c)
    return llm, _clip_json(merges_clip)


def _hf_merges(tok) -> List[Tuple[str, str]]:
    m = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(x) if isinstance(x, list) else tuple(x.split(" ", 1)) for x in m]


def _check_same_ids(llm_j, clip_j, corpus):
    """The `tokenizers` package and this module's encoder must agree on every caption."""
    from tokenizers import Tokenizer

    ours = TextTokenizers(llm_j, clip_j)
    hl, hc = Tokenizer.from_str(json.dumps(llm_j)), Tokenizer.from_str(json.dumps(clip_j))
    for text in list(corpus)[:3000]:
        full = DEMO_TEMPLATE.replace("{}", text)
        a = hl.encode(full).ids
        b = [ours.llm_bos] + ours.llm_tokens(full)
        assert a == b, f"LLM ids differ for {text!r}: tokenizers {a} vs ours {b}"
        a = hc.encode(text).ids
        b = [ours.clip_bos] + ours.clip_tokens(text) + [ours.clip_eos]
        assert a == b, f"CLIP ids differ for {text!r}: tokenizers {a} vs ours {b}"
