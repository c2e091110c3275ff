-- wrk at a fixed request rate, for bench/datapath.py: wrk alone sends as fast as it can.
--
--     wrk -t1 -c10 -d10s -s paced.lua URL -- INTERVAL_MS [LAST_MS]
--
-- Before each request, delay() takes the thread's next slot, INTERVAL_MS after the one before, and waits for it
-- (wrk waits whole milliseconds: a request goes out within a millisecond of its slot, the rate is exact). Slots
-- more than 100 ms in the past are dropped rather than sent in a burst. wrk times each request from its write to
-- the end of its answer, in microseconds; done() prints one JSON line with the counts and percentiles. With
-- LAST_MS, no request goes out later than LAST_MS after the first: when wrk stops, none is on its way (a request
-- cut off closes the proxies' pooled connection it was on).

local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } paced_timespec;
int clock_gettime(int clock, paced_timespec *now);
]]
local CLOCK_MONOTONIC = 1
local now_ts = ffi.new("paced_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, now_ts)
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end

local interval_ms, last_ms, slot_ms, first_ms
local NEVER_MS = 3600000 -- a delay that outlasts any run

function init(args)
  interval_ms = tonumber(args[1])
  if interval_ms == nil or interval_ms <= 0 then
    error("paced.lua: the interval between requests in milliseconds is its argument")
  end
  last_ms = tonumber(args[2])
end

function delay()
  local now = now_ms()
  first_ms = first_ms or now
  if last_ms ~= nil and now - first_ms >= last_ms then
    return NEVER_MS
  end
  if slot_ms == nil or slot_ms < now - 100 then
    slot_ms = now
  end
  slot_ms = slot_ms + interval_ms
  local wait = slot_ms - now
  if wait <= 0 then
    return 0
  end
  return math.floor(wait + 0.5)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "duration_us": %d, "bytes": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d', summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout))
  for _, p in ipairs({ 50, 90, 99 }) do
    io.write(string.format(', "p%d_us": %d', p, latency:percentile(p)))
  end
  io.write(string.format(', "max_us": %d, "mean_us": %.1f}\n', latency.max, latency.mean))
end
