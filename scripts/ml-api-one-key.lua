-- wrk: POST one prediction under one X-API-Key: after its 20 a minute, a flood of 429s.
wrk.method = "POST"
wrk.body = '{"features": [6.0, 2.7, 4.1, 1.3]}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-Key"] = "one-abusive-key"
