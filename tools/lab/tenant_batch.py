"""keylime_tenant for many command lines in one process: `python -c <this file> <marker> < commands.json`.

Starting the tenant costs about as much as one command does; enrolling a fleet of agents one process at a
time would take minutes. Each command line (a JSON list of lists on stdin) runs through keylime's own
entry point, as `keylime_tenant <args>` would; the exit status of each is printed last, after the marker.
"""

import json
import sys

# keylime lives in venv-lab, where this runs, not in the venv mypy checks
from keylime.cmd import tenant  # type: ignore[import-not-found]

marker = sys.argv[1]
statuses = []
for args in json.load(sys.stdin):
    sys.argv = ["keylime_tenant", *args]
    try:
        tenant.main()
    except SystemExit as exit_:
        statuses.append(exit_.code if isinstance(exit_.code, int) else 1)
    else:
        statuses.append(0)
print(marker, json.dumps(statuses), flush=True)
