/**
 * JSON payloads read exactly as the Rust SDK's `quiver_plugin_sdk::json` reads them
 * (serde_json 1 with `preserve_order`, as Quiver's plugins build it), so that a plugin
 * ported from Rust keeps, drops and keys the same records.
 *
 * Values are what `JSON.parse` gives, except for two things JavaScript cannot hold:
 * - numbers are {@link JsonNumber}s: serde_json's `f64` for the number (`value`, also
 *   what arithmetic and comparisons use) and its text (`text`: `1.0` stays `1.0`,
 *   `12345678901234567890` keeps every digit);
 * - objects are `Map`s: keys in document order, a repeated key keeping its first place
 *   and its last value.
 *
 * What is JSON is what serde_json accepts: strict RFC 8259, plus its limits (128 levels
 * of nesting, no number beyond `f64`, no unpaired surrogate in a string). {@link find},
 * like serde_json's streaming reader, checks only the values on its path beyond syntax.
 * One difference remains, for keys repeated in an object: serde_json also reads the
 * values it then discards, and refuses the payload if one of them is out of range,
 * nests too deep or holds an unpaired surrogate; these helpers see the last value only.
 *
 * Speed: the engine interprets JavaScript, so the work is left to the native
 * `JSON.parse` (a few µs for a small record), keeping numbers' text (`context.source`)
 * only when the value asked for holds numbers. Rare inputs (invalid UTF-8, integer keys
 * in the objects built, documents nesting past what `JSON.parse`'s reviver can recurse)
 * take an exact reader written in JavaScript, about a hundred times slower. Hot paths
 * use index loops: iterators (`for…of`, spreading, array destructuring) cost ~4 µs a
 * step in this engine.
 *
 * @module json
 */

/**
 * A JSON value as these helpers give it.
 * @typedef {null | boolean | string | JsonNumber | JsonValue[] | Map<string, JsonValue>} JsonValue
 */

const strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lenient = new TextDecoder('utf-8', { ignoreBOM: true });

/** A JSON number: serde_json's `f64` for it, and its text as serde_json writes it. */
export class JsonNumber {
  #lexeme;
  #value;
  #text;

  /**
   * @param {string} lexeme a JSON number as written (not checked)
   * @throws {SyntaxError} when serde_json finds it out of range
   */
  constructor(lexeme) {
    this.#lexeme = lexeme;
    // Only an exponent or 300 digits can take a number beyond f64: read those now.
    if (lexeme.length > 300 || lexeme.indexOf('e') >= 0 || lexeme.indexOf('E') >= 0) this.#read();
  }

