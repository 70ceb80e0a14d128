// The tokenizer test corpus: hand-written strings (scripts, digits, whitespace, emoji, punctuation,
// contractions, special tokens, the HunyuanVideo prompt template) plus seeded random mixtures.
// Deterministic: the same strings on every run, so the goldens in tests/data/tokenizer are reproducible.

// diffusers pipelines/hunyuan_video/pipeline_hunyuan_video.py DEFAULT_PROMPT_TEMPLATE (== the original
// hyvideo/constants.py PROMPT_TEMPLATE_ENCODE_VIDEO); crop_start 95.
export const kHunyuanVideoTemplate =
  '<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: ' +
  '1. The main content and theme of the video.' +
  '2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.' +
  '3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.' +
  '4. background environment, light, style and atmosphere.' +
  '5. camera angles, movements, and transitions used in the video:<|eot_id|>' +
  '<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>';
export const kHunyuanVideoCropStart = 95;

const kPrompts = [
  'A cat walks on the grass, realistic style.',
  'A panda eating bamboo in a misty forest, cinematic lighting, 4K.',
  'Aerial view of a coastline at sunset; waves crash against the cliffs.',
  'A robot dances in Times Square at night, neon reflections on wet asphalt.',
  '一只小猫在草地上奔跑，电影质感。',
  'Un chien qui court sur la plage à l\'aube.',
];

// mulberry32: a small seeded PRNG.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

// Characters for the random mixtures. Only code points that are old enough to be classified the same by
// every engine involved (V8/ICU, PCRE2 10.42, Oniguruma), and no U+FEFF: JavaScript's \s includes it,
// Unicode's White_Space (PCRE2, Oniguruma) does not.
const kPieces = [
  ...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'.split(''),
  ...'0123456789'.split(''),
  ' ', ' ', ' ', ' ', '  ', '\t', '\n', '\n\n', '\r\n', '\u00a0', '\u3000',
  ...'.,;:!?\'"()[]{}<>-_=+*/\\|@#$%^&~`'.split(''),
  '\'s', '\'t', '\'re', '\'ve', '\'m', '\'ll', '\'d', '\'S', '\'LL',
  'é', 'ü', 'ß', 'ñ', 'ø', 'Å', 'Ç', 'œ', 'ł', 'ş',
  'α', 'β', 'Ω', 'λ', 'ж', 'Я', 'ы', 'й', 'ע', 'ש', 'ب', 'ع', 'क', 'ि', 'ก', '่',
  '日', '本', '語', '中', '文', 'か', 'な', 'カ', 'ナ', '한', '국',
  '٣', '٤', '१', '②', '½', '²',
  '😀', '👍', '🏽', '❤', '\ufe0f', '\u200d', '🇯', '🇵', '🔥', '✨',
  '—', '…', '“', '”', '«', '»', '€', '£', '©', '™', '°', '·',
  'the', ' the', ' video', ' cat', 'ing', 'tion', ' of', 'and', 'hello', 'world', '123', '4567',
];

export function randomStrings(count, seed, pieces = kPieces) {
  const r = rng(seed);
  const out = [];
  for (let i = 0; i < count; ++i) {
    const n = 1 + Math.floor(r() * 24);
    let s = '';
    for (let k = 0; k < n; ++k) s += pieces[Math.floor(r() * pieces.length)];
    out.push(s);
  }
  return out;
}

