"""The first agent, in Python: greets whoever the input names."""

import chassis_agent as chassis


class Agent(chassis.Agent):
    def run(self, input: bytes) -> bytes:
        try:
            name = input.decode().strip() or "world"
        except UnicodeDecodeError:
            raise chassis.AgentError("bad-input", "the name must be UTF-8")
        chassis.log.info("greeting", name=name)
        return f"Hello, {name}!".encode()
