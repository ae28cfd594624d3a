"""`python -m pollama.server.create_job`: one /api/create, run in a child process.

Creating converts and quantizes weights with ggml's native code, which the server process
never runs. The job reads {"model", "commands": [[name, args], ...], "base_dir", "quantize"}
on stdin and prints JSON lines: {"status": ...} as create goes, then {"status": "success"}
or {"error": ..., "status_code": 400|500}.
"""

from __future__ import annotations

import json
import logging
import sys


def _say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> int:
    logging.basicConfig(level=logging.ERROR)
    from pollama.create.modelfile import Command, Modelfile
    from pollama.create.pipeline import create_model
    from pollama.errors import user_errors
    from pollama.store.store import Store

    try:
        job = json.loads(sys.stdin.read())
        modelfile = Modelfile([Command(name, args) for name, args in job["commands"]])
        create_model(Store(), job["model"], modelfile, job.get("base_dir") or ".", quantize=job.get("quantize") or None,
                     status=lambda line: _say({"status": line}))
    except user_errors() as e:
        _say({"error": str(e).strip() or type(e).__name__, "status_code": 400})
        return 1
    except Exception as e:  # noqa: BLE001 - reported to the client as a 500
        _say({"error": f"{type(e).__name__}: {e}", "status_code": 500})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