const kHandWritten = [
  // ASCII
  'Hello world!', 'hello world', 'HELLO WORLD', 'Hello', 'a', 'A', 'I', 'ab', 'abc', 'The quick brown fox jumps over the lazy dog.',
  'the the the the the', 'supercalifragilisticexpialidocious', 'antidisestablishmentarianism', 'Pneumonoultramicroscopicsilicovolcanoconiosis',
  'camelCaseIdentifier', 'snake_case_identifier', 'SCREAMING_SNAKE', 'kebab-case-name', 'MixedUPPERlower', 'x', 'xyzzy',
  // contractions
  'I\'m here', 'don\'t', 'they\'ll', 'We\'ve', 'You\'RE', 'SHE\'S', 'it\'d', 'o\'clock', 'rock\'n\'roll', '\'\'', '\'s', '\'\'s',
  'I\'M', 'we\'Ve', 'can\'t won\'t shouldn\'t', 'Bob\'s car', '\'tis', 'y\'all\'d\'ve',
  // digits
  '1', '12', '123', '1234', '12345', '123456', '1234567', '12345678901234567890', '3.14159', '1,000,000', '2024-05-01',
  'v1.2.3', '0x7fffffff', '٣٤٥٦', '१२३४', '①②③', 'Ⅻ', '½ cup', '10^9', 'x2', 'abc123def', '007', 'H2O', 'CO2e',
  '1st 2nd 3rd 4th', '$1,234.56', '99%', '-42', '+1 (555) 010-9999',
  // whitespace
  ' ', '  ', '   ', '    leading', 'trailing   ', 'a  b', 'a   b', '\t', 'a\tb', '\t\tindent', '\n', '\n\n', '\n\n\n', 'a\nb', 'a\n\nb',
  'a \n b', 'line1\r\nline2', '\r\n\r\n', ' \n ', '   \n\n   x', 'x   ', ' x', '\u00a0nbsp', 'em\u2003space', '\u3000ideographic',
  'tab\there', 'multiple     spaces     here', '\n leading newline', 'end with newline\n', ' \t \n \r ',
  // scripts
  'Привет, мир!', 'Γειά σου Κόσμε', 'こんにちは世界', '你好，世界！', '안녕하세요', 'مرحبا بالعالم', 'שלום עולם', 'नमस्ते दुनिया',
  'สวัสดีชาวโลก', 'Tiếng Việt có dấu', 'Ünïcödé çåfé naïve résumé', 'Zürich Straße', 'ﬁ ligature', 'e\u0301 combining',
  'Ελληνικά ΚΕΦΑΛΑΙΑ', 'Ёжик в тумане', 'ქართული', 'Հայերեն', 'ᚠᛇᚻ', 'Ꭰ Cherokee', 'ﾊﾝｶｸ', 'ＦＵＬＬＷＩＤＴＨ', '𝔘𝔫𝔦𝔠𝔬𝔡𝔢',
  'ŁÓDŹ', 'İstanbul', 'ǅemal',
  // emoji
  '😀', '👍🏽', '👨‍👩‍👧‍👦', '🇯🇵🇺🇸', 'I ❤️ NY', '🔥🔥🔥', 'a😀b', '✨ sparkle ✨', '🐼 eating 🎋', '☕️', '🤖🕺',
  // punctuation
  '!!!', '?!?!', '...', '—', '«quotes»', '“smart quotes”', '(parens) [brackets] {braces}', 'a,b;c:d', '#hashtag @mention',
  'https://example.com/path?q=1&r=2', 'C++ && Rust || Go', 'foo_bar-baz', '<html><body></body></html>', '$$$ 100%', '~/.bashrc',
  '/* comment */', 'e=mc^2', '\\n literal', '----', '====\n', '!!!\n\n', ' ?\r\n', '...\n', '```python', '@@ -1,4 +1,5 @@',
  // code
  'def f(x):\n    return x * 2\n', 'int main() { return 0; }', 'for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}',
  '{"key": "value", "n": [1, 2, 3]}', 'SELECT * FROM t WHERE id = 42;',
  // special tokens inside text
  '<|begin_of_text|>Hello', 'Hi<|eot_id|>', '<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>',
  '<|reserved_special_token_5|>', '<|not_a_token|>', '<|eot_id', '<|eot_id|><|eot_id|>', 'text <|end_of_text|> more',
  ' <|eot_id|> ', '<|begin_of_text|><|begin_of_text|>', 'a<|eot_id|>b<|eot_id|>c',
  // long
  'a'.repeat(100), ' '.repeat(50), '9'.repeat(40), 'ab '.repeat(30), '\n'.repeat(10) + 'x', 'lo'.repeat(64),
  'A panda eating bamboo. '.repeat(12),
];

