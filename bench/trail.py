"""Writes a synthetic audit trail of N records that `tokengate audit verify` accepts.

    python3 bench/trail.py N PATH KEY_FILE            forwarded full updates only (version 1)
    python3 bench/trail.py N PATH KEY_FILE changes    changes as a gateway writes them (version 2)

The first form serves the start-up and throughput cases of bench/scale.sh (a gateway resumes its
chain from the last record): every record is the outcome of a forwarded full update.

The second serves bench/query.sh (`tokengate audit query`): version 2 records with `origin`,
`before` and `changes` (SPEC §6.1), an `intent` then its `outcome` for each change with four
changes in flight (so the records of different requests interleave), one request in 50 refused
before forwarding (an `outcome` alone: 403 forbidden), four clients, token ids 1 to 10 000 in turn,
request ids with a per-process prefix as the gateway makes them (a new process, after a clean
shutdown, every million changes), and `ts` 2 ms apart from 2026-10-23T00:00:00Z. Every 10 000th
change is token 873's `remain_quota` from 500000 to 2000000 (the README's example).

Records are sealed as the gateway seals them: HMAC-SHA256 over the canonical JSON (RFC 8785)
without `hash`. With ASCII text and integers only, canonical JSON is the members sorted by name
with no white space, which the templates below spell out.
"""

import hashlib
import hmac
import os
import sys
import time
from collections import deque

count, path, key_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
mode = sys.argv[4] if len(sys.argv) > 4 else "updates"
key = open(key_file, "rb").read().strip()


def updates(out):
    request = (
        '{"allow_ips":"","expired_time":-1,"group":"","id":1,"model_limits":"",'
        '"model_limits_enabled":false,"name":"bench","remain_quota":500000,"unlimited_quota":false}'
    )
    head = '{"caller_request_id":null,"client":"bench","duration_ms":1'
    tail = (
        ',"method":"PUT","op":"update","outcome":"forwarded","path":"/api/token/","phase":"outcome",'
        '"prev":"%s","reason":null,"request":' + request + ',"request_id":"%032x","seq":%d,'
        '"source_ip":"127.0.0.1","status":200,"token_ids":[1],"ts":"2026-11-22T00:00:00.000Z",'
        '"upstream_message":"","upstream_status":200,"upstream_success":true,"v":1}'
    )
    prev = "0" * 64
    for seq in range(1, count + 1):
        rest = tail % (prev, seq, seq)
        digest = hmac.new(key, (head + rest).encode(), hashlib.sha256).hexdigest()
        out.write(head + ',"hash":"' + digest + '"' + rest + "\n")
        prev = digest


def changes(out):
    clients = ["team-a", "team-b", "secops", "ci"]
    start_ms = 1_792_713_600_000  # 2026-10-23T00:00:00Z
    second = [None, ""]

    def ts(seq):
        ms = start_ms + 2 * seq
        s = ms // 1000
        if second[0] != s:
            second[0], second[1] = s, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        return "%s.%03dZ" % (second[1], ms % 1000)

    def body(n, tid):
        quota = (500000, 2000000) if tid == 873 else (500000 + n % 7, 500000 + n % 7 + 1)
        request = (
            '{"expired_time":-1,"id":%d,"name":"bench-%d","remain_quota":%d,"unlimited_quota":false}'
            % (tid, tid, quota[1])
        )
        return quota, request

    state = {"prev": "0" * 64, "seq": 0}

    intent_rest = (
        ',"method":"PUT","op":"update","origin":"bench-1","path":"/api/token/","phase":"intent",'
        '"prev":"%s","request":%s,"request_id":"%s","seq":%d,"source_ip":"10.0.0.7",'
        '"token_ids":[%d],"ts":"%s","v":2}'
    )
    outcome_rest = (
        ',"method":"PUT","op":"update","origin":"bench-1","outcome":"%s","path":"/api/token/",'
        '"phase":"outcome","prev":"%s","reason":%s,"request":%s,"request_id":"%s","seq":%d,'
        '"source_ip":"10.0.0.7","status":%d,"token_ids":[%d],"ts":"%s","upstream_message":%s,'
        '"upstream_status":%s,"upstream_success":%s,"v":2}'
    )

    def intent(n, rid, tid, client):
        quota, request = body(n, tid)
        head = (
            '{"before":{"name":"bench-%d","remain_quota":%d,"status":1},"caller_request_id":null,'
            '"changes":[{"field":"remain_quota","from":%d,"to":%d}],"client":"%s"'
            % (tid, quota[0], quota[0], quota[1], client)
        )
        state["seq"] += 1
        rest = intent_rest % (state["prev"], request, rid, state["seq"], tid, ts(state["seq"]))
        digest = hmac.new(key, (head + rest).encode(), hashlib.sha256).hexdigest()
        out.write(head + ',"hash":"' + digest + '"' + rest + "\n")
        state["prev"] = digest

    def outcome(n, rid, tid, client, forwarded):
        _, request = body(n, tid)
        head = '{"caller_request_id":null,"client":"%s","duration_ms":%d' % (client, 2 + n % 5)
        state["seq"] += 1
        if forwarded:
            fields = ("forwarded", state["prev"], "null", request, rid, state["seq"], 200, tid,
                      ts(state["seq"]), '""', "200", "true")
        else:
            fields = ("rejected", state["prev"], '"forbidden"', request, rid, state["seq"], 403,
                      tid, ts(state["seq"]), "null", "null", "null")
        rest = outcome_rest % fields
        digest = hmac.new(key, (head + rest).encode(), hashlib.sha256).hexdigest()
        out.write(head + ',"hash":"' + digest + '"' + rest + "\n")
        state["prev"] = digest

    in_flight = deque()
    n = 0
    while state["seq"] < count:
        room = count - state["seq"] - len(in_flight)
        if n % 1_000_000 == 0 and in_flight:
            # A clean restart: the last process wrote every outcome first.
            while in_flight:
                outcome(*in_flight.popleft(), True)
            continue
        if room >= 1:
            process = 0x5EED_0000_0000_0000 + n // 1_000_000
            rid = "%016x%016x" % (process, n)
            tid = 873 if n % 10_000 == 0 else n % 10_000 + 1
            client = clients[n % 4]
            if n % 50 == 49 or room == 1:
                outcome(n, rid, tid, client, False)
            else:
                intent(n, rid, tid, client)
                in_flight.append((n, rid, tid, client))
            n += 1
            if len(in_flight) > 4:
                outcome(*in_flight.popleft(), True)
        else:
            outcome(*in_flight.popleft(), True)


with open(path, "w", buffering=1 << 20) as out:
    if mode == "changes":
        changes(out)
    elif mode == "updates":
        updates(out)
    else:
        sys.exit("mode is `updates` (the default) or `changes`")
    # On disk before the gateway starts: otherwise its first fdatasync writes back the whole file.
    out.flush()
    os.fsync(out.fileno())
