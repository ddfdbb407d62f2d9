-- Shared by lock_acquire, lock_release and lock_renew (included, not run alone).

-- The lock key's value while an acquisition after a data loss holds the lock back
-- for a surviving holder to re-establish its lease (RECOVERING in lock.py). No
-- token can equal it: tokens end with ':' and 20 hex digits.
local RECOVERING = 'tickerq:recovering-after-data-loss'
