// chassis-engines: starlingmonkey quickjs
// Hostile, in JavaScript: the Rust hostile corpus's attacks from one agent.
//
// The input names the attack (like `modules/lib/probe`): `spin` loops
// forever, `hoard` keeps every MiB it allocates, `secret NAME` asks for a
// secret, `leak NAME` prints a granted secret to stdout and stderr, logs it
// and returns it, `get URL` makes an HTTP request, and `sleep MS` holds its
// sandbox that long without using a thread (StarlingMonkey only: QuickJS's
// runtime has no timers). StarlingMonkey gives
// JavaScript no filesystem API, so the file escapes have no JS twin: the
// only files a JS agent could reach are the policy's preopens, and it has
// no call that opens them.
import { agent, decode, log, secret, AgentError, SecretError } from "./chassis.js";

// Synchronous but for `get`: QuickJS's synchronous runtime cannot turn a
// rejected promise into the `err` case, so only `fetch` waits.
export const run = agent((input) => {
  const request = decode(input).trim();
  const space = request.indexOf(" ");
  const op = space < 0 ? request : request.slice(0, space);
  const arg = space < 0 ? "" : request.slice(space + 1);
  switch (op) {
    case "spin": {
      let n = 0;
      for (;;) n++;
    }
    case "sleep":
      if (typeof setTimeout === "undefined") {
        throw new AgentError("Unsupported", "this engine has no timers");
      }
      return new Promise((done) => setTimeout(() => done("slept"), Number(arg)));
    case "hoard": {
      const kept = [];
      for (;;) {
        const block = new Uint8Array(1 << 20);
        block.fill(1);
        kept.push(block);
      }
    }
    case "secret":
      try {
        return secret(arg);
      } catch (e) {
        if (e instanceof SecretError) throw new AgentError(e.reason, e.detail);
        throw e;
      }
    case "leak": {
      const value = secret(arg);
      // QuickJS's runtime has no console: there the log and the output
      // carry the value.
      if (typeof console !== "undefined") {
        console.log(`stdout has ${value}`);
        console.error(`stderr has ${value}`);
      }
      log.info(`the log has ${value}`, { value });
      return `the value is ${value}`;
    }
    case "get": {
      if (typeof fetch === "undefined") {
        throw new AgentError("Unsupported", "this engine has no fetch");
      }
      return (async () => {
        let reply;
        try {
          reply = await fetch(arg);
        } catch (e) {
          throw new AgentError("HttpRequestDenied", String(e));
        }
        return await reply.text();
      })();
    }
    default:
      throw new AgentError("InvalidInput", `unknown op \`${op}\``);
  }
});
