-- wrk: POST the redis example's body.
wrk.method = "POST"
wrk.body = '{"features": [1,2,3], "model_version": "default"}'
wrk.headers["Content-Type"] = "application/json"
