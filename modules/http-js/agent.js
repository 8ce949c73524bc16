// Calls an HTTP API the run's policy allows and reports what it answered.
//
// Input: the URL to fetch. Output: `<status> <body>`. `fetch` goes out
// through wasi:http, and the chassis host sends only requests whose host
// and port the policy lists; a refusal comes back as a rejected fetch,
// which the agent reports as its own `guest-error`.
import { agent, decode, log, AgentError } from "./chassis.js";

export const run = agent(async (input) => {
  const url = decode(input).trim();
  let reply;
  try {
    reply = await fetch(url);
  } catch (e) {
    log.warn("request refused", { url, error: String(e) });
    throw new AgentError("HttpRequestDenied", `GET ${url}: ${e}`);
  }
  const body = await reply.text();
  log.info("fetched", { url, status: reply.status });
  return `${reply.status} ${body}`;
});
