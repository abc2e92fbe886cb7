-- Barge schema, version 5: custom roles belong to an account. A name is unique within
-- its account only; no account sees, uses or changes another's roles. Each existing
-- role goes to every account whose keys use it, and to 'default' when no key does.
CREATE TABLE account_roles (
    account     TEXT NOT NULL,
    name        TEXT NOT NULL,
    actions     TEXT NOT NULL,
    operations  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (account, name)
);
INSERT INTO account_roles (account, name, actions, operations, created_at)
    SELECT DISTINCT k.account, r.name, r.actions, r.operations, r.created_at
    FROM roles AS r JOIN api_keys AS k ON k.role = r.name;
INSERT INTO account_roles (account, name, actions, operations, created_at)
    SELECT 'default', r.name, r.actions, r.operations, r.created_at
    FROM roles AS r
    WHERE NOT EXISTS (SELECT 1 FROM api_keys AS k WHERE k.role = r.name);
DROP TABLE roles;
ALTER TABLE account_roles RENAME TO roles;
