/**
 * Write Quiver plugins in JavaScript.
 *
 * A plugin is a WebAssembly component implementing the `quiver:plugin` world
 * (`plugin-sdk/wit/quiver.wit`). This module is the JavaScript counterpart of the Rust
 * SDK: {@link definePlugin} turns a per-event `onEvent` (or a whole-batch `process`)
 * into the component's `process` export, and the host functions come as {@link param},
 * {@link params}, {@link now}, {@link log} and {@link state}.
 *
 * ```js
 * import { definePlugin, keep, drop } from './quiver-plugin.js';
 *
 * const E = 'E'.charCodeAt(0);
 *
 * export const process = definePlugin({
 *   onEvent(topic, event) {
 *     return event.payload[0] === E ? keep : drop;
 *   },
 * });
 * ```
 *
 * Build with componentize-js (StarlingMonkey) with every WASI feature disabled, from a
 * directory that holds the entry and every module it imports:
 *
 * ```sh
 * componentize-js "$PWD/my-plugin.js" --wit plugin-sdk/wit --world-name plugin \
 *     -d stdio random clocks http fetch-event -o my-plugin.wasm
 * ```
 *
 * The engine without WASI has no output and no clock: `console.*` is routed to the
 * broker's log by this module, `Date.now()` and `new Date()` are frozen at build time
 * (use {@link now}), and `Math.random()` repeats the same sequence in every instance
 * unless the `random` feature is kept (Quiver links `wasi:random`).
 *
 * @module quiver-plugin
 */

import {
  log as hostLog,
  now as hostNow,
  param as hostParam,
  params as hostParams,
  stateGet,
  stateSet,
  stateDelete,
} from 'quiver:plugin/host@0.1.0';

/**
 * A record header.
 * @typedef {object} Header
 * @property {string} name
 * @property {Uint8Array} value
 */

/**
 * A record as a plugin sees it.
 * @typedef {object} Event
 * @property {number} offset Its offset in the topic; on ingress, its position in the
 *     publish (0, 1, 2…).
 * @property {number} timestamp When it was appended (on ingress: published), in ms
 *     since the Unix epoch.
 * @property {Uint8Array | undefined} key
 * @property {Header[]} headers In the order published.
 * @property {Uint8Array} payload
 */

/**
 * Bytes: a `Uint8Array`, or a string (stored as UTF-8).
 * @typedef {Uint8Array | string} Bytes
 */

/**
 * A record a plugin makes (the broker assigns offset and timestamp). A bare payload
 * stands for a record with no key or headers.
 * @typedef {{ key?: Bytes, headers?: { name: string, value: Bytes }[], payload: Bytes } | Bytes} NewEvent
 */

/**
 * What becomes of one event: {@link keep}, {@link drop}, or what {@link replace},
 * {@link route} or {@link reject} return. `true` and `false` stand for keep and drop.
 * @typedef {{ tag: 'keep' } | { tag: 'drop' } | { tag: 'replace', val: NewEvent[] }
 *     | { tag: 'route', val: string[] } | { tag: 'reject', val: string } | boolean} Outcome
 */

/**
 * A plugin: `onEvent` decides one event at a time (the default keeps it); `process`,
 * if given, decides the whole batch instead and returns one outcome per event, in
 * order. Either may throw to fail the whole batch: every event of it goes to the
 * dead-letter topic with the message of what was thrown.
 * @typedef {object} Plugin
 * @property {(topic: string, event: Event) => Outcome} [onEvent]
 * @property {(topic: string, events: Event[]) => Iterable<Outcome> | Promise<Iterable<Outcome>>} [process]
 */

/** Passes the event on unchanged. */
export const keep = Object.freeze({ tag: 'keep' });

/** Removes the event. */
export const drop = Object.freeze({ tag: 'drop' });

/**
 * Replaces the event with these records, in order (none: the same as {@link drop}).
 * @param {...(NewEvent | NewEvent[])} records
 * @returns {Outcome}
 */
export function replace(...records) {
  return { tag: 'replace', val: records.flat() };
}

/**
 * Sends the event, unchanged, to these topics instead of its own (name its own topic
 * to keep a copy there). Ingress only.
 * @param {...(string | string[])} topics
 * @returns {Outcome}
 */
export function route(...topics) {
  return { tag: 'route', val: topics.flat() };
}

/**
 * Refuses the event: it goes to the topic's dead-letter topic with this reason.
 * @param {string} reason
 * @returns {Outcome}
 */
export function reject(reason) {
  return { tag: 'reject', val: reason };
}

/**
 * Makes a plugin the component's `process` export:
 * `export const process = definePlugin({ onEvent(topic, event) { … } })`.
 *
 * What the plugin throws fails the batch (`err` in the contract) with the thrown
 * `Error`'s message, or `Name: message` for other errors (a `TypeError` from a bug),
 * which are also logged with their stack. An `Error` thrown on purpose, like Rust's
 * `Err(String)`, thus fails the batch with exactly its message.
 *
 * @param {Plugin} plugin
 * @returns {(topic: string, events: Event[]) => unknown} the `process` export
 */
export function definePlugin(plugin) {
  const run = plugin.process
    ? plugin.process.bind(plugin)
    : (topic, events) => events.map((event) => (plugin.onEvent ? plugin.onEvent(topic, event) : keep));
  return function process(topic, events) {
    try {
      for (let i = 0; i < events.length; i++) {
        events[i].offset = Number(events[i].offset);
        events[i].timestamp = Number(events[i].timestamp);
      }
      const outcomes = run(topic, events);
      return typeof outcomes?.then === 'function' ? outcomes.then(ok, failed) : ok(outcomes);
    } catch (error) {
      return failed(error);
    }
  };
}

