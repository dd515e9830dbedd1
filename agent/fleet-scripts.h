/* SPDX-License-Identifier: MIT */
#pragma once
/* Layer 6 of 12, policy at work: calls layers 8, 12. */

/* The Lua scripts of fleet-quota.c (see fleet-quota.h for the layout). Only
 * fleet-quota.c includes this. Numbers pass through Lua doubles: exact up to
 * 2^53 (tokens, micro-USD), written back with %d. */

/* Minute buckets: a hash per team and measure ("t:T:rq", "t:T:tk") with a
 * field per bucket key K and two of its own: "gc", the oldest key still
 * counted, and "sum", the sum of the buckets from gc on. Each script first
 * moves gc up to the window's first key (dropping what fell out of the
 * window from the sum), so that a window's total is one HGET, not 61. */
#define FLEET_LUA_BUCKETS                                                                       \
        "local function advance(H, kmin)\n"                                                     \
        "  local g = redis.call('HMGET', H, 'gc', 'sum')\n"                                     \
        "  local gc, sum = tonumber(g[1]), tonumber(g[2]) or 0\n"                               \
        "  if not gc then\n"                                                                     \
        "    redis.call('HSET', H, 'gc', kmin)\n"                                               \
        "    return sum, kmin\n"                                                                 \
        "  end\n"                                                                                \
        "  if gc >= kmin then return sum, gc end\n"                                             \
        "  local old = {}\n"                                                                     \
        "  if kmin - gc <= 180 then\n"                                                          \
        "    for k = gc, kmin - 1 do old[#old + 1] = k end\n"                                   \
        "  else\n"                                                                               \
        "    for _, f in ipairs(redis.call('HKEYS', H)) do\n"                                   \
        "      local k = tonumber(f)\n"                                                          \
        "      if k and k < kmin then old[#old + 1] = f end\n"                                  \
        "    end\n"                                                                              \
        "  end\n"                                                                                \
        "  for i = 1, #old, 1000 do\n"                                                          \
        "    local part = {unpack(old, i, math.min(i + 999, #old))}\n"                          \
        "    for _, v in ipairs(redis.call('HMGET', H, unpack(part))) do sum = sum - (tonumber(v) or 0) end\n" \
        "    redis.call('HDEL', H, unpack(part))\n"                                             \
        "  end\n"                                                                                \
        "  redis.call('HSET', H, 'gc', kmin, 'sum', sum)\n"                                     \
        "  return sum, kmin\n"                                                                   \
        "end\n"                                                                                  \
        "local function add(H, k, v, gc)\n"                                                     \
        "  if tonumber(v) == 0 or tonumber(k) < gc then return end\n"                           \
        "  redis.call('HINCRBY', H, k, v)\n"                                                    \
        "  redis.call('HINCRBY', H, 'sum', v)\n"                                                \
        "  redis.call('EXPIRE', H, 3600)\n"                                                     \
        "end\n"

/* ARGV: 1 PREFIX, 2 TEAM, 3 EPOCH, 4 LEASE, 5 RID, 6 KMIN, 7 KCUR, 8 DAY,
 * 9 MONTH, 10..15 limits by kb_quota_limit (0 = none), 16 TOKENS, 17 COST,
 * 18 MODE ("r" reserve, "g" grow).
 * Returns {-1, epoch} when the store's epoch is not ours; reserve:
 * {1, minute requests, minute tokens settled, tokens held, newest token
 * bucket} or {0, limit, used, requested, max, bucket whose expiry frees
 * enough (0: unknown), minute requests, minute tokens settled + held,
 * newest token bucket}; grow: {2, tokens granted, cost granted, 1 when
 * fewer tokens than asked, 1 when less cost than asked, limit, used, max}. */
