-- wrk script: cycle over pre-generated requests read from a file, one per line.
--
--   wrk ... -s bench/cycle.lua <url> -- <method> <mode> <file> [<path>]
--
-- mode "body": each line is a request body sent to <path> (POST, JSON);
-- mode "path": each line is a request path (GET, no body).
-- Each thread starts at its own offset so threads do not send the same requests in step.
-- done() prints one line "BENCH_JSON {...}" with the totals and latency percentiles (in µs)
-- that the harness parses.

local threads = {}
local counter = 0

function setup(thread)
   thread:set("id", counter)
   counter = counter + 1
   table.insert(threads, thread)
end

local requests = {}
local n = 0
local i = 0

function init(args)
   local method, mode, file, path = args[1], args[2], args[3], args[4]
   local headers = {}
   if mode == "body" then
      headers["Content-Type"] = "application/json"
   end
   for line in io.lines(file) do
      if #line > 0 then
         n = n + 1
         if mode == "body" then
            requests[n] = wrk.format(method, path, headers, line)
         else
            requests[n] = wrk.format(method, line, headers, nil)
         end
      end
   end
   if n == 0 then
      error("no requests in " .. file)
   end
   i = ((id or 0) * 7919) % n
end

function request()
   i = i + 1
   if i > n then
      i = 1
   end
   return requests[i]
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      latency.min, latency.mean, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)))
end
