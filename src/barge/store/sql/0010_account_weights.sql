-- Barge schema, version 10: each account's weight, its share of the upstream when
-- accounts compete for it (``set_account_weight``; see README.md, "Accounts, keys and
-- roles"). Only accounts given a weight have a row; the engine counts the rest as 1.
CREATE TABLE account_weights (
    account     TEXT PRIMARY KEY,
    weight      REAL NOT NULL,
    updated_at  INTEGER NOT NULL
);