// The Llama-3 corpus (at least 200 strings).
export function llamaCorpus() {
  const prompts = kPrompts.map((p) => kHunyuanVideoTemplate.replace('{}', p));
  return [...kHandWritten, kHunyuanVideoTemplate, ...prompts, ...randomStrings(90, 12345)];
}

// The CLIP corpus: no Llama special tokens; upper case, NFD input and whitespace runs exercise the
// normalizer. Characters whose lower case differs between Unicode versions are left out.
export function clipCorpus() {
  const hand = [
    'A cat walks on the grass, realistic style.', 'HELLO   World', '  leading and trailing  ', 'tab\tand\nnewline',
    'Café Crème', 'Cafe\u0301 Cre\u0300me', 'Ångström', 'A\u030angstro\u0308m', 'Ελληνικά ΚΕΦΑΛΑΙΑ', 'ΟΔΟΣ', 'Привет, МИР!',
    'don\'t STOP', 'we\'LL see', 'abc123', '2024-05-01', '3.14', 'emoji 😀 here', '<|startoftext|>a photo', 'a photo<|endoftext|>',
    'a <|endoftext|> b', 'photo of a dog', 'a photo of a cat sitting on a red sofa', '!!!???', '...', 'ünïcödé', 'straße',
    'x', '', '   ', 'the the the', 'multiple     spaces', 'A'.repeat(40), 'word '.repeat(100),
    'Aerial view of a coastline at sunset; waves crash against the cliffs.', '一只小猫', 'こんにちは', 'İstanbul',
  ];
  const pieces = [
    ...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789'.split(''),
    ' ', ' ', ' ', '  ', '\t', '\n', '.', ',', '!', '?', '\'', '-', '(', ')', '\'s', '\'t', '\'re', '\'LL',
    'é', 'É', 'ü', 'Ü', 'ß', 'α', 'Ω', 'ж', 'Я', '日', '本', '😀', '🔥', 'e\u0301', 'a\u0308',
    'the', ' the', 'photo', ' of', 'cat', 'ing', 'THE',
  ];
  return [...hand, ...randomStrings(70, 777, pieces)];
}

// The corpus for the small trained byte-level BPE: the Llama-style corpus with its own special tokens.
export function smallCorpus() {
  const base = llamaCorpus().map((s) =>
    s.replaceAll('<|begin_of_text|>', '<|bos|>').replaceAll('<|eot_id|>', '<|eos|>'));
  return [...base, '<|pad|>', 'x<extra>y', '<extra><extra>', 'a <extra> b', '<|bos|><|eos|><|pad|>'];
}

// Training text for the small BPE models: prose in a few scripts, digits and code.
export function trainingText() {
  const lines = [
    'The quick brown fox jumps over the lazy dog. The dog sleeps in the sun.',
    'A cat walks on the grass, realistic style. A panda eats bamboo in the forest.',
    'Describe the video by detailing the following aspects: the main content and theme of the video.',
    'The color, shape, size, texture, quantity, text, and spatial relationships of the objects.',
    'Actions, events, behaviors temporal relationships, physical movement changes of the objects.',
    'Background environment, light, style and atmosphere; camera angles, movements, and transitions.',
    'I\'m sure they\'ll say we\'ve done it; don\'t worry, it\'s fine and you\'re right.',
    'In 2024 there were 1234567 videos, 89 cats and 3.14159 pies; call 555-0100 at 10:30.',
    'Привет, мир! Это тест токенизатора. Γειά σου Κόσμε, αυτό είναι ένα τεστ.',
    '你好，世界！这是一个测试。こんにちは世界、これはテストです。안녕하세요 세계.',
    'def encode(text):\n    return [vocab[t] for t in text.split()]\n\nprint(encode("hello world"))\n',
    'Café crème, naïve résumé, Zürich Straße, ñandú, smørrebrød, Łódź.',
    'Emoji: 😀 👍 🔥 ✨ 🐼 — “quotes” «guillemets» … and more!!!',
  ];
  const out = [];
  for (let i = 0; i < 6; ++i) out.push(...lines);
  return out.join('\n');
}