  /** @returns {number} the `f64`, as `serde_json::Value::as_f64` gives it */
  get value() {
    if (this.#value === undefined) this.#read();
    return this.#value;
  }

  /** @returns {string} the text, as serde_json writes it */
  get text() {
    if (this.#value === undefined) this.#read(); // sets an integer's text
    this.#text ??= formatF64(this.#value);
    return this.#text;
  }

  #read() {
    const n = readNumber(this.#lexeme);
    this.#value = n.value;
    this.#text = n.text;
  }

  valueOf() {
    return this.value;
  }

  toString() {
    return this.text;
  }

  toJSON() {
    return this.value;
  }
}

/**
 * The value at a dotted path (`meta.level`, `tags.0`) of a JSON payload, building only
 * that value: `undefined` when there is no such field.
 * @param {Uint8Array} payload
 * @param {string} path
 * @returns {JsonValue | undefined}
 * @throws {SyntaxError} when the payload is not JSON
 */
export function find(payload, path) {
  const tokens = path.split('.');
  const text = decode(payload);
  if (text === undefined) {
    JSON.parse(lenient.decode(payload)); // settles the syntax
    return new Reader(decodeMarkingInvalid(payload)).find(tokens, 0);
  }
  const checkStrings = mayHoldLoneSurrogates(text);
  if (tokens.length < 127) {
    const found = walk(JSON.parse(text), tokens, checkStrings);
    if (found === undefined || found === null || typeof found === 'boolean') return found;
    if (typeof found === 'string') return checked(found, checkStrings);
    if (found !== SLOW) {
      // A number or a container: read it again keeping numbers' text.
      const lossless = parseKeepingLexemes(text);
      const exact = lossless === SLOW ? SLOW : convert(walk(lossless, tokens, false), 128 - tokens.length, checkStrings);
      if (exact !== SLOW) return exact;
    }
  } else {
    JSON.parse(text);
  }
  return new Reader(text).find(tokens, 0);
}

/**
 * A JSON payload as a whole.
 * @param {Uint8Array} payload
 * @returns {JsonValue}
 * @throws {SyntaxError} when the payload is not JSON
 */
export function parse(payload) {
  const text = decode(payload);
  if (text === undefined) throw new SyntaxError('invalid UTF-8');
  const checkStrings = mayHoldLoneSurrogates(text);
  let slow = false;
  let value;
  try {
    value = JSON.parse(text, (key, v, context) => {
      checked(key, checkStrings);
      if (typeof v === 'number') return new JsonNumber(context.source);
      if (typeof v === 'string') return checked(v, checkStrings);
      if (typeof v !== 'object' || v === null || Array.isArray(v)) return v;
      const map = toMap(v);
      slow ||= map === SLOW;
      return map;
    });
  } catch (error) {
    if (error instanceof SyntaxError) throw error;
    slow = true; // "too much recursion": too deep for the reviver
  }
  if (!slow) {
    // Fewer than 254 characters cannot nest 128 deep.
    if (text.length >= 254 && depth(value) >= 128) throw new SyntaxError('recursion limit exceeded');
    return value;
  }
  JSON.parse(text);
  return new Reader(text).value();
}

/**
 * `field(parse(payload), path)`, building only that value: the whole payload must be
 * JSON (as for `serde_json::from_slice::<Value>`), unlike for {@link find}.
 * @param {Uint8Array} payload
 * @param {string} path
 * @returns {JsonValue | undefined}
 * @throws {SyntaxError} when the payload is not JSON
 */
export function get(payload, path) {
  const text = decode(payload);
  if (text === undefined) throw new SyntaxError('invalid UTF-8');
  const checkStrings = mayHoldLoneSurrogates(text);
  const lossless = parseKeepingLexemes(text, true, checkStrings);
  if (lossless !== SLOW) {
    // Fewer than 254 characters cannot nest 128 deep.
    if (text.length >= 254 && depth(lossless) >= 128) throw new SyntaxError('recursion limit exceeded');
    const exact = convert(field(lossless, path), 128, false);
    if (exact !== SLOW) return exact;
  }
  return field(parse(payload), path);
}

/**
 * The value at a dotted path (`meta.level`); array elements by index (`tags.0`).
 * Takes these helpers' values and `JSON.parse`'s.
 * @param {JsonValue | unknown} value
 * @param {string} path
 * @returns {JsonValue | undefined}
 */
export function field(value, path) {
  const tokens = path.split('.');
  let v = value;
  for (let i = 0; i < tokens.length && v !== undefined; i++) {
    if (v instanceof Map) v = v.get(tokens[i]);
    else if (Array.isArray(v)) v = v[index(tokens[i])];
    else if (typeof v === 'object' && v !== null && !(v instanceof JsonNumber) && !(v instanceof Lexeme)) v = own(v, tokens[i]);
    else return undefined;
  }
  return v;
}

/**
 * A value as text: strings as they are, everything else as compact JSON, the way
 * serde_json writes it.
 * @param {JsonValue | unknown} value
 * @returns {string}
 */
export function text(value) {
  return typeof value === 'string' ? value : write(value);
}

function write(v) {
  if (v instanceof JsonNumber) return v.text;
  if (Array.isArray(v)) return `[${v.map(write).join(',')}]`;
  const members = [];
  const member = (x, k) => members.push(`${JSON.stringify(k)}:${write(x)}`);
  if (v instanceof Map) {
    v.forEach(member);
    return `{${members.join(',')}}`;
  }
  if (typeof v === 'number') return Number.isSafeInteger(v) ? String(v) : formatF64(v);
  if (typeof v === 'object' && v !== null) {
    Object.keys(v).forEach((k) => member(v[k], k));
    return `{${members.join(',')}}`;
  }
  return JSON.stringify(v) ?? 'null';
}

/** An array index as Rust's `usize` parses it, or `undefined`. */
function index(token) {
  return /^\+?\d+$/.test(token) ? Number(token) : undefined;
}

/** An own property, or `undefined`. */
function own(object, key) {
  return Object.hasOwn(object, key) ? object[key] : undefined;
}

/** The payload as text, or `undefined` when it is not UTF-8. */
function decode(payload) {
  try {
    return strict.decode(payload);
  } catch {
    return undefined;
  }
}

/**
 * The payload as text, each invalid UTF-8 sequence replaced with two unpaired high
 * surrogates: `JSON.parse` takes them inside a string (serde_json does not check the
 * strings it skips) and refuses them outside one, and a string holding them can never
 * be well formed, as a string serde_json reads must be.
 */
function decodeMarkingInvalid(payload) {
  let text = '';
  let start = 0;
  for (let i = 0; i < payload.length; ) {
    const n = sequenceLength(payload, i);
    if (n > 0) {
      i += n;
    } else {
      text += `${strict.decode(payload.subarray(start, i))}\uDBFF\uDBFF`;
      start = ++i;
    }
  }
  return text + strict.decode(payload.subarray(start));
}

/** The length of the valid UTF-8 sequence at `i`, or 0. */
function sequenceLength(b, i) {
  const c = b[i];
  if (c < 0x80) return 1;
  const n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 ? 2 : 0;
  if (n === 0 || c > 0xf4 || i + n > b.length) return 0;
  const low = c === 0xe0 ? 0xa0 : c === 0xf0 ? 0x90 : 0x80;
  const high = c === 0xed ? 0x9f : c === 0xf4 ? 0x8f : 0xbf;
  if (b[i + 1] < low || b[i + 1] > high) return 0;
  for (let k = 2; k < n; k++) if ((b[i + k] & 0xc0) !== 0x80) return 0;
  return n;
}

/** Whether a (valid UTF-8) document may hold unpaired surrogates: `\uD800`-`\uDFFF` escapes. */
function mayHoldLoneSurrogates(text) {
  return text.includes('\\u') && /\\u[dD][89a-fA-F]/.test(text);
}

/** `s`, if it is well formed (when it may not be). */
function checked(s, check) {
  if (check && !s.isWellFormed()) throw new SyntaxError('unpaired surrogate in a string');
  return s;
}

/** What `walk`, `convert` and `toMap` return when only the exact reader can tell. */
const SLOW = Symbol('slow');

/** A number's text, kept by `parseKeepingLexemes`. */
class Lexeme {
  constructor(source) {
    this.source = source;
  }
}

/**
 * `JSON.parse` keeping numbers' text (as `Lexeme`s), or `SLOW` when it nests too deep.
 * With `whole`, the document is checked as serde_json checks a `Value` it builds: every
 * number within `f64`, and (with `checkStrings`) every string well formed.
 */
function parseKeepingLexemes(text, whole = false, checkStrings = false) {
  const reviver = !whole ? keepLexemes : checkStrings ? keepCheckingAll : keepCheckingNumbers;
  try {
    return JSON.parse(text, reviver);
  } catch (error) {
    if (error instanceof SyntaxError) throw error;
    return SLOW; // "too much recursion"
  }
}

function keepLexemes(key, value, context) {
  return typeof value === 'number' ? new Lexeme(context.source) : value;
}

function keepCheckingNumbers(key, value, context) {
  if (typeof value !== 'number') return value;
  const lexeme = context.source;
  // Only an exponent or 300 digits can take a number beyond f64.
  if (lexeme.length > 300 || lexeme.indexOf('e') >= 0 || lexeme.indexOf('E') >= 0) readNumber(lexeme);
  return new Lexeme(lexeme);
}

function keepCheckingAll(key, value, context) {
  checked(key, true);
  return typeof value === 'string' ? checked(value, true) : keepCheckingNumbers(key, value, context);
}

/**
 * `field` of what `JSON.parse` gave, as serde_json's `find` reads the document: the
 * keys of the objects on the path, and a scalar the path goes on past, are read too.
 */
function walk(value, tokens, checkStrings) {
  let v = value;
  for (let i = 0; i < tokens.length && v !== undefined; i++) {
    if (Array.isArray(v)) {
      v = v[index(tokens[i])];
    } else if (typeof v === 'object' && v !== null && !(v instanceof Lexeme)) {
      if (checkStrings) Object.keys(v).forEach((key) => checked(key, true));
      v = own(v, tokens[i]);
    } else {
      // The path goes on past a scalar: nothing there, but serde_json reads it.
      if (typeof v === 'string') checked(v, checkStrings);
      return typeof v === 'number' && !(Math.abs(v) < 1e300) ? SLOW : undefined; // beyond f64?
    }
  }
  return v;
}

/**
 * What `parseKeepingLexemes` gave as these helpers' values, checked as serde_json checks
 * what it builds, with `levels` levels of nesting left.
 */
function convert(v, levels, checkStrings) {
  if (v === SLOW || v instanceof Lexeme) return v === SLOW ? SLOW : new JsonNumber(v.source);
  if (typeof v !== 'object' || v === null) return typeof v === 'string' ? checked(v, checkStrings) : v;
  if (levels === 1) throw new SyntaxError('recursion limit exceeded');
  if (Array.isArray(v)) {
    const items = new Array(v.length);
    for (let i = 0; i < v.length; i++) {
      items[i] = convert(v[i], levels - 1, checkStrings);
      if (items[i] === SLOW) return SLOW;
    }
    return items;
  }
  const map = toMap(v);
  if (map === SLOW) return SLOW;
  const keys = Object.keys(v);
  for (let i = 0; i < keys.length; i++) {
    const x = convert(v[keys[i]], levels - 1, checkStrings);
    if (x === SLOW) return SLOW;
    map.set(checked(keys[i], checkStrings), x);
  }
  return map;
}

/**
 * An object as a `Map` in document order, or `SLOW` when it has integer keys
 * (JavaScript lists those first, whatever their place).
 */
function toMap(object) {
  const keys = Object.keys(object);
  const map = new Map();
  for (let i = 0; i < keys.length; i++) {
    const c = keys[i].charCodeAt(0);
    if (c >= 0x30 && c <= 0x39 && keys[i] === String(Number(keys[i]) >>> 0)) return SLOW;
    map.set(keys[i], object[keys[i]]);
  }
  return map;
}

/** How deep a value nests (a scalar: 0). */
function depth(v) {
  let deepest = 0;
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) deepest = Math.max(deepest, depth(v[i]));
  } else if (v instanceof Map) {
    v.forEach((x) => (deepest = Math.max(deepest, depth(x))));
  } else if (typeof v === 'object' && v !== null && !(v instanceof Lexeme) && !(v instanceof JsonNumber)) {
    const keys = Object.keys(v);
    for (let i = 0; i < keys.length; i++) deepest = Math.max(deepest, depth(v[keys[i]]));
  } else {
    return 0;
  }
  return deepest + 1;
}