/** The `ok` result of a call, with the outcomes checked and put in the contract's form. */
function ok(outcomes) {
  try {
    return { tag: 'ok', val: list(outcomes).map(lower) };
  } catch (error) {
    return failed(error);
  }
}

/**
 * An array of what an iterable holds. (Iterating costs ~4 µs a step in this engine, so
 * arrays, the common case, are not iterated.)
 */
function list(items) {
  return Array.isArray(items) ? items : Array.from(items);
}

/** The `err` result of a call that threw `error`. */
function failed(error) {
  if (error instanceof Error && error.name === 'Error') {
    return { tag: 'err', val: error.message };
  }
  if (error instanceof Error) {
    hostLog('error', error.stack ? `${error}\n${error.stack}` : String(error));
  }
  return { tag: 'err', val: String(error) };
}

/** An outcome as the component's bindings take it. */
function lower(outcome, index) {
  if (outcome === true) return keep;
  if (outcome === false) return drop;
  switch (outcome?.tag) {
    case 'keep':
    case 'drop':
      return outcome;
    case 'replace':
      return { tag: 'replace', val: list(outcome.val).map(newEvent) };
    case 'route':
      return { tag: 'route', val: list(outcome.val).map(String) };
    case 'reject':
      return { tag: 'reject', val: String(outcome.val) };
  }
  throw new TypeError(`outcome ${index} is not an outcome: ${show(outcome)}`);
}

/** A record as the component's bindings take it. */
function newEvent(record) {
  if (typeof record === 'string' || record instanceof Uint8Array) {
    return { key: undefined, headers: [], payload: bytes(record) };
  }
  const { key, headers = [], payload } = record;
  return {
    key: key === undefined || key === null ? undefined : bytes(key),
    headers: list(headers).map((h) => ({ name: String(h.name), value: bytes(h.value) })),
    payload: bytes(payload),
  };
}

const utf8 = new TextEncoder();

/**
 * Bytes as a `Uint8Array` (strings as UTF-8).
 * @param {Bytes} value
 * @returns {Uint8Array}
 */
function bytes(value) {
  if (value instanceof Uint8Array) return value;
  if (typeof value === 'string') return utf8.encode(value);
  if (ArrayBuffer.isView(value)) return new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  throw new TypeError(`expected bytes (a Uint8Array or a string), not ${show(value)}`);
}

/**
 * The first header of `event` with this name, if any.
 * @param {Event} event
 * @param {string} name
 * @returns {Uint8Array | undefined}
 */
export function header(event, name) {
  return event.headers.find((h) => h.name === name)?.value;
}

/**
 * The event as a new record, to modify and return in {@link replace}.
 * @param {Event} event
 * @returns {{ key: Uint8Array | undefined, headers: Header[], payload: Uint8Array }}
 */
export function toNew(event) {
  return {
    key: event.key,
    headers: event.headers.map((h) => ({ name: h.name, value: h.value })),
    payload: event.payload,
  };
}

/**
 * The attachment's parameter `name` (`--param name=value`), if set.
 * @param {string} name
 * @returns {string | undefined}
 */
export function param(name) {
  return hostParam(name);
}

/**
 * Every parameter of the attachment, as `[name, value]` pairs.
 * @returns {[string, string][]}
 */
export function params() {
  return hostParams();
}

/**
 * The current time in ms since the Unix epoch: the only clock a plugin has
 * (`Date.now()` is frozen at build time).
 * @returns {number}
 */
export function now() {
  return Number(hostNow());
}

/**
 * Logging into the broker's log, tagged with the plugin's name and version. Arguments
 * are joined with spaces, like `console.log`'s; `console.*` writes here too. The broker
 * keeps up to 100 lines per call.
 */
export const log = {
  /** @param {...unknown} args */
  trace: (...args) => write('trace', args),
  /** @param {...unknown} args */
  debug: (...args) => write('debug', args),
  /** @param {...unknown} args */
  info: (...args) => write('info', args),
  /** @param {...unknown} args */
  warn: (...args) => write('warn', args),
  /** @param {...unknown} args */
  error: (...args) => write('error', args),
};

function write(level, args) {
  hostLog(level, args.map((arg) => (typeof arg === 'string' ? arg : show(arg))).join(' '));
}

/** A value as text for a message. */
function show(value) {
  if (value instanceof Error) return value.stack ? `${value}\n${value.stack}` : String(value);
  if (typeof value === 'object' && value !== null && !(value instanceof Uint8Array)) {
    try {
      return JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? String(v) : v));
    } catch {
      // A cycle: fall back to String.
    }
  }
  return String(value);
}

// Without the stdio feature the engine drops console output: send it to the log.
console.trace = log.trace;
console.debug = log.debug;
console.log = log.info;
console.info = log.info;
console.warn = log.warn;
console.error = log.error;

/**
 * The plugin's key-value state: per plugin name (shared by its attachments, kept across
 * restarts and upgrades) and persisted with the records of the call that changed it.
 * Keys up to 1 KiB, values up to 256 KiB, 4 MiB written per call: beyond that the call
 * fails.
 */
export const state = {
  /**
   * The value under `key`, if any.
   * @param {Bytes} key
   * @returns {Uint8Array | undefined}
   */
  get(key) {
    return stateGet(bytes(key));
  },

  /**
   * Sets `key` to `value`.
   * @param {Bytes} key
   * @param {Bytes} value
   */
  set(key, value) {
    stateSet(bytes(key), bytes(value));
  },

  /**
   * Removes `key`.
   * @param {Bytes} key
   */
  delete(key) {
    stateDelete(bytes(key));
  },
};