static const char fleet_script_reserve[] =
        FLEET_LUA_BUCKETS
        "local P = ARGV[1]\n"
        "local T = P .. 't:' .. ARGV[2] .. ':'\n"
        "local ep = redis.call('GET', P .. 'epoch')\n"
        "if ep ~= ARGV[3] then return {-1, ep or ''} end\n"
        "local lease, rid = ARGV[4], ARGV[5]\n"
        "local kmin, kcur = tonumber(ARGV[6]), tonumber(ARGV[7])\n"
        "local D, M = T .. 'd:' .. ARGV[8], T .. 'm:' .. ARGV[9]\n"
        "local lim = {}\n"
        "for i = 0, 5 do lim[i] = tonumber(ARGV[10 + i]) end\n"
        "local etk, eco, mode = tonumber(ARGV[16]), tonumber(ARGV[17]), ARGV[18]\n"
        "local FL, RES = T .. 'fl', T .. 'res:'\n"
        /* what is in flight, by lease; an expired lease's holds go first */
        "local n, ftk, fco, alive = 0, 0, 0, {}\n"
        "local fl = redis.call('HGETALL', FL)\n"
        "for i = 1, #fl, 2 do\n"
        "  local l, what = string.match(fl[i], '^(.+)|(%a+)$')\n"
        "  if l then\n"
        "    if alive[l] == nil then\n"
        "      alive[l] = l == lease or redis.call('EXISTS', P .. 'lease:' .. l) == 1\n"
        "      if not alive[l] then\n"
        "        redis.call('HDEL', FL, l .. '|n', l .. '|tk', l .. '|co')\n"
        "        redis.call('DEL', RES .. l)\n"
        "      end\n"
        "    end\n"
        "    if alive[l] then\n"
        "      local v = tonumber(fl[i + 1]) or 0\n"
        "      if what == 'n' then n = n + v elseif what == 'tk' then ftk = ftk + v else fco = fco + v end\n"
        "    end\n"
        "  end\n"
        "end\n"
        "local RQ, TK = T .. 'rq', T .. 'tk'\n"
        "local srq, gcr = advance(RQ, kmin)\n"
        "local stk = advance(TK, kmin)\n"
        "local newest = tonumber(redis.call('HGET', TK, 'nw')) or 0\n"
        "if newest < kmin then newest = 0 end\n"
        "local d = redis.call('HMGET', D, 'tk', 'co')\n"
        "local m = redis.call('HMGET', M, 'co')\n"
        "local dtk, dco, mco = tonumber(d[1]) or 0, tonumber(d[2]) or 0, tonumber(m[1]) or 0\n"
        "local used = {[0] = srq, [1] = stk + ftk, [2] = dtk + ftk, [3] = dco + fco, [4] = mco + fco, [5] = n}\n"
        "if mode == 'g' then\n"
        "  local gtk, gco, stk_, sco, which = etk, eco, 0, 0, -1\n"
        "  for _, l in ipairs({4, 3, 2, 1}) do\n"
        "    if lim[l] > 0 then\n"
        "      local room = math.max(lim[l] - used[l], 0)\n"
        "      if l >= 3 and gco > room then gco, sco, which = room, 1, l end\n"
        "      if l <= 2 and gtk > room then gtk, stk_, which = room, 1, l end\n"
        "    end\n"
        "  end\n"
        "  local h = redis.call('HGET', RES .. lease, rid)\n"
        "  if h then\n"
        "    local htk, hco = string.match(h, '^(%d+) (%d+)$')\n"
        "    redis.call('HSET', RES .. lease, rid, string.format('%d %d', tonumber(htk) + gtk, tonumber(hco) + gco))\n"
        "    redis.call('HINCRBY', FL, lease .. '|tk', string.format('%d', gtk))\n"
        "    redis.call('HINCRBY', FL, lease .. '|co', string.format('%d', gco))\n"
        "  end\n"
        "  local u, mx = 0, 0\n"
        "  if which >= 0 then u, mx = used[which], lim[which] end\n"
        "  return {2, gtk, gco, stk_, sco, which, u, mx}\n"
        "end\n"
        "local req = {[0] = 1, [1] = etk, [2] = etk, [3] = eco, [4] = eco, [5] = 1}\n"
        "for _, l in ipairs({4, 3, 2, 1, 0, 5}) do\n"
        "  if lim[l] > 0 and used[l] + req[l] > lim[l] then\n"
        "    local reset = 0\n"
        "    if l <= 1 and req[l] <= lim[l] then\n"
        "      local keys = {}\n"
        "      for k = kmin, kcur do keys[#keys + 1] = k end\n"
        "      local src = redis.call('HMGET', l == 0 and RQ or TK, unpack(keys))\n"
        "      local need, acc = used[l] + req[l] - lim[l], 0\n"
        "      for i = 1, #keys do\n"
        "        acc = acc + (tonumber(src[i]) or 0)\n"
        "        if acc >= need and acc > 0 then reset = keys[i] break end\n"
        "      end\n"
        "    end\n"
        "    return {0, l, used[l], req[l], lim[l], reset, srq, stk + ftk, newest}\n"
        "  end\n"
        "end\n"
        "add(RQ, kcur, 1, gcr)\n"
        "redis.call('HINCRBY', FL, lease .. '|n', 1)\n"
        "redis.call('HINCRBY', FL, lease .. '|tk', ARGV[16])\n"
        "redis.call('HINCRBY', FL, lease .. '|co', ARGV[17])\n"
        "redis.call('HSET', RES .. lease, rid, ARGV[16] .. ' ' .. ARGV[17])\n"
        "redis.call('EXPIRE', FL, 86400)\n"
        "redis.call('EXPIRE', RES .. lease, 86400)\n"
        "return {1, srq + 1, stk, ftk + etk, newest}\n";

