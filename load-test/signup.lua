-- wrk: sign-ups with a fresh username each time.
local counter = 0
local prefix = string.format("b%d", math.random(100000, 999999))

request = function()
  counter = counter + 1
  local name = string.format("%s_%d", prefix, counter)
  local body = string.format(
    '{"username": "%s", "email": "%s@example.com", "password": "correct horse battery staple"}',
    name, name)
  return wrk.format("POST", nil, { ["Content-Type"] = "application/json" }, body)
end
