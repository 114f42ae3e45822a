#!/usr/bin/env python3
"""A bank account service that takes part in Arbiter transactions over plain
HTTP/JSON, written from the README alone ("Participants over HTTP"), with the
Python standard library only.

It serves 2PC (prepare/commit/rollback), TCC (try/confirm/cancel) and saga
steps (action/compensate) under one base URL. A branch's payload is JSON:
{"account": "alice", "delta": -30} (an integer delta). In 2PC and TCC,
debits are reserved in phase 1 (so no transfer overdraws an account) and
credits land in phase 2. A saga action applies the change at once and its
compensation undoes it, whatever happened since (a spent saga credit is
taken back even if the account goes below zero: a compensation must not
fail).

Every call is idempotent, keyed by (txn_id, branch_id): a repeat answers as
the first did, a rollback/cancel/compensation with nothing to undo is
remembered (so a late prepare/try/action is refused).

    python3 bank.py --port 9100 --accounts alice=100,bob=50
    GET /balances -> {"alice": 100, "bob": 50}
    GET /pending  -> {"held": 0}   (branches holding work, waiting for phase 2)
"""

import argparse
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
BALANCES = {}
# (txn_id, branch_id) -> {"state": "held"|"settled"|"released"|"refused",
#                         "account": str, "delta": int, "reason": str}
BRANCHES = {}

PHASE1 = {"prepare", "try", "action"}
SETTLE = {"commit", "confirm"}
RELEASE = {"rollback", "cancel", "compensate"}


def payload_of(call):
    if "payload_json" in call:
        return call["payload_json"]
    return json.loads(base64.b64decode(call.get("payload", "")) or b"{}")


def phase1(key, name, payload):
    """A vote: yes (work held), or no with a reason."""
    seen = BRANCHES.get(key)
    if seen is not None:
        if seen["state"] == "released":
            return {"vote": "no", "reason": "this branch was already rolled back"}
        if seen["state"] == "refused":
            return {"vote": "no", "reason": seen["reason"]}
        return {"vote": "yes"}
    account, delta = payload["account"], payload["delta"]
    if type(delta) is not int:
        raise ValueError("delta must be an integer")
    if account not in BALANCES:
        BRANCHES[key] = {"state": "refused", "reason": f"no account {account}"}
        return {"vote": "no", "reason": f"no account {account}"}
    if delta < 0 and BALANCES[account] + delta < 0:
        reason = f"insufficient funds in {account}"
        BRANCHES[key] = {"state": "refused", "reason": reason}
        return {"vote": "no", "reason": reason}
    # Debits are taken now; a saga action applies credits at once too.
    if delta < 0 or name == "action":
        BALANCES[account] += delta
    BRANCHES[key] = {"state": "held", "account": account, "delta": delta, "call": name}
    return {"vote": "yes"}


def settle(key):
    seen = BRANCHES.get(key)
    if seen is None or seen["state"] != "held" and seen["state"] != "settled":
        # Never prepared here: refuse to guess (the coordinator retries and
        # flags the branch stuck for an operator).
        return None
    if seen["state"] == "held" and seen["delta"] > 0:
        BALANCES[seen["account"]] += seen["delta"]
    seen["state"] = "settled"
    return {}


def release(key):
    seen = BRANCHES.get(key)
    if seen is None:
        BRANCHES[key] = {"state": "released"}
        return {}
    if seen["state"] == "held":
        # Undo what phase 1 (or the saga action) applied.
        if seen["delta"] < 0 or seen.get("call") == "action":
            BALANCES[seen["account"]] -= seen["delta"]
        seen["state"] = "released"
    elif seen["state"] == "refused":
        seen["state"] = "released"
    return {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/balances":
            with LOCK:
                self.answer(200, dict(BALANCES))
        elif self.path == "/pending":
            with LOCK:
                held = sum(
                    1 for b in BRANCHES.values()
                    if b["state"] == "held" and b.get("call") != "action"
                )
                self.answer(200, {"held": held})
        else:
            self.answer(404, {"error": "not found"})

    def do_POST(self):
        name = self.path.rstrip("/").rsplit("/", 1)[-1]
        length = int(self.headers.get("Content-Length", "0"))
        try:
            call = json.loads(self.rfile.read(length))
            key = (str(call["txn_id"]), str(call["branch_id"]))
        except (ValueError, KeyError, TypeError) as e:
            self.answer(400, {"error": f"bad call: {e}"})
            return
        with LOCK:
            if name in PHASE1:
                # Only phase 1 reads the payload: phase 2 needs the ids
                # alone, so a bad payload can never block a rollback.
                try:
                    self.answer(200, phase1(key, name, payload_of(call)))
                except (KeyError, ValueError, TypeError, OverflowError) as e:
                    self.answer(422, {"error": f"bad payload: {e}"})
            elif name in SETTLE:
                done = settle(key)
                if done is None:
                    self.answer(500, {"error": "commit for a branch not prepared here"})
                else:
                    self.answer(200, done)
            elif name in RELEASE:
                self.answer(200, release(key))
            else:
                self.answer(404, {"error": f"no call {name}"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--accounts", default="alice=100")
    args = parser.parse_args()
    for pair in args.accounts.split(","):
        name, balance = pair.split("=")
        BALANCES[name] = int(balance)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