/* ARGV: 1 PREFIX, 2 TEAM, 3 EPOCH, 4 INSTANCE, 5 SEQ, 6 LEASE ("" none),
 * 7 RID (seq 0: a release, no sequence check), 8 KSETTLE, 9 DAY, 10 MONTH, 11 TOKENS, 12 COST, 13 "1" to count
 * the request too unless its hold is found (admitted offline, or the
 * reservation's answer never came), 14 KADMIT, 15 KMIN.
 * Returns {-1, epoch}, {0} already counted, {1} counted. */
static const char fleet_script_settle[] =
        FLEET_LUA_BUCKETS
        "local P = ARGV[1]\n"
        "local T = P .. 't:' .. ARGV[2] .. ':'\n"
        "local ep = redis.call('GET', P .. 'epoch')\n"
        "if ep ~= ARGV[3] then return {-1, ep or ''} end\n"
        "local ACK = P .. 'ack:' .. ARGV[4]\n"
        "if ARGV[5] ~= '0' then\n"
        "  if tonumber(ARGV[5]) <= (tonumber(redis.call('GET', ACK)) or 0) then return {0} end\n"
        "  redis.call('SET', ACK, ARGV[5])\n"
        "end\n"
        "local lease, rid, held = ARGV[6], ARGV[7], false\n"
        "if lease ~= '' then\n"
        "  local RES = T .. 'res:' .. lease\n"
        "  local h = redis.call('HGET', RES, rid)\n"
        "  if h then\n"
        "    local htk, hco = string.match(h, '^(%d+) (%d+)$')\n"
        "    local FL = T .. 'fl'\n"
        "    redis.call('HDEL', RES, rid)\n"
        "    redis.call('HINCRBY', FL, lease .. '|n', -1)\n"
        /* HINCRBY refuses "-0": a call that held nothing (no tokens: files,
         * batches) must not take the store offline */
        "    if htk ~= '0' then redis.call('HINCRBY', FL, lease .. '|tk', '-' .. htk) end\n"
        "    if hco ~= '0' then redis.call('HINCRBY', FL, lease .. '|co', '-' .. hco) end\n"
        "    held = true\n"
        "  end\n"
        "end\n"
        "local kmin = tonumber(ARGV[15])\n"
        "if ARGV[13] == '1' and not held then\n"
        "  local _, gc = advance(T .. 'rq', kmin)\n"
        "  add(T .. 'rq', ARGV[14], 1, gc)\n"
        "end\n"
        "if ARGV[11] ~= '0' then\n"
        "  local TK = T .. 'tk'\n"
        "  local _, gc = advance(TK, kmin)\n"
        "  add(TK, ARGV[8], ARGV[11], gc)\n"
        "  if tonumber(ARGV[8]) > (tonumber(redis.call('HGET', TK, 'nw')) or 0) then\n"
        "    redis.call('HSET', TK, 'nw', ARGV[8])\n"
        "  end\n"
        "end\n"
        "local D, M = T .. 'd:' .. ARGV[9], T .. 'm:' .. ARGV[10]\n"
        "redis.call('HINCRBY', D, 'tk', ARGV[11])\n"
        "redis.call('HINCRBY', D, 'co', ARGV[12])\n"
        "redis.call('EXPIRE', D, 259200)\n"
        "redis.call('HINCRBY', M, 'tk', ARGV[11])\n"
        "redis.call('HINCRBY', M, 'co', ARGV[12])\n"
        "redis.call('EXPIRE', M, 3456000)\n"
        "return {1}\n";

/* ARGV: 1 PREFIX, 2 EPOCH to create when there is none, 3 INSTANCE, 4 SEQ,
 * 5 number of teams, 6 KMIN, then per team: NAME, DAY, DAY_TOKENS, DAY_COST, MONTH,
 * MONTH_TOKENS, MONTH_COST, N, and N times KEY REQUESTS TOKENS.
 * Returns {epoch, 1 when this call pushed (0 when this broker already had),
 * the settle sequence the store had acknowledged for it}. */
