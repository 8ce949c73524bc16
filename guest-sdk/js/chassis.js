// Write chassis agents in JavaScript.
//
// An agent is a WebAssembly component that a chassis host runs in a
// sandbox: it receives the request body as bytes and returns the response
// body, or throws an `AgentError`, which the host reports as the
// `guest-error` outcome with its code and message. This module hides the
// component-model bindings that `componentize-js` generates from
// `guest-sdk/wit`:
//
//     import { agent, decode, log, AgentError } from "./chassis.js";
//
//     export const run = agent((input) => {
//       const name = decode(input) || "world";
//       log.info("greeting", { name });
//       return `Hello, ${name}!`;
//     });
//
// Build it (`@bytecodealliance/componentize-js` from npm; `chassis new
// --lang js` writes this command into `build.sh`):
//
//     componentize-js --wit wit --world-name agent -o agent.wasm agent.js
//
// The handler may be `async` (for `fetch`, which goes out through
// wasi:http and only to hosts the run's policy allows). Anything it throws
// that is not an `AgentError` ends the run as a `trap`.
//
// Two engines run the same source: StarlingMonkey (componentize-js: full
// JavaScript with `fetch` and `console`, ~12 MB) and QuickJS
// (`componentize-qjs --sync`, shipped with jco: ~1.6 MB and faster to
// start, but without `fetch`, `console`, `TextEncoder` and `TextDecoder`:
// use `log` for output and `encode`/`decode` from here. Keep a QuickJS
// handler synchronous: its synchronous runtime turns a rejected promise
// into a trap, not into the `err` case).

import { log as hostLog, secret as hostSecret } from "chassis:agent/host@0.1.0";

/** An error the agent returns on purpose; the host reports it as
 * `guest-error` and passes `code` and `message` through unchanged. */
export class AgentError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.name = "AgentError";
    this.code = String(code);
    this.agentMessage = String(message);
    // componentize-js lowers a thrown value's `payload` as the `err` case.
    this.payload = { code: this.code, message: this.agentMessage };
  }
}

/** Why `secret` handed nothing over: `reason` is "denied" (the policy
 * grants no such secret) or "unavailable" (its source could not be read). */
export class SecretError extends Error {
  constructor(reason, detail) {
    super(`secret ${reason}: ${detail}`);
    this.name = "SecretError";
    this.reason = reason;
    this.detail = detail;
  }
}

/** Returns the value of a secret the run's policy grants by `name`, or
 * throws a `SecretError`. The host redacts the value from everything the
 * run prints or logs. */
export function secret(name) {
  try {
    return hostSecret(String(name));
  } catch (e) {
    const reason = e && e.payload;
    if (reason && (reason.tag === "denied" || reason.tag === "unavailable")) {
      throw new SecretError(reason.tag, reason.val);
    }
    throw e;
  }
}

function emit(level, message, fields) {
  const list = Object.entries(fields || {}).map(([key, value]) => ({
    key: String(key),
    value: String(value),
  }));
  hostLog(level, String(message), list);
}

/** The run's structured log: `log.info(message, { field: value })`.
 * Lines beyond the run's log budget are dropped and counted by the host. */
export const log = {
  trace: (message, fields) => emit("trace", message, fields),
  debug: (message, fields) => emit("debug", message, fields),
  info: (message, fields) => emit("info", message, fields),
  warn: (message, fields) => emit("warn", message, fields),
  error: (message, fields) => emit("error", message, fields),
};

/** `bytes` (a Uint8Array) decoded as UTF-8; throws a TypeError when they
 * are not UTF-8. Works on both engines (QuickJS has no TextDecoder). */
export function decode(bytes) {
  if (typeof TextDecoder !== "undefined") {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  }
  let out = "";
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i];
    const n = b < 0x80 ? 1 : b >= 0xc2 && b < 0xe0 ? 2 : b >= 0xe0 && b < 0xf0 ? 3 : b >= 0xf0 && b < 0xf5 ? 4 : 0;
    if (n === 0 || i + n > bytes.length) throw new TypeError("the bytes are not UTF-8");
    let cp = n === 1 ? b : b & (0xff >> (n + 1));
    for (let k = 1; k < n; k++) {
      const c = bytes[i + k];
      if ((c & 0xc0) !== 0x80) throw new TypeError("the bytes are not UTF-8");
      cp = (cp << 6) | (c & 0x3f);
    }
    if ((n === 3 && (cp < 0x800 || (cp >= 0xd800 && cp < 0xe000))) || (n === 4 && (cp < 0x10000 || cp > 0x10ffff))) {
      throw new TypeError("the bytes are not UTF-8");
    }
    out += String.fromCodePoint(cp);
    i += n;
  }
  return out;
}

/** `text` encoded as UTF-8 bytes. Works on both engines. */
export function encode(text) {
  if (typeof TextEncoder !== "undefined") return new TextEncoder().encode(text);
  const out = [];
  for (const ch of String(text)) {
    const cp = ch.codePointAt(0);
    if (cp < 0x80) out.push(cp);
    else if (cp < 0x800) out.push(0xc0 | (cp >> 6), 0x80 | (cp & 0x3f));
    else if (cp < 0x10000) out.push(0xe0 | (cp >> 12), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
    else out.push(0xf0 | (cp >> 18), 0x80 | ((cp >> 12) & 0x3f), 0x80 | ((cp >> 6) & 0x3f), 0x80 | (cp & 0x3f));
  }
  return new Uint8Array(out);
}

function toBytes(out) {
  if (out instanceof Uint8Array) return out;
  if (typeof out === "string") return encode(out);
  if (out instanceof ArrayBuffer) return new Uint8Array(out);
  if (out === undefined || out === null) return new Uint8Array(0);
  throw new TypeError(`run returned ${typeof out}; return a string or a Uint8Array`);
}

// An AgentError carries its `payload`, which the toolchain lowers as the
// `err` case; anything else thrown ends the run as a trap.
function toErr(e) {
  throw e;
}

/** Wraps the handler as the component's `run` export:
 * `export const run = agent((input) => ...)`. `input` is a `Uint8Array`;
 * return a string (sent as UTF-8) or a `Uint8Array`, or a promise of one. */
export function agent(handler) {
  return function run(input) {
    let out;
    try {
      out = handler(input);
    } catch (e) {
      toErr(e);
    }
    if (out && typeof out.then === "function") {
      return out.then(toBytes, toErr);
    }
    return toBytes(out);
  };
}
