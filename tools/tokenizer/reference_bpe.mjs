// A deliberately plain byte-level BPE (training and encoding), independent of the C++ tokenizer in
// model/text/tokenizer.cc: JavaScript's own regex engine and String.prototype.normalize/toLowerCase, and
// the textbook merge loop (merge the lowest-ranked adjacent pair, leftmost first, until none applies).
// It writes the golden ids of the small fixtures; make_llama3.mjs also checks it against
// llama3-tokenizer-js on the real Llama-3 vocabulary.

export const kLlama3Regex =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
export const kClipRegex =
  "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+";

// JavaScript has no scoped (?i:...) group: spell the contractions out in both cases.
export function jsRegex(pattern) {
  return new RegExp(
    pattern.replace("(?i:'s|'t|'re|'ve|'m|'ll|'d)", "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"), 'gu');
}

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to U+0100 upwards.
// Returns [byteToChar (array of 256 one-char strings), the bytes in vocabulary order].
export function bytesToUnicode() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; ++b) bs.push(b);
  for (let b = 0xa1; b <= 0xac; ++b) bs.push(b);
  for (let b = 0xae; b <= 0xff; ++b) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; ++b) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n += 1;
    }
  }
  const byteToChar = new Array(256);
  bs.forEach((b, i) => { byteToChar[b] = String.fromCodePoint(cs[i]); });
  return [byteToChar, bs];
}

const [kByteToChar] = bytesToUnicode();
const kUtf8 = new TextEncoder();

export function byteLevel(s) {
  return Array.from(kUtf8.encode(s), (b) => kByteToChar[b]).join('');
}

// Regex pieces with the non-matching gaps kept (Split behavior "Isolated").
export function splitIsolated(text, regex) {
  const out = [];
  let prev = 0;
  for (const m of text.matchAll(regex)) {
    if (m.index > prev) out.push(text.slice(prev, m.index));
    if (m[0].length > 0) out.push(m[0]);
    prev = m.index + m[0].length;
  }
  if (prev < text.length) out.push(text.slice(prev));
  return out;
}

// Only the matches (Split behavior "Removed" with invert).
export function splitMatches(text, regex) {
  return Array.from(text.matchAll(regex), (m) => m[0]).filter((s) => s.length > 0);
}

// Leftmost-longest split on literal added tokens: [{text} | {id}].
export function splitAdded(text, added /* Map content -> id */) {
  const contents = [...added.keys()].sort((a, b) => b.length - a.length);
  const out = [];
  let start = 0;
  let i = 0;
  while (i < text.length) {
    const hit = contents.find((c) => text.startsWith(c, i));
    if (hit === undefined) {
      ++i;
      continue;
    }
    if (i > start) out.push({ text: text.slice(start, i) });
    out.push({ id: added.get(hit) });
    i += hit.length;
    start = i;
  }
  if (start < text.length) out.push({ text: text.slice(start) });
  return out;
}

// The textbook BPE loop on one word (array of symbols).
export function bpeWord(symbols, ranks /* Map "a\u0000b" -> rank */) {
  const sym = symbols.slice();
  for (;;) {
    let best = -1;
    let bestRank = Infinity;
    for (let i = 0; i + 1 < sym.length; ++i) {
      const r = ranks.get(sym[i] + '\u0000' + sym[i + 1]);
      if (r !== undefined && r < bestRank) {
        bestRank = r;
        best = i;
      }
    }
    if (best < 0) return sym;
    sym.splice(best, 2, sym[best] + sym[best + 1]);
  }
}

// Learns `numMerges` merges from `words` (Map word-symbol-array-key -> count). Ties between equally
// frequent pairs go to the lexicographically smallest (first, second), so training is deterministic.
export function trainMerges(wordCounts /* Array<[symbols[], count]> */, numMerges) {
  const words = wordCounts.map(([s, c]) => [s.slice(), c]);
  const merges = [];
  for (let m = 0; m < numMerges; ++m) {
    const counts = new Map();
    for (const [s, c] of words) {
      for (let i = 0; i + 1 < s.length; ++i) {
        const k = s[i] + '\u0000' + s[i + 1];
        counts.set(k, (counts.get(k) || 0) + c);
      }
    }
    let best = null;
    let bestCount = 0;
    for (const [k, c] of counts) {
      if (c > bestCount || (c === bestCount && k < best)) {
        best = k;
        bestCount = c;
      }
    }
    if (best === null || bestCount < 2) break;
    const [a, b] = best.split('\u0000');
    merges.push([a, b]);
    for (const w of words) {
      const s = w[0];
      const t = [];
      for (let i = 0; i < s.length; ++i) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          t.push(a + b);
          ++i;
        } else {
          t.push(s[i]);
        }
      }
      w[0] = t;
    }
  }
  return merges;
}

// A byte-level BPE encoder over a vocabulary and merges; `opts` picks the Llama-3 or the CLIP recipe.
export class ReferenceBpe {
  // opts: { vocab: Map, merges: [[a,b]], added: Map content->id, regex, isolated (bool),
  //         normalize (fn), suffix (string|null), ignoreMerges (bool) }
  constructor(opts) {
    this.opts = opts;
    this.ranks = new Map();
    opts.merges.forEach(([a, b], i) => {
      const k = a + '\u0000' + b;
      this.ranks.set(k, i);  // a repeated pair: the last wins, as in HF
    });
    this.regex = jsRegex(opts.regex);
  }

  encode(text) {
    const o = this.opts;
    const ids = [];
    for (const seg of splitAdded(text, o.added)) {
      if (seg.id !== undefined) {
        ids.push(seg.id);
        continue;
      }
      // Added tokens of these fixtures survive the normalizers unchanged, so splitting before
      // normalizing is the same as HF's split-normalize-split here.
      const norm = o.normalize ? o.normalize(seg.text) : seg.text;
      const words = o.isolated ? splitIsolated(norm, this.regex) : splitMatches(norm, this.regex);
      for (const w of words) {
        const mapped = byteLevel(w);
        if (o.ignoreMerges && o.vocab.has(mapped)) {
          ids.push(o.vocab.get(mapped));
          continue;
        }
        const chars = Array.from(mapped);
        if (o.suffix) chars[chars.length - 1] += o.suffix;
        for (const t of bpeWord(chars, this.ranks)) {
          if (!o.vocab.has(t)) throw new Error(`reference: no token for ${JSON.stringify(t)}`);
          ids.push(o.vocab.get(t));
        }
      }
    }
    return ids;
  }
}
