/**
 * Drops a record whose key was already seen within a time window. Stateful: the time
 * each key was last let through is kept in the plugin's state, which the broker
 * persists with the records and keeps across restarts and upgrades. A port of
 * plugins/dedup (Rust) that decides every record alike and shares its state format
 * (the key's bytes → the time as 8 big-endian bytes), so either can take over.
 *
 * Parameters:
 * - `window`: how long a key stays seen: a number with `ms`, `s`, `m`, `h` or `d`
 *   (default `10m`);
 * - `field`: a dotted JSON path to deduplicate by instead of the record key;
 * - `missing`: what to do with records without a key (or field): `keep` (default) or
 *   `drop`.
 *
 * Time is the record's own timestamp (the publish time), so replays decide alike. A key
 * seen once stays in the state until it is seen again: state grows with the number of
 * distinct keys.
 */

import { definePlugin, drop, keep, param, state } from '../../plugin-sdk/js/quiver-plugin.js';
import { get, text } from '../../plugin-sdk/js/quiver-json.js';

const UNITS = new Map([
  ['ms', 1n],
  ['s', 1000n],
  ['m', 60_000n],
  ['h', 3_600_000n],
  ['d', 86_400_000n],
]);

/** The window in ms (a u64, wrapping on overflow like the Rust release build). */
function parseWindow(s) {
  const digits = s.replace(/[A-Za-z]+$/, '');
  const unit = s.slice(digits.length);
  const n = /^\+?\d+$/.test(digits) ? BigInt(digits) : undefined;
  if (n === undefined || n > 0xffff_ffff_ffff_ffffn) {
    throw new Error(`\`window\` must be like 10m, not \`${s}\``);
  }
  const ms = UNITS.get(unit);
  if (ms === undefined) throw new Error(`\`window\` unit must be ms, s, m, h or d, not \`${unit}\``);
  return BigInt.asUintN(64, n * ms);
}

const utf8 = new TextEncoder();

/** The key to deduplicate `event` by, or undefined. */
function keyOf(event, path) {
  if (path === undefined) return event.key;
  let value;
  try {
    // field(parse(payload), path), without building the rest of the payload.
    value = get(event.payload, path);
  } catch (error) {
    if (error instanceof SyntaxError) return undefined;
    throw error;
  }
  return value === undefined ? undefined : utf8.encode(text(value));
}

/** A time as the state keeps it: 8 big-endian bytes. */
function encodeTime(ms) {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, ms);
  return bytes;
}

export const process = definePlugin({
  process(topic, events) {
    const window = parseWindow(param('window') ?? '10m');
    const path = param('field');
    const missingName = param('missing');
    let missing;
    if (missingName === undefined || missingName === 'keep') missing = keep;
    else if (missingName === 'drop') missing = drop;
    else throw new Error(`\`missing\` must be keep or drop, not \`${missingName}\``);
    return events.map((event) => {
      const key = keyOf(event, path);
      if (key === undefined) return missing;
      const time = BigInt(event.timestamp);
      const seen = state.get(key);
      if (seen?.length === 8) {
        const at = new DataView(seen.buffer, seen.byteOffset, 8).getBigUint64(0);
        if ((time > at ? time - at : 0n) < window) return drop;
      }
      state.set(key, encodeTime(time));
      return keep;
    });
  },
});
