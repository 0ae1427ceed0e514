-- wrk: a flood of wrong-password logins for ever new unknown usernames (each costs a
-- bcrypt check, as unknown accounts get a dummy one), counting the answers by status.
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
  math.randomseed(os.time() + math.random(1, 100000))
end

function request()
  local body = "username=flood_" .. math.random(1, 1000000000) .. "&password=not+the+password"
  return wrk.format("POST", nil, {["Content-Type"] = "application/x-www-form-urlencoded"}, body)
end

function response(status, headers, body)
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  for status, count in pairs(totals) do
    io.write(string.format("status %s %d\n", status, count))
  end
end
