"""`python3 -m foobar_agent [serve]` from src/agent: the agent as the bootstrap runs it,
for trying it by hand."""

import sys

from . import entry

entry(sys.argv[1:])
