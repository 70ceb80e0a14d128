// Writes the real Llama-3 tokenizer fixture of tests/test_tokenizer.cc from the npm package
// llama3-tokenizer-js 1.2.0 (which bundles Meta's Llama-3 vocabulary and merges):
//   OUT_DIR/tokenizer.json.xz  a HuggingFace tokenizer.json as Meta's Llama-3 ships it: BPE with
//                              ignore_merges, the Llama-3 Split regex + ByteLevel pre-tokenizer, ByteLevel
//                              decoder, the 256 special tokens, and the <|begin_of_text|> template
//   OUT_DIR/golden.json        ids from the package's own encode() for corpus.mjs llamaCorpus()
// It also checks reference_bpe.mjs against the package on the same corpus (both must agree).
// Usage: node tools/tokenizer/make_llama3.mjs PACKAGE_DIR [OUT_DIR]   (needs xz on PATH)
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

import { kHunyuanVideoCropStart, kHunyuanVideoTemplate, llamaCorpus } from './corpus.mjs';
import { ReferenceBpe, kLlama3Regex } from './reference_bpe.mjs';

const pkgDir = process.argv[2];
const outDir = process.argv[3] || 'tests/data/tokenizer/llama3';
if (!pkgDir) {
  console.error('usage: make_llama3.mjs PACKAGE_DIR [OUT_DIR]');
  process.exit(2);
}
const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'));
if (pkg.version !== '1.2.0') throw new Error(`expected llama3-tokenizer-js 1.2.0, found ${pkg.version}`);
const { default: tok } = await import(pathToFileURL(path.join(pkgDir, pkg.main)).href);

// The package appends its 256 special tokens to the 128000 BPE tokens.
const kNumBpe = 128000;
const vocabById = tok.vocabById;
if (vocabById.length !== kNumBpe + 256) throw new Error(`unexpected vocabulary size ${vocabById.length}`);
const vocab = new Map();
for (let id = 0; id < kNumBpe; ++id) vocab.set(vocabById[id], id);
if (vocab.size !== kNumBpe) throw new Error('duplicate tokens in the vocabulary');
// Its merge map is keyed "first second" in priority order (tokens never contain a space).
const merges = [...tok.merges.keys()];
const added = new Map();
for (let id = kNumBpe; id < vocabById.length; ++id) added.set(vocabById[id], id);

const bos = '<|begin_of_text|>';
const json = {
  version: '1.0',
  truncation: null,
  padding: null,
  added_tokens: [...added].map(([content, id]) =>
    ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true })),
  normalizer: null,
  pre_tokenizer: {
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: kLlama3Regex }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  },
  post_processor: {
    type: 'Sequence',
    processors: [
      { type: 'ByteLevel', add_prefix_space: true, trim_offsets: false, use_regex: true },
      {
        type: 'TemplateProcessing',
        single: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
        pair: [{ SpecialToken: { id: bos, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } },
          { SpecialToken: { id: bos, type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
        special_tokens: { [bos]: { id: bos, ids: [added.get(bos)], tokens: [bos] } },
      },
    ],
  },
  decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
  model: {
    type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
    fuse_unk: false, byte_fallback: false, ignore_merges: true, vocab: Object.fromEntries(vocab), merges,
  },
};
fs.mkdirSync(outDir, { recursive: true });
const text = JSON.stringify(json);
fs.writeFileSync(path.join(outDir, 'tokenizer.json.xz'), execFileSync('xz', ['-9', '-T1', '-c'], { input: text, maxBuffer: 1 << 30 }));

const corpus = llamaCorpus();
const ref = new ReferenceBpe({
  vocab, merges: merges.map((m) => m.split(' ')), added, regex: kLlama3Regex, isolated: true, ignoreMerges: true,
});
let disagree = 0;
const cases = corpus.map((t) => {
  const ids = tok.encode(t, { bos: false, eos: false });
  const idsSpecial = tok.encode(t, { bos: true, eos: false });
  if (JSON.stringify(ref.encode(t)) !== JSON.stringify(ids)) {
    ++disagree;
    console.error(`reference_bpe.mjs disagrees on ${JSON.stringify(t)}`);
  }
  return { text: t, ids, ids_special: idsSpecial };
});
if (disagree) throw new Error(`reference_bpe.mjs disagrees with llama3-tokenizer-js on ${disagree} strings`);

const prefix = kHunyuanVideoTemplate.slice(0, kHunyuanVideoTemplate.indexOf('{}'));
const prefixTokens = tok.encode(prefix, { bos: true, eos: false }).length;
if (prefixTokens !== kHunyuanVideoCropStart) throw new Error(`template prefix is ${prefixTokens} tokens, not 95`);

const header = {
  source: 'llama3-tokenizer-js 1.2.0 encode() (tools/tokenizer/make_llama3.mjs)',
  bos: added.get(bos),
  template: kHunyuanVideoTemplate,
  template_prefix_tokens: prefixTokens,
};
const lines = cases.map((c) => JSON.stringify(c));
fs.writeFileSync(path.join(outDir, 'golden.json'),
  `${JSON.stringify(header).slice(0, -1)},"cases":[\n${lines.join(',\n')}\n]}\n`);
console.log(`llama3: ${vocab.size} + ${added.size} tokens, ${merges.length} merges, ${cases.length} cases, ` +
  `tokenizer.json ${(text.length / 1e6).toFixed(1)} MB before xz`);
