/**
 * Keeps JSON records whose field passes a comparison; drops the others. A port of
 * plugins/json-filter (Rust) that decides every record alike.
 *
 * Parameters:
 * - `where` (required): `FIELD OP VALUE` or `FIELD exists`, with OP one of
 *   `==`, `!=`, `>`, `>=`, `<`, `<=`; FIELD is a dotted path (`meta.level`);
 * - `order` (optional): a comma-separated scale for comparing words
 *   (`trace,debug,info,warn,error` makes `level >= warn` mean warn or error);
 * - `invalid` (optional): what to do with a payload that is not JSON: `reject` (the
 *   default: dead-letter it), `drop` or `keep`.
 *
 * Values compare by their place in `order` when both are in it, as numbers when both
 * are numbers, and as text otherwise. A record without the field is dropped.
 */

import { definePlugin, drop, keep, param, reject } from '../../plugin-sdk/js/quiver-plugin.js';
import { JsonNumber, find, text } from '../../plugin-sdk/js/quiver-json.js';

/** Rust's `char::is_whitespace` (Unicode White_Space), for splitting and trimming. */
const SPACE = '\\t\\n\\v\\f\\r \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const SPACES = new RegExp(`[${SPACE}]+`);
const TRIM = new RegExp(`^[${SPACE}]+|[${SPACE}]+$`, 'g');

const OPS = new Map([
  ['==', (o) => o === 0],
  ['!=', (o) => o !== 0],
  ['>', (o) => o === 1],
  ['>=', (o) => o === 1 || o === 0],
  ['<', (o) => o === -1],
  ['<=', (o) => o === -1 || o === 0],
  ['exists', () => true],
]);

class Condition {
  static fromParams() {
    const expr = param('where');
    if (expr === undefined) {
      throw new Error("parameter `where` is required, e.g. --param 'where=level >= warn'");
    }
    const parts = expr.split(SPACES).filter(Boolean);
    const path = parts[0];
    const opName = parts[1];
    if (path === undefined) throw new Error('`where` is empty');
    if (opName === undefined) throw new Error('`where` needs an operator');
    const op = OPS.get(opName);
    if (op === undefined) throw new Error(`unknown operator \`${opName}\` in \`where\``);
    const value = parts.slice(2).join(' ');
    if (opName !== 'exists' && value === '') throw new Error('`where` needs a value to compare with');
    const order = param('order')?.split(',').map((s) => s.replace(TRIM, '')) ?? [];
    const invalidName = param('invalid');
    let invalid;
    switch (invalidName) {
      case undefined:
      case 'reject':
        invalid = reject('payload is not JSON');
        break;
      case 'drop':
        invalid = drop;
        break;
      case 'keep':
        invalid = keep;
        break;
      default:
        throw new Error(`\`invalid\` must be reject, drop or keep, not \`${invalidName}\``);
    }
    return new Condition(path, op, value.replace(/^"+|"+$/g, ''), order, invalid);
  }

  constructor(path, op, value, order, invalid) {
    this.path = path;
    this.op = op;
    this.value = value;
    /** `value` as a number, if it is one. */
    this.number = parseF64(value);
    this.order = order;
    this.invalid = invalid;
  }

  /** -1, 0 or 1 as `found` is below, equal to or above the value; undefined: unordered. */
  compare(found) {
    const number = found instanceof JsonNumber ? found.value : undefined;
    // A JSON number against a number, with no scale of words: no text needed.
    if (this.order.length === 0 && number !== undefined && this.number !== undefined) {
      return compareNumbers(number, this.number);
    }
    const t = text(found);
    const a = this.order.indexOf(t);
    const b = this.order.indexOf(this.value);
    if (a >= 0 && b >= 0) return Math.sign(a - b);
    const n = parseF64(t);
    if (n !== undefined && this.number !== undefined) return compareNumbers(n, this.number);
    return compareText(t, this.value);
  }

  decide(payload) {
    let found;
    try {
      // Only the field is built; the rest of the payload is checked and skipped.
      found = find(payload, this.path);
    } catch (error) {
      if (error instanceof SyntaxError) return this.invalid;
      throw error;
    }
    if (found === undefined) return drop;
    return this.op(this.compare(found)) ? keep : drop;
  }
}

/** A number as Rust's `str::parse::<f64>` reads it, or undefined. */
function parseF64(s) {
  if (!/^[+-]?(?:inf|infinity|nan|(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?)$/i.test(s)) return undefined;
  if (/nan$/i.test(s)) return NaN;
  if (/inf/i.test(s)) return s.startsWith('-') ? -Infinity : Infinity;
  return Number(s);
}

/** Rust's `f64::partial_cmp`. */
function compareNumbers(a, b) {
  if (a < b) return -1;
  if (a > b) return 1;
  return a === b ? 0 : undefined;
}

/** Rust's `str::cmp`: by UTF-8 bytes, that is by code points. */
function compareText(a, b) {
  if (a === b) return 0;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    const x = a.charCodeAt(i);
    const y = b.charCodeAt(i);
    if (x !== y) return codePointOrder(x) < codePointOrder(y) ? -1 : 1;
  }
  return a.length < b.length ? -1 : 1;
}

/** A UTF-16 unit's rank in code point order: surrogates (U+10000 up) after U+FFFF. */
function codePointOrder(unit) {
  if (unit < 0xd800) return unit;
  return unit < 0xe000 ? unit + 0x2000 : unit - 0x800;
}

export const process = definePlugin({
  process(topic, events) {
    const condition = Condition.fromParams();
    return events.map((event) => condition.decide(event.payload));
  },
});
