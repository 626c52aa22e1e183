"""The Lua scripts that change the shared switch state, and the keys they touch.

Each app's authoritative state is one Redis hash, `edgeproxy:app:NAME`, with
the fields `generation` (an integer), `state` (the app's record in the state
file's JSON form), `by` (the node that committed it) and `at` (Unix time).
Every change goes through `COMMIT`: one script, so Redis runs it without
interleaving any other command. It checks that every app's stored generation
is the one the change was computed from, then writes all of them and publishes
each on `edgeproxy:changes`; if any generation differs it writes nothing.
`SEED` fills an app that the store does not hold yet (a new store, or one that
lost its data), and otherwise answers what it holds.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "edgeproxy:"
CHANNEL: Final = PREFIX + "changes"


def app_key(app: str) -> str:
    return f"{PREFIX}app:{app}"


def node_key(node: str) -> str:
    return f"{PREFIX}node:{node}"


NODE_PATTERN: Final = PREFIX + "node:*"

COMMIT: Final = """
-- KEYS: the apps' hashes. ARGV: channel, by, at, then per key: expected
-- generation, new generation, new state, message to publish.
for i, key in ipairs(KEYS) do
  local base = 3 + (i - 1) * 4
  local current = redis.call('HGET', key, 'generation')
  if current == false then current = '-1' end
  if current ~= ARGV[base + 1] then
    local by = redis.call('HGET', key, 'by')
    local at = redis.call('HGET', key, 'at')
    return {0, i, current, by or '', at or ''}
  end
end
for i, key in ipairs(KEYS) do
  local base = 3 + (i - 1) * 4
  redis.call('HSET', key, 'generation', ARGV[base + 2], 'state', ARGV[base + 3],
             'by', ARGV[2], 'at', ARGV[3])
  redis.call('PUBLISH', ARGV[1], ARGV[base + 4])
end
return {1}
"""

SEED: Final = """
-- KEYS[1]: an app's hash. ARGV: generation, state, by, at, message, channel.
-- Written only when the store holds no state for the app, or an older
-- generation (it lost data since); else the stored state is answered.
local current = redis.call('HGET', KEYS[1], 'generation')
if current == false or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'generation', ARGV[1], 'state', ARGV[2], 'by', ARGV[3], 'at', ARGV[4])
  redis.call('PUBLISH', ARGV[6], ARGV[5])
  return {1, ARGV[1], ARGV[2]}
end
return {0, current, redis.call('HGET', KEYS[1], 'state')}
"""
