// Writes the two small tokenizer fixtures of tests/test_tokenizer.cc and their golden ids:
//   tests/data/tokenizer/small_bpe/  a byte-level BPE with the Llama-3 pre-tokenizer, 300 merges learned on
//                                    corpus.mjs trainingText(), ignore_merges false, BOS+EOS template, [a,b] merges
//   tests/data/tokenizer/clip_tiny/  a CLIP-style BPE (NFC, whitespace collapse, lower case, CLIP regex,
//                                    "</w>" word ends, CLIP's vocabulary layout and RobertaProcessing)
// The golden ids come from reference_bpe.mjs, not from the C++ code under test.
// Usage: node tools/tokenizer/make_small.mjs [OUT_DIR]   (default tests/data/tokenizer)
import fs from 'node:fs';
import path from 'node:path';

import { clipCorpus, smallCorpus, trainingText } from './corpus.mjs';
import {
  ReferenceBpe, byteLevel, bytesToUnicode, jsRegex, kClipRegex, kLlama3Regex, splitIsolated, splitMatches, trainMerges,
} from './reference_bpe.mjs';

const outDir = process.argv[2] || 'tests/data/tokenizer';

function countWords(words, toSymbols) {
  const counts = new Map();
  for (const w of words) counts.set(w, (counts.get(w) || 0) + 1);
  return [...counts.keys()].sort().map((w) => [toSymbols(w), counts.get(w)]);
}

function writeJson(file, value) {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(value, null, 1) + '\n');
}

// One case a line, so a diff shows which string changed.
function writeGolden(file, header, cases) {
  const lines = cases.map((c) => JSON.stringify(c));
  const head = JSON.stringify(header).slice(0, -1);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, `${head},"cases":[\n${lines.join(',\n')}\n]}\n`);
}

const addedToken = (id, content, special) =>
  ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special });

// ---- small_bpe ----
{
  const [byteToChar] = bytesToUnicode();
  const vocab = new Map();
  for (let b = 0; b < 256; ++b) vocab.set(byteToChar[b], b);  // id = byte value
  const regex = jsRegex(kLlama3Regex);
  const words = splitIsolated(trainingText(), regex).map(byteLevel);
  const merges = trainMerges(countWords(words, (w) => Array.from(w)), 300);
  for (const [a, b] of merges) if (!vocab.has(a + b)) vocab.set(a + b, vocab.size);
  const n = vocab.size;
  const added = new Map([['<|bos|>', n], ['<|eos|>', n + 1], ['<|pad|>', n + 2], ['<extra>', n + 3]]);
  const json = {
    version: '1.0',
    truncation: null,
    padding: { strategy: 'BatchLongest', direction: 'Right', pad_to_multiple_of: null, pad_id: n + 2, pad_type_id: 0, pad_token: '<|pad|>' },
    added_tokens: [addedToken(n, '<|bos|>', true), addedToken(n + 1, '<|eos|>', true), addedToken(n + 2, '<|pad|>', true),
      addedToken(n + 3, '<extra>', false)],
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: kLlama3Regex }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<|bos|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<|eos|>', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<|bos|>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
        { SpecialToken: { id: '<|eos|>', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } },
        { SpecialToken: { id: '<|eos|>', type_id: 1 } }],
      special_tokens: {
        '<|bos|>': { id: '<|bos|>', ids: [n], tokens: ['<|bos|>'] },
        '<|eos|>': { id: '<|eos|>', ids: [n + 1], tokens: ['<|eos|>'] },
      },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, ignore_merges: false,
      vocab: Object.fromEntries(vocab), merges,
    },
  };
  writeJson(path.join(outDir, 'small_bpe/tokenizer.json'), json);

  const ref = new ReferenceBpe({ vocab, merges, added, regex: kLlama3Regex, isolated: true, ignoreMerges: false });
  const cases = smallCorpus().map((text) => {
    const ids = ref.encode(text);
    return { text, ids, ids_special: [n, ...ids, n + 1] };
  });
  writeGolden(path.join(outDir, 'small_bpe/golden.json'),
    { source: 'tools/tokenizer/reference_bpe.mjs (independent of the C++ tokenizer)', bos: n, eos: n + 1, pad: n + 2 },
    cases);
  console.log(`small_bpe: ${vocab.size} tokens, ${merges.length} merges, ${cases.length} cases`);
}

