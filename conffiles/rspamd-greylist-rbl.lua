-- oignons-mail-relay: greylist only the clients that a DNS blocklist lists.
--
-- The wiki's policy ("ne greylister que les hôtes signalés par des listes
-- noires (RBL)").  rspamd has no switch for it; its greylist module acts
-- when the task variable `grey_greylisted_required` is set, and skips a
-- message that has one of its `whitelist_symbols`.  This postfilter runs
-- after every filter and before the greylist module's postfilter (postfilters
-- run in increasing priority: 1 before its 5), and looks at the blocklist
-- results about the connecting client itself: the rbl module marks them with
-- an option "<address>:from".
--
--   listed (a positive score):  sets grey_greylisted_required and adds
--                               OIGNONS_GREYLIST_RBL (the symbols that hit);
--   not listed:                 adds OIGNONS_GREYLIST_NOT_LISTED, which
--                               local.d/greylist.conf whitelists
--                               (and so no greylisting by score either).
--
-- Allow-lists (DNSWL, Mailspike's RWL) have negative scores: they never count.
-- Installed as /etc/rspamd/local.d/rspamd.lua, which rspamd 3.4 (bookworm)
-- and 3.12 (trixie) both load after their own rules.

local rspamd_logger = require "rspamd_logger"

local LISTED = 'OIGNONS_GREYLIST_RBL'
local NOT_LISTED = 'OIGNONS_GREYLIST_NOT_LISTED'

local function is_client_check(option)
  -- "<address>:from" or "<address>:from:<returned address>"
  return option:match(':from$') ~= nil or option:match(':from:[^:]+$') ~= nil
end

local function client_blocklist_hits(task)
  local hits = {}
  for _, result in ipairs(task:get_symbols_all() or {}) do
    if (result.score or 0) > 0 and result.options then
      for _, option in ipairs(result.options) do
        if is_client_check(option) then
          table.insert(hits, result.name)
          break
        end
      end
    end
  end
  return hits
end

local function greylist_if_listed(task)
  local hits = client_blocklist_hits(task)
  if #hits > 0 then
    task:get_mempool():set_variable('grey_greylisted_required', '1')
    task:insert_result(LISTED, 0.0, hits)
    rspamd_logger.infox(task, 'client %s is on a blocklist (%s): greylisting', task:get_from_ip(), hits)
  else
    task:insert_result(NOT_LISTED, 0.0)
  end
end

local id = rspamd_config:register_symbol({
  name = 'OIGNONS_GREYLIST_RBL_CHECK',
  type = 'postfilter',
  callback = greylist_if_listed,
  priority = 1, -- before GREYLIST_SAVE (5): postfilters of lower priority run first
  flags = 'empty,nostat',
})

for _, name in ipairs({LISTED, NOT_LISTED}) do
  rspamd_config:register_symbol({
    name = name,
    type = 'virtual',
    parent = id,
    score = 0.0,
    group = 'greylist',
    flags = 'nostat',
  })
end