const QUOTE = 0x22;
const COMMA = 0x2c;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;

const STRING = /"[^"\\]*(?:\\.[^"\\]*)*"/y;
const SCALAR = /[^\s,\]}]+/y;
const NOT_STRUCTURE = /[^"[\]{}]*/y;

/**
 * Reads a document `JSON.parse` accepted the way serde_json does: the values it builds
 * are checked (strings well formed, numbers within `f64`, at most 127 levels deep);
 * the values it skips are only stepped over.
 */
class Reader {
  /** @param {string} text */
  constructor(text) {
    this.text = text;
    this.at = 0;
    this.depth = 128;
  }

  /** The next character after whitespace. */
  peek() {
    let c = this.text.charCodeAt(this.at);
    while (c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09) c = this.text.charCodeAt(++this.at);
    return c;
  }

  /** Matches `pattern` (sticky) here and returns the match. */
  take(pattern) {
    pattern.lastIndex = this.at;
    pattern.test(this.text);
    const token = this.text.slice(this.at, pattern.lastIndex);
    this.at = pattern.lastIndex;
    return token;
  }

  enter() {
    if (--this.depth === 0) throw new SyntaxError('recursion limit exceeded');
    this.at++;
  }

  leave() {
    this.depth++;
    this.at++;
  }

  /** Past a `,` (true) or not. */
  next() {
    if (this.peek() !== COMMA) return false;
    this.at++;
    return true;
  }

  /** Past the key of an object member and its `:`. */
  key() {
    this.peek();
    const key = this.string();
    this.peek();
    this.at++;
    return key;
  }

  /** A string here, checked. */
  string() {
    const token = this.take(STRING);
    return checked(token.includes('\\') ? JSON.parse(token) : token.slice(1, -1), true);
  }

  /** The value here, built and checked. @returns {JsonValue} */
  value() {
    const c = this.peek();
    if (c === QUOTE) return this.string();
    if (c === OPEN_BRACE) {
      this.enter();
      const map = new Map();
      if (this.peek() !== CLOSE_BRACE) {
        do map.set(this.key(), this.value());
        while (this.next());
      }
      this.leave();
      return map;
    }
    if (c === OPEN_BRACKET) {
      this.enter();
      const items = [];
      if (this.peek() !== CLOSE_BRACKET) {
        do items.push(this.value());
        while (this.next());
      }
      this.leave();
      return items;
    }
    const token = this.take(SCALAR);
    if (token === 'true') return true;
    if (token === 'false') return false;
    if (token === 'null') return null;
    return new JsonNumber(token);
  }

  /** Steps over the value here. */
  skip() {
    const c = this.peek();
    if (c === QUOTE) {
      this.take(STRING);
    } else if (c !== OPEN_BRACE && c !== OPEN_BRACKET) {
      this.take(SCALAR);
    } else {
      let open = 0;
      do {
        this.take(NOT_STRUCTURE);
        const d = this.text.charCodeAt(this.at);
        if (d === QUOTE) {
          this.take(STRING);
        } else {
          open += d === OPEN_BRACE || d === OPEN_BRACKET ? 1 : -1;
          this.at++;
        }
      } while (open > 0);
    }
  }

  /**
   * The value at `tokens[k…]` from the value here, as serde_json's `find` reads it:
   * every key of the objects on the path is checked, every value on it is read, the
   * others are skipped, and a repeated key's last value counts.
   * @returns {JsonValue | undefined}
   */
  find(tokens, k) {
    if (k === tokens.length) return this.value();
    const c = this.peek();
    let found;
    if (c === OPEN_BRACE) {
      this.enter();
      if (this.peek() !== CLOSE_BRACE) {
        do {
          if (this.key() === tokens[k]) found = this.find(tokens, k + 1);
          else this.skip();
        } while (this.next());
      }
      this.leave();
    } else if (c === OPEN_BRACKET) {
      this.enter();
      const wanted = index(tokens[k]);
      if (this.peek() !== CLOSE_BRACKET) {
        let i = 0;
        do {
          if (i++ === wanted) found = this.find(tokens, k + 1);
          else this.skip();
        } while (this.next());
      }
      this.leave();
    } else {
      // The path goes on past a scalar: nothing there, but serde_json reads it.
      this.value();
    }
    return found;
  }
}

const U64_MAX = '18446744073709551615';
const I64_MIN_MAGNITUDE = '9223372036854775808';
const I32_MAX = String(2 ** 31 - 1);
const POW10 = Array.from({ length: 309 }, (_, i) => Number(`1e${i}`));

/**
 * A JSON number's `f64` and text, as serde_json (without `float_roundtrip`) reads and
 * writes it: integers that fit `u64`/`i64` stay exact; the others become an `f64`
 * from the leading digits that fit a `u64` (the rest of the integer part counts as
 * powers of ten, the rest of the fraction is dropped) times a power of ten.
 * @param {string} lexeme a JSON number
 * @returns {{ value: number, text?: string }} (`text` for integers that stay exact)
 * @throws {SyntaxError} when it is beyond `f64`
 */
function readNumber(lexeme) {
  const positive = lexeme.charCodeAt(0) !== 0x2d;
  const e = Math.max(lexeme.indexOf('e'), lexeme.indexOf('E'));
  const end = e < 0 ? lexeme.length : e;
  const dot = lexeme.indexOf('.');
  const integer = lexeme.slice(positive ? 0 : 1, dot < 0 ? end : dot);
  const fraction = dot < 0 ? '' : lexeme.slice(dot + 1, end);
  if (dot < 0 && e < 0) {
    if (positive && atMost(integer, U64_MAX)) return { value: Number(integer), text: integer };
    if (!positive && integer !== '0' && atMost(integer, I64_MIN_MAGNITUDE)) {
      return { value: -Number(integer), text: lexeme };
    }
  }
  const int = integer === '0' ? '' : integer;
  const cut = fitting(int);
  const taken = fitting(int.slice(0, cut) + fraction) - cut;
  const digits = int.slice(0, cut) + fraction.slice(0, taken);
  let exponent = int.length - cut - taken;
  if (e >= 0) {
    const sign = lexeme.charAt(e + 1);
    const exp = withoutLeadingZeros(lexeme.slice(sign === '-' || sign === '+' ? e + 2 : e + 1));
    if (!atMost(exp, I32_MAX)) {
      if (withoutLeadingZeros(digits) !== '' && sign !== '-') throw new SyntaxError('number out of range');
      return { value: positive ? 0 : -0 };
    }
    exponent = Math.max(-(2 ** 31), Math.min(2 ** 31 - 1, exponent + (sign === '-' ? -exp : +exp)));
  }
  const f = fromParts(Number(digits || '0'), exponent);
  return { value: positive ? f : -f };
}

/** Whether a decimal integer without leading zeros is at most `max` (likewise). */
function atMost(digits, max) {
  return digits.length < max.length || (digits.length === max.length && digits <= max);
}

/** How many leading digits serde_json's `u64` significand takes. */
function fitting(digits) {
  const rest = withoutLeadingZeros(digits);
  const zeros = digits.length - rest.length;
  const width = atMost(rest.slice(0, U64_MAX.length), U64_MAX) ? U64_MAX.length : U64_MAX.length - 1;
  return Math.min(digits.length, zeros + width);
}

function withoutLeadingZeros(digits) {
  let i = 0;
  while (digits.charCodeAt(i) === 0x30) i++;
  return digits.slice(i);
}

/** serde_json's `f64_from_parts`: `significand × 10^exponent`, in its steps. */
function fromParts(significand, exponent) {
  let f = significand;
  for (;;) {
    const magnitude = Math.abs(exponent);
    if (magnitude < POW10.length) {
      if (exponent < 0) return f / POW10[magnitude];
      f *= POW10[magnitude];
      if (f === Infinity) throw new SyntaxError('number out of range');
      return f;
    }
    if (f === 0) return f;
    if (exponent >= 0) throw new SyntaxError('number out of range');
    f /= 1e308;
    exponent += 308;
  }
}

/**
 * A finite `f64` as serde_json writes it (the zmij crate): the shortest digits that
 * read back to it, in plain notation from 1e-5 to below 1e16 (`100.0`, `0.00001`) and
 * in scientific notation beyond (`1e+16`, `1.5e-6`).
 * @param {number} f
 * @returns {string}
 */
function formatF64(f) {
  if (f === 0) return Object.is(f, -0) ? '-0.0' : '0.0';
  const sign = f < 0 ? '-' : '';
  const scientific = Math.abs(f).toExponential();
  const at = scientific.indexOf('e');
  const digits = scientific.charAt(0) + scientific.slice(2, at);
  const e = Number(scientific.slice(at + 1));
  if (e < -5 || e > 15) {
    const head = digits.length > 1 ? `${digits.charAt(0)}.${digits.slice(1)}` : digits;
    return `${sign}${head}e${e < 0 ? '-' : '+'}${Math.abs(e)}`;
  }
  if (e < 0) return `${sign}0.${'0'.repeat(-e - 1)}${digits}`;
  if (digits.length <= e + 1) return `${sign}${digits}${'0'.repeat(e + 1 - digits.length)}.0`;
  return `${sign}${digits.slice(0, e + 1)}.${digits.slice(e + 1)}`;
}
