-- The routing table of the original system, plus probe_url and max_concurrency.
CREATE TABLE IF NOT EXISTS ollama_servers (
    id                  BIGSERIAL PRIMARY KEY,
    virtual_model_name  VARCHAR(100) NOT NULL,
    server_url          VARCHAR(255) NOT NULL,
    actual_model_name   VARCHAR(100) NOT NULL,
    weight              BIGINT NOT NULL DEFAULT 1,
    priority            BIGINT NOT NULL DEFAULT 1,
    type                VARCHAR(3) NOT NULL DEFAULT 'GPU' CHECK (type IN ('CPU', 'GPU')),
    performance         DOUBLE PRECISION NOT NULL DEFAULT 0,
    description         TEXT,
    is_active           BOOLEAN NOT NULL DEFAULT TRUE,
    created_at          TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at          TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    count               BIGINT NOT NULL DEFAULT 0,
    skip_resource_check BOOLEAN NOT NULL DEFAULT FALSE,
    probe_url           VARCHAR(255),
    max_concurrency     BIGINT
);
CREATE INDEX IF NOT EXISTS idx_ollama_servers_model ON ollama_servers (virtual_model_name);

-- A change marker drover polls instead of reading the table: bumped by any change to
-- routing columns, whether made through the admin API or by hand in SQL.
CREATE TABLE IF NOT EXISTS drover_changes (id INTEGER PRIMARY KEY, version BIGINT NOT NULL);
INSERT INTO drover_changes (id, version) VALUES (1, 0);

CREATE FUNCTION drover_bump_changes() RETURNS trigger AS $$
BEGIN
    UPDATE drover_changes SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER ollama_servers_changed
AFTER INSERT OR DELETE OR TRUNCATE OR UPDATE OF
    id, virtual_model_name, server_url, actual_model_name, weight, priority, type, performance,
    description, is_active, skip_resource_check, probe_url, max_concurrency
ON ollama_servers FOR EACH STATEMENT EXECUTE FUNCTION drover_bump_changes();
