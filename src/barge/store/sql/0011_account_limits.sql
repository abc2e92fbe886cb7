-- Barge schema, version 11: each account's optional limits, set with its weight
-- (``set_account_settings``; see README.md, "Accounts, keys and roles"): the most of its
-- requests in flight at once and its tokens a minute. NULL: no limit.
ALTER TABLE account_weights ADD COLUMN max_in_flight INTEGER;
ALTER TABLE account_weights ADD COLUMN tokens_per_minute INTEGER;
