// chassis-engines: starlingmonkey quickjs
// The first agent, in JavaScript: greets whoever the input names.
import { agent, decode, log, AgentError } from "./chassis.js";

export const run = agent((input) => {
  let name;
  try {
    name = decode(input).trim();
  } catch {
    throw new AgentError("bad-input", "the name must be UTF-8");
  }
  name = name || "world";
  log.info("greeting", { name });
  return `Hello, ${name}!`;
});
