-- wrk script: POST one-row /predict bodies, cycling through the ones in BODIES_FILE (one per line),
-- and print the latency percentiles and error counts as one JSON line at the end.
-- wrk's own status count misses 1xx and 3xx answers: every answer that is not a 2xx is counted here.
local bodies = {}
local index = 0
local threads = {}
non_2xx = 0 -- global in each thread's Lua state, read by done() through thread:get

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines(os.getenv("BODIES_FILE")) do
    bodies[#bodies + 1] = line
  end
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  index = index % #bodies + 1
  return wrk.format(nil, nil, nil, bodies[index])
end

function response(status, headers, body)
  if status < 200 or status > 299 then
    non_2xx = non_2xx + 1
  end
end

function done(summary, latency, requests)
  local errors = summary.errors
  local answered_badly = 0
  for _, thread in ipairs(threads) do
    answered_badly = answered_badly + thread:get("non_2xx")
  end
  io.write(string.format(
    'RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "connect": %d, "read": %d, "write": %d, "non_2xx": %d, "timeout": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    errors.connect, errors.read, errors.write, answered_badly, errors.timeout))
end
