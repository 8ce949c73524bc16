"""Calls an HTTP API the run's policy allows and reports what it answered.

Input: the URL to fetch. Output: `<status> <body>`. A host the policy does
not list is refused by the chassis host; the agent reports that refusal as
its own `guest-error` with the `wasi:http` error code.
"""

import chassis_agent as chassis
from chassis_agent import http


class Agent(chassis.Agent):
    def run(self, input: bytes) -> bytes:
        url = input.decode().strip()
        try:
            reply = http.get(url)
        except http.HttpError as err:
            chassis.log.warn("request refused", url=url, code=err.code)
            raise chassis.AgentError(err.code, f"GET {url}: {err.detail or err.code}")
        chassis.log.info("fetched", url=url, status=reply.status)
        return f"{reply.status} ".encode() + reply.body
