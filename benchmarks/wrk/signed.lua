-- wrk script: pre-signed, distinct requests, each sent once.
-- Usage: wrk -t N -c C -d D -s signed.lua URL -- PREFIX
-- Thread k (0-based) sends the lines of PREFIX.k in order, each "<hex signature> <json body>", so no
-- body repeats within a run. wrk calls delay() before each request(): delay() hands out the lines
-- (a connection that finds none left goes idle), so request() never runs past the last one. Once
-- every answer to its lines is in, the thread writes PREFIX.k.done and stops (the bench then ends
-- wrk with SIGINT). done() prints one line: BENCH_WRK {json}.
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  prefix = args[1]
  prepared, statuses, reserved, index, responses = {}, {}, 0, 0, 0
  local headers
  for line in io.lines(prefix .. "." .. id) do
    local space = line:find(" ", 1, true)
    headers = {
      ["Content-Type"] = "application/json",
      ["X-Offerte-Adviseur-Signature"] = line:sub(1, space - 1),
    }
    prepared[#prepared + 1] = wrk.format("POST", wrk.path, headers, line:sub(space + 1))
  end
  n_prepared = #prepared
end

function delay()
  if reserved >= n_prepared then
    return 3600000
  end
  reserved = reserved + 1
  return 0
end

function request()
  if reserved == 0 then
    -- wrk calls request() once before the run, on thread 0, to check the script: consume nothing.
    return prepared[1]
  end
  index = index + 1
  return prepared[index]
end

function response(status)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  responses = responses + 1
  if responses == n_prepared then
    io.open(prefix .. "." .. id .. ".done", "w"):close()
    wrk.thread:stop()
  end
end

function done(summary, latency)
  local total, sent, exhausted = {}, 0, 0
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + count
    end
    sent = sent + thread:get("index")
    if thread:get("reserved") >= thread:get("n_prepared") then
      exhausted = exhausted + 1
    end
  end
  local parts = {}
  for status, count in pairs(total) do
    parts[#parts + 1] = string.format('"%s":%d', status, count)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_WRK {"duration_us":%d,"requests":%d,"sent":%d,"exhausted_threads":%d,"statuses":{%s},'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p99":%d,"max":%d}}\n',
    summary.duration, summary.requests, sent, exhausted, table.concat(parts, ","),
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
end
