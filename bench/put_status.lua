-- One audited write per request: a status-only update of token 1 (an intent and an outcome record).
wrk.method = "PUT"
wrk.path = "/api/token/?status_only=true"
wrk.body = '{"id":1,"status":1}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer tg_bench_key_not_secret_0123456789abcdef0123456789abcdef"
