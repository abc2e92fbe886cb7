-- Barge schema, version 2: custom roles (the built-in ones live in the code).
CREATE TABLE roles (
    name        TEXT PRIMARY KEY,
    actions     TEXT NOT NULL,
    operations  TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
