"""Writes a synthetic audit trail of N records that `tokengate audit verify` accepts, for the
start-up and throughput cases of bench/scale.sh (a gateway resumes its chain from the last record).

    python3 bench/trail.py N PATH KEY_FILE

Every record is a forwarded full update, sealed as the gateway seals it: HMAC-SHA256 over the
canonical JSON (RFC 8785) without `hash`. With ASCII text and integers only, canonical JSON is the
members sorted by name with no white space, which the templates below spell out.
"""

import hashlib
import hmac
import os
import sys

count, path, key_file = int(sys.argv[1]), sys.argv[2], sys.argv[3]
key = open(key_file, "rb").read().strip()
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
with open(path, "w", buffering=1 << 20) as out:
    for seq in range(1, count + 1):
        rest = tail % (prev, seq, seq)
        digest = hmac.new(key, (head + rest).encode(), hashlib.sha256).hexdigest()
        out.write(head + ',"hash":"' + digest + '"' + rest + "\n")
        prev = digest
    # On disk before the gateway starts: otherwise its first fdatasync writes back the whole file.
    out.flush()
    os.fsync(out.fileno())
