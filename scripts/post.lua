-- wrk: POST the benchmark body.
wrk.method = "POST"
wrk.body = '{"data": [1,2,3]}'
wrk.headers["Content-Type"] = "application/json"
