-- What the fleet's own drives say about reliability (issue 15): maintenance computes it hourly
-- from the drives' lives, failures and latest samples (phonehome_dashboard::reliability) and
-- keeps the newest here; the page and the API read it. One row.
CREATE TABLE IF NOT EXISTS reliability (
    id          smallint    PRIMARY KEY CHECK (id = 1),
    computed_at timestamptz NOT NULL,
    body        jsonb       NOT NULL
);
