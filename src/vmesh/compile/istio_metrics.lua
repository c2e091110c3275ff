-- Istio's standard metrics on :15090/stats/prometheus, from Envoy's own output (vmesh, src/vmesh/compile/telemetry.py).
--
-- Each HTTP connection manager's stats access logger keeps three histograms, envoy_istio_{d,q,r} (duration, request
-- and response wire bytes), with one tag "k" packed per request: the reporter (s: the client's side, d: the
-- server's), the response code, the response flags, the gRPC status, the peer's address and, on the client's side,
-- the cluster, on the server's the client's certificate identity. This filter, on the stats listener, turns them
-- into istio_requests_total and the three istio_* histograms with Istio's labels: the proxy's own from the first
-- entry of peers.json, the peer's from its entry there (by address), the service from the cluster's name. Series
-- that end with the same labels are added up. Every other line of Envoy's output passes unchanged.

local PEERS = "@PEERS@"
local SEP = ";"

local FAMILIES = {d = "istio_request_duration_milliseconds", q = "istio_request_bytes", r = "istio_response_bytes"}
local COUNTERS = {o = "istio_tcp_connections_opened_total", c = "istio_tcp_connections_closed_total",
                  s = "istio_tcp_sent_bytes_total", x = "istio_tcp_received_bytes_total"}
local ORDER = {"istio_requests_total", "istio_request_duration_milliseconds", "istio_request_bytes",
               "istio_response_bytes", "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
               "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total"}

local function split(text, sep)
  local out = {}
  for part in (text .. sep):gmatch("(.-)" .. sep) do
    out[#out + 1] = part
  end
  return out
end

-- peers.json: {"peers":[SELF, PEER...], "metrics":[RULE...]}, each peer "ADDRESS WORKLOAD NAMESPACE APP VERSION
-- SERVICE-ACCOUNT CANONICAL REVISION" ("-": the app, the version); the proxy's own entry (address "self") adds
-- SERVICE TRUST-DOMAIN CLUSTER. A rule, from the Telemetry kind's metrics overrides, is "! REPORTER off METRIC",
-- "! REPORTER drop METRIC|* TAG" or "! REPORTER set METRIC|* TAG VALUE" (REPORTER: s or d), applied in order.
local function read_peers()
  local peers, me, entries = {}, nil, {}
  local rules = {}
  local f = io.open(PEERS, "r")
  if not f then
    return peers, nil, rules
  end
  local text = f:read("*a")
  f:close()
  for entry in text:gmatch('"([^"]*)"') do
    local fields = split(entry, " ")
    if fields[1] == "!" then
      rules[#rules + 1] = fields
    else
      entries[#entries + 1] = fields
    end
  end
  local first = nil  -- the other one-word strings are the keys ("peers", "metrics")
  for _, p in ipairs(entries) do
    if p[1] == "self" then
      first = p
      break
    end
  end
  if not first or #first ~= 11 then
    return peers, nil, rules
  end
  local domain, cluster = first[10], first[11]
  for _, p in ipairs(entries) do
    if #p >= 8 then
      local peer = {workload = p[2], namespace = p[3], app = p[4], version = p[5],
                    principal = "spiffe://" .. domain .. "/ns/" .. p[3] .. "/sa/" .. p[6],
                    canonical = (p[7] == "-") and p[4] or p[7], revision = (p[8] == "-") and p[5] or p[8],
                    service = p[9] or "unknown", cluster = cluster}
      if p[1] == "self" then
        me = peer
      else
        peers[p[1]] = peer
      end
    end
  end
  return peers, me, rules
end

local UNKNOWN = {workload = "unknown", namespace = "unknown", app = "unknown", version = "unknown",
                 principal = "unknown", canonical = "unknown", revision = "latest", service = "unknown",
                 cluster = "unknown"}

local function put(labels, name, value)
  labels[#labels + 1] = {name, value}
end

local function side(prefix, peer, labels)
  put(labels, prefix .. "_workload", peer.workload)
  put(labels, prefix .. "_workload_namespace", peer.namespace)
  put(labels, prefix .. "_principal", peer.principal)
  put(labels, prefix .. "_app", peer.app)
  put(labels, prefix .. "_version", peer.version)
  put(labels, prefix .. "_canonical_service", peer.canonical)
  put(labels, prefix .. "_canonical_revision", peer.revision)
  put(labels, prefix .. "_cluster", peer.cluster)
end

local function service_of(cluster)
  -- outbound|PORT|SUBSET|FQDN, or one of Istio's catch-all clusters
  local fqdn = cluster:match("^outbound|[^|]*|[^|]*|(.+)$")
  if fqdn then
    local name, namespace = fqdn:match("^([^.]+)%.([^.]+)")
    return fqdn, name or fqdn, namespace or "unknown"
  end
  if cluster == "" or cluster == "-" then
    return "unknown", "unknown", "unknown"
  end
  return cluster, cluster, "unknown"
end

local function host_of(address)
  return (address:gsub(":%d+$", ""))
end

-- The reporter ("s" or "d") and Istio labels ({name, value} in order) of one packed key, or nil when the key is
-- not one of ours.
local function labels_of(key, peers, me, tcp)
  local f = split(key, SEP)
  if #f ~= 6 or (f[1] ~= "s" and f[1] ~= "d") then
    return nil
  end
  local code, flags, grpc, address, extra = f[2], f[3], f[4], f[5], f[6]
  local labels = {}
  local mine = me or UNKNOWN
  if f[1] == "s" then
    local peer = peers[host_of(address)] or UNKNOWN
    local fqdn, name, namespace = service_of(extra)
    put(labels, "reporter", "source")
    side("source", mine, labels)
    side("destination", peer, labels)
    put(labels, "destination_service", fqdn)
    put(labels, "destination_service_name", name)
    put(labels, "destination_service_namespace", namespace)
    put(labels, "connection_security_policy", "unknown")
  else
    local peer = peers[address] or UNKNOWN
    local principal = (extra ~= "" and extra ~= "-") and extra or nil
    if principal and principal ~= peer.principal then
      -- a certificate that is not the one the address's host carries: trust the certificate, not the address
      peer = {workload = "unknown", namespace = principal:match("/ns/([^/]+)/") or "unknown", app = "unknown",
              version = "unknown", principal = principal, canonical = "unknown", revision = "latest",
              cluster = "unknown"}
    elseif not principal then
      peer = {workload = peer.workload, namespace = peer.namespace, app = peer.app, version = peer.version,
              principal = "unknown", canonical = peer.canonical, revision = peer.revision, cluster = peer.cluster}
    end
    local fqdn = mine.service
    put(labels, "reporter", "destination")
    side("source", peer, labels)
    side("destination", mine, labels)
    put(labels, "destination_service", fqdn)
    put(labels, "destination_service_name", fqdn:match("^([^.]+)") or fqdn)
    put(labels, "destination_service_namespace", mine.namespace)
    put(labels, "connection_security_policy", principal and "mutual_tls" or "none")
  end
  if tcp then  -- Istio's TCP metrics: no response code, no gRPC status
    put(labels, "request_protocol", "tcp")
    put(labels, "response_flags", flags)
    return f[1], labels
  end
  local protocol = (grpc ~= "" and grpc ~= "-") and "grpc" or "http"
  put(labels, "request_protocol", protocol)
  put(labels, "response_code", code)
  put(labels, "grpc_response_status", (protocol == "grpc") and grpc or "")
  put(labels, "response_flags", flags)
  return f[1], labels
end

-- The label text of one family's series on one reporter's side, after the rules; nil: the metric is off.
local function render(reporter, labels, family, rules)
  local out, drop, set = {}, {}, {}
  local order = {}
  for _, rule in ipairs(rules) do
    if rule[2] == reporter and (rule[4] == family or rule[4] == "*") then
      if rule[3] == "off" then
        return nil
      elseif rule[3] == "drop" and rule[5] then
        drop[rule[5]] = true
        set[rule[5]] = nil
      elseif rule[3] == "set" and rule[5] and rule[6] then
        drop[rule[5]] = nil
        if set[rule[5]] == nil then
          order[#order + 1] = rule[5]
        end
        set[rule[5]] = rule[6]
      end
    end
  end
  for _, pair in ipairs(labels) do
    local name = pair[1]
    if set[name] ~= nil then
      out[#out + 1] = name .. "=\"" .. set[name] .. "\""
      set[name] = nil
    elseif not drop[name] then
      out[#out + 1] = name .. "=\"" .. pair[2] .. "\""
    end
  end
  for _, name in ipairs(order) do
    if set[name] ~= nil then
      out[#out + 1] = name .. "=\"" .. set[name] .. "\""
    end
  end
  return table.concat(out, ",")
end

local function convert(text)
  local peers, me, rules = read_peers()
  local out, series, keys, texts = {}, {}, {}, {}
  local function add(family, kind, name, labels, value)
    local fam = series[family]
    if not fam then
      fam = {kind = kind, lines = {}, index = {}}
      series[family] = fam
    end
    local id = name .. "{" .. labels .. "}"
    local at = fam.index[id]
    if at then
      fam.lines[at][2] = fam.lines[at][2] + value
    else
      fam.lines[#fam.lines + 1] = {id, value}
      fam.index[id] = #fam.lines
    end
  end
  local function parse(key, tcp)
    local id = tcp and key .. "\t" or key
    local parsed = keys[id]
    if parsed == nil then
      local reporter, labels = labels_of(key, peers, me, tcp)
      parsed = reporter and {reporter, labels} or false
      keys[id] = parsed
    end
    return parsed
  end
  for line in text:gmatch("[^\n]+") do
    local short, suffix, key, rest, value = line:match('^envoy_istio_(%a)_(%a+){k="([^"]*)"(.-)} (%S+)$')
    local counter, ckey, cvalue = line:match('^envoy_istio_(%a){k="([^"]*)"} (%S+)$')
    if counter and COUNTERS[counter] then
      local parsed, number = parse(ckey, true), tonumber(cvalue)
      if parsed and number then
        local family = COUNTERS[counter]
        local labels = render(parsed[1], parsed[2], family, rules)
        if labels then
          add(family, "counter", family, labels, number)
        end
      end
    elseif short and FAMILIES[short] then
      local parsed = parse(key, false)
      local number = tonumber(value)
      if parsed and number then
        local function labels_for(family)
          local id = key .. "\n" .. family
          local found = texts[id]
          if found == nil then
            found = render(parsed[1], parsed[2], family, rules) or false
            texts[id] = found
          end
          return found
        end
        local family = FAMILIES[short]
        local labels = labels_for(family)
        local le = rest:match('le="([^"]*)"')
        if labels and suffix == "bucket" and le then
          add(family, "histogram", family .. "_bucket", labels .. ",le=\"" .. le .. "\"", number)
        elseif labels and (suffix == "sum" or suffix == "count") then
          add(family, "histogram", family .. "_" .. suffix, labels, number)
        end
        local total = (short == "d" and suffix == "count") and labels_for("istio_requests_total")
        if total then
          add("istio_requests_total", "counter", "istio_requests_total", total, number)
        end
      end
    elseif not line:match("^# TYPE envoy_istio_") then
      out[#out + 1] = line
    end
  end
  for _, family in ipairs(ORDER) do
    local fam = series[family]
    if fam then
      out[#out + 1] = "# TYPE " .. family .. " " .. fam.kind
      for _, entry in ipairs(fam.lines) do
        out[#out + 1] = entry[1] .. " " .. string.format("%.17g", entry[2])
      end
    end
  end
  return table.concat(out, "\n") .. "\n"
end

function envoy_on_response(handle)
  local body = handle:body()
  if body == nil then
    return
  end
  body:setBytes(convert(body:getBytes(0, body:length())))
end