// ---- clip_tiny ----
{
  const [byteToChar, order] = bytesToUnicode();
  const suffix = '</w>';
  const vocab = new Map();
  for (const b of order) vocab.set(byteToChar[b], vocab.size);  // CLIP's order: bytes_to_unicode values
  for (const b of order) vocab.set(byteToChar[b] + suffix, vocab.size);
  const normalize = (s) => s.normalize('NFC').replace(/\s+/gu, ' ').toLowerCase();
  const regex = jsRegex(kClipRegex);
  const words = splitMatches(normalize(trainingText()), regex).map(byteLevel);
  const toSymbols = (w) => {
    const s = Array.from(w);
    s[s.length - 1] += suffix;
    return s;
  };
  const merges = trainMerges(countWords(words, toSymbols), 300);
  for (const [a, b] of merges) if (!vocab.has(a + b)) vocab.set(a + b, vocab.size);
  const sot = vocab.size;
  const eot = sot + 1;
  vocab.set('<|startoftext|>', sot);
  vocab.set('<|endoftext|>', eot);
  const added = new Map([['<|startoftext|>', sot], ['<|endoftext|>', eot]]);
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [{ ...addedToken(sot, '<|startoftext|>', true), normalized: true },
      { ...addedToken(eot, '<|endoftext|>', true), normalized: true }],
    normalizer: {
      type: 'Sequence',
      normalizers: [{ type: 'NFC' }, { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' }, { type: 'Lowercase' }],
    },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: kClipRegex }, behavior: 'Removed', invert: true },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: {
      type: 'RobertaProcessing', sep: ['<|endoftext|>', eot], cls: ['<|startoftext|>', sot], trim_offsets: false,
      add_prefix_space: false,
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE', dropout: null, unk_token: '<|endoftext|>', continuing_subword_prefix: '', end_of_word_suffix: suffix,
      fuse_unk: false, byte_fallback: false,
      vocab: Object.fromEntries(vocab), merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
  writeJson(path.join(outDir, 'clip_tiny/tokenizer.json'), json);

  const ref = new ReferenceBpe({ vocab, merges, added, regex: kClipRegex, isolated: false, normalize, suffix });
  const corpus = clipCorpus();
  const cases = corpus.map((text) => {
    const ids = ref.encode(text);
    return { text, ids, ids_special: [sot, ...ids, eot] };
  });
  // Padding and truncation as CLIPTokenizer(padding="max_length", truncation=True) does: the text is cut to
  // max_len - 2 tokens, then BOS/EOS are added and the rest is padded with the pad id (here <|endoftext|>).
  const padded = [];
  for (const maxLen of [77, 8]) {
    for (const text of [corpus[0], corpus[1], 'word '.repeat(100), '', 'a photo of a cat sitting on a red sofa']) {
      const ids = ref.encode(text).slice(0, maxLen - 2);
      const real = [sot, ...ids, eot];
      const mask = real.map(() => 1);
      while (real.length < maxLen) {
        real.push(eot);
        mask.push(0);
      }
      padded.push({ text, max_len: maxLen, pad_id: eot, ids: real, mask });
    }
  }
  writeGolden(path.join(outDir, 'clip_tiny/golden.json'),
    { source: 'tools/tokenizer/reference_bpe.mjs (independent of the C++ tokenizer)', bos: sot, eos: eot, padded },
    cases);
  console.log(`clip_tiny: ${vocab.size} tokens, ${merges.length} merges, ${cases.length} cases`);
}
