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
local ORDER = {"istio_requests_total", "istio_request_duration_milliseconds", "istio_request_bytes",
               "istio_response_bytes"}

local function split(text, sep)
  local out = {}
  for part in (text .. sep):gmatch("(.-)" .. sep) do
    out[#out + 1] = part
  end
  return out
end

-- peers.json: {"peers":[SELF, PEER...]}, each "ADDRESS WORKLOAD NAMESPACE APP VERSION SERVICE-ACCOUNT CANONICAL
-- REVISION" ("-": the app, the version); the proxy's own entry (address "self") adds SERVICE TRUST-DOMAIN CLUSTER.
local function read_peers()
  local peers, me, entries = {}, nil, {}
  local f = io.open(PEERS, "r")
  if not f then
    return peers, nil
  end
  local text = f:read("*a")
  f:close()
  for entry in text:gmatch('"([^"]*)"') do
    entries[#entries + 1] = split(entry, " ")
  end
  local first = entries[2]  -- entries[1] is the key "peers"
  if not first or first[1] ~= "self" or #first ~= 11 then
    return peers, nil
  end
  local domain, cluster = first[10], first[11]
  for i = 2, #entries do
    local p = entries[i]
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
  return peers, me
end

local UNKNOWN = {workload = "unknown", namespace = "unknown", app = "unknown", version = "unknown",
                 principal = "unknown", canonical = "unknown", revision = "latest", service = "unknown",
                 cluster = "unknown"}

local function side(prefix, peer, labels)
  labels[#labels + 1] = prefix .. "_workload=\"" .. peer.workload .. "\""
  labels[#labels + 1] = prefix .. "_workload_namespace=\"" .. peer.namespace .. "\""
  labels[#labels + 1] = prefix .. "_principal=\"" .. peer.principal .. "\""
  labels[#labels + 1] = prefix .. "_app=\"" .. peer.app .. "\""
  labels[#labels + 1] = prefix .. "_version=\"" .. peer.version .. "\""
  labels[#labels + 1] = prefix .. "_canonical_service=\"" .. peer.canonical .. "\""
  labels[#labels + 1] = prefix .. "_canonical_revision=\"" .. peer.revision .. "\""
  labels[#labels + 1] = prefix .. "_cluster=\"" .. peer.cluster .. "\""
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

-- The Istio labels of one packed key, or nil when the key is not one of ours.
local function labels_of(key, peers, me)
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
    labels[1] = "reporter=\"source\""
    side("source", mine, labels)
    side("destination", peer, labels)
    labels[#labels + 1] = "destination_service=\"" .. fqdn .. "\""
    labels[#labels + 1] = "destination_service_name=\"" .. name .. "\""
    labels[#labels + 1] = "destination_service_namespace=\"" .. namespace .. "\""
    labels[#labels + 1] = "connection_security_policy=\"unknown\""
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
    labels[1] = "reporter=\"destination\""
    side("source", peer, labels)
    side("destination", mine, labels)
    labels[#labels + 1] = "destination_service=\"" .. fqdn .. "\""
    labels[#labels + 1] = "destination_service_name=\"" .. (fqdn:match("^([^.]+)") or fqdn) .. "\""
    labels[#labels + 1] = "destination_service_namespace=\"" .. mine.namespace .. "\""
    labels[#labels + 1] = "connection_security_policy=\"" .. (principal and "mutual_tls" or "none") .. "\""
  end
  local protocol = (grpc ~= "" and grpc ~= "-") and "grpc" or "http"
  labels[#labels + 1] = "request_protocol=\"" .. protocol .. "\""
  labels[#labels + 1] = "response_code=\"" .. code .. "\""
  labels[#labels + 1] = "grpc_response_status=\"" .. ((protocol == "grpc") and grpc or "") .. "\""
  labels[#labels + 1] = "response_flags=\"" .. flags .. "\""
  return table.concat(labels, ",")
end

local function convert(text)
  local peers, me = read_peers()
  local out, series = {}, {}
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
  for line in text:gmatch("[^\n]+") do
    local short, suffix, key, rest, value = line:match('^envoy_istio_(%a)_(%a+){k="([^"]*)"(.-)} (%S+)$')
    if short and FAMILIES[short] then
      local labels = labels_of(key, peers, me)
      local number = tonumber(value)
      if labels and number then
        local family = FAMILIES[short]
        local le = rest:match('le="([^"]*)"')
        if suffix == "bucket" and le then
          add(family, "histogram", family .. "_bucket", labels .. ",le=\"" .. le .. "\"", number)
        elseif suffix == "sum" or suffix == "count" then
          add(family, "histogram", family .. "_" .. suffix, labels, number)
          if short == "d" and suffix == "count" then
            add("istio_requests_total", "counter", "istio_requests_total", labels, number)
          end
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
