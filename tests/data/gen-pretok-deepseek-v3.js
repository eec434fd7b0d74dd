// Regenerates tests/data/pretok-deepseek-v3.txt (not part of the build): the DeepSeek-V3/V4
// pre-tokenizer splits as HF tokenizers computes them, an oracle independent of PCRE2.
//   npm install tokenizers@0.23.2 && node tests/data/gen-pretok-deepseek-v3.js > tests/data/pretok-deepseek-v3.txt
const t = require('tokenizers');
const V3 = [
  "\\p{N}{1,3}",
  "[一-龥぀-ゟ゠-ヿ]+",
  "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
];
const cfg = { version: '1.0', truncation: null, padding: null, added_tokens: [], normalizer: null,
  pre_tokenizer: { type: 'Sequence', pretokenizers: V3.map(r => ({ type: 'Split', pattern: { Regex: r }, behavior: 'Isolated', invert: false })) },
  post_processor: null, decoder: null, model: { type: 'WordLevel', vocab: { a: 0 }, unk_token: 'a' } };
const pre = t.Tokenizer.fromString(JSON.stringify(cfg)).getPreTokenizer();
let seed = 20261128;
function rnd(n) { seed = (seed * 1103515245 + 12345) >>> 0; return (seed >>> 8) % n; }
const pools = [
  [0x41, 0x5a], [0x61, 0x7a], [0x30, 0x39], [0x21, 0x2f], [0x3a, 0x40], [0x5b, 0x60], [0x7b, 0x7e],
  [0x20, 0x20], [0x20, 0x20], [0x0a, 0x0a], [0x0d, 0x0d], [0x09, 0x09], [0x0b, 0x0c], [0x85, 0x85], [0xa0, 0xa0],
  [0xc0, 0x24f], [0x300, 0x36f], [0x391, 0x3c9], [0x410, 0x44f], [0x660, 0x669], [0x4e00, 0x4f00], [0x9fa0, 0x9fb0],
  [0x3040, 0x30ff], [0xac00, 0xac40], [0x3000, 0x3003], [0x2000, 0x200f], [0x2018, 0x2027], [0x2028, 0x2029],
  [0xff01, 0xff5e], [0x1f300, 0x1f64f], [0x01, 0x08], [0x7f, 0x9f], [0xa1, 0xbf], [0x2150, 0x218b], [0xe000, 0xe010],
  [0x10400, 0x1044f], [0x1d400, 0x1d4ff], [0x2e80, 0x2eff], [0xfe30, 0xfe4f],
];
const hex = s => Buffer.from(s, 'utf8').toString('hex');
console.log('# DeepSeek-V3/V4 pre-tokenizer splits computed by HF tokenizers 0.23.2 (Rust; npm package');
console.log('# "tokenizers") from the three isolating Split regexes; one case per line:');
console.log('# hex(UTF-8 input) TAB hex(piece) SPACE hex(piece) ...');
console.log('# Inputs: seeded random mixes of letters, marks, digits, punctuation, symbols, CJK, kana,');
console.log('# hangul, emoji and every kind of whitespace (tests/test_tokenizer.c reads this file).');
for (let i = 0; i < 600; i++) {
  let s = '';
  const len = 1 + rnd(24);
  for (let k = 0; k < len; k++) { const p = pools[rnd(pools.length)]; s += String.fromCodePoint(p[0] + rnd(p[1] - p[0] + 1)); }
  console.log(hex(s) + '\t' + pre.preTokenizeString(s).map(x => hex(x[0])).join(' '));
}