static const char fleet_script_push[] =
        FLEET_LUA_BUCKETS
        "local P = ARGV[1]\n"
        "local ep = redis.call('GET', P .. 'epoch')\n"
        "if not ep then\n"
        "  ep = ARGV[2]\n"
        "  redis.call('SET', P .. 'epoch', ep)\n"
        "end\n"
        "local ACK = P .. 'ack:' .. ARGV[3]\n"
        "local had = redis.call('GET', ACK) or '0'\n"
        "if not redis.call('SET', P .. 'pushed:' .. ep .. ':' .. ARGV[3], '1', 'NX') then\n"
        "  return {ep, 0, had}\n"
        "end\n"
        "redis.call('SET', ACK, ARGV[4])\n"
        "local i, kmin = 7, tonumber(ARGV[6])\n"
        "for _ = 1, tonumber(ARGV[5]) do\n"
        "  local T = P .. 't:' .. ARGV[i] .. ':'\n"
        "  local RQ, TK = T .. 'rq', T .. 'tk'\n"
        "  local _, gcr = advance(RQ, kmin)\n"
        "  local _, gct = advance(TK, kmin)\n"
        "  local D, M = T .. 'd:' .. ARGV[i + 1], T .. 'm:' .. ARGV[i + 4]\n"
        "  if ARGV[i + 1] ~= '' then\n"
        "    redis.call('HINCRBY', D, 'tk', ARGV[i + 2])\n"
        "    redis.call('HINCRBY', D, 'co', ARGV[i + 3])\n"
        "    redis.call('EXPIRE', D, 259200)\n"
        "  end\n"
        "  if ARGV[i + 4] ~= '' then\n"
        "    redis.call('HINCRBY', M, 'tk', ARGV[i + 5])\n"
        "    redis.call('HINCRBY', M, 'co', ARGV[i + 6])\n"
        "    redis.call('EXPIRE', M, 3456000)\n"
        "  end\n"
        "  local n = tonumber(ARGV[i + 7])\n"
        "  i = i + 8\n"
        "  for _ = 1, n do\n"
        "    add(RQ, ARGV[i], ARGV[i + 1], gcr)\n"
        "    add(TK, ARGV[i], ARGV[i + 2], gct)\n"
        "    i = i + 3\n"
        "  end\n"
        "end\n"
        "return {ep, 1, had}\n";

/* ARGV: 1 PREFIX, 2 KMIN, 3 KCUR, 4 DAY, 5 MONTH, 6 N, then N team names.
 * Returns, per team, 10 numbers: minute requests, minute tokens settled,
 * newest token bucket, calls in flight, tokens held, cost held, day tokens,
 * day cost, month tokens, month cost. Reads only. */
static const char fleet_script_view[] =
        "local P = ARGV[1]\n"
        "local keys, live, out = {}, {}, {}\n"
        "for k = tonumber(ARGV[2]), tonumber(ARGV[3]) do keys[#keys + 1] = k end\n"
        "for i = 7, 6 + tonumber(ARGV[6]) do\n"
        "  local T = P .. 't:' .. ARGV[i] .. ':'\n"
        "  local rq = redis.call('HMGET', T .. 'rq', unpack(keys))\n"
        "  local tk = redis.call('HMGET', T .. 'tk', unpack(keys))\n"
        "  local srq, stk, newest, n, ftk, fco = 0, 0, 0, 0, 0, 0\n"
        "  for j = 1, #keys do\n"
        "    local b = tonumber(tk[j]) or 0\n"
        "    srq = srq + (tonumber(rq[j]) or 0)\n"
        "    stk = stk + b\n"
        "    if b > 0 then newest = keys[j] end\n"
        "  end\n"
        "  local fl = redis.call('HGETALL', T .. 'fl')\n"
        "  for j = 1, #fl, 2 do\n"
        "    local l, what = string.match(fl[j], '^(.+)|(%a+)$')\n"
        "    if l then\n"
        "      if live[l] == nil then live[l] = redis.call('EXISTS', P .. 'lease:' .. l) == 1 end\n"
        "      if live[l] then\n"
        "        local v = tonumber(fl[j + 1]) or 0\n"
        "        if what == 'n' then n = n + v elseif what == 'tk' then ftk = ftk + v else fco = fco + v end\n"
        "      end\n"
        "    end\n"
        "  end\n"
        "  local d = redis.call('HMGET', T .. 'd:' .. ARGV[4], 'tk', 'co')\n"
        "  local m = redis.call('HMGET', T .. 'm:' .. ARGV[5], 'tk', 'co')\n"
        "  for _, v in ipairs({srq, stk, newest, n, ftk, fco, tonumber(d[1]) or 0, tonumber(d[2]) or 0,\n"
        "                      tonumber(m[1]) or 0, tonumber(m[2]) or 0}) do\n"
        "    out[#out + 1] = v\n"
        "  end\n"
        "end\n"
        "return out\n";
