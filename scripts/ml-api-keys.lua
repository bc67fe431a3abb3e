-- wrk: POST one prediction to /predict under a new X-API-Key each time (every request is a
-- new free-tier caller: admitted, so the whole path runs, model included).
wrk.method = "POST"
wrk.body = '{"features": [6.0, 2.7, 4.1, 1.3]}'
wrk.headers["Content-Type"] = "application/json"
local n = 0
local thread_tag = tostring(math.random(1000000000))
request = function()
  n = n + 1
  wrk.headers["X-API-Key"] = "bench-" .. thread_tag .. "-" .. n
  return wrk.format()
end
