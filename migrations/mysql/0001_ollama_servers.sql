-- The routing table of the original system, plus probe_url and max_concurrency.
CREATE TABLE IF NOT EXISTS ollama_servers (
    id                  BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    virtual_model_name  VARCHAR(100) NOT NULL,
    server_url          VARCHAR(255) NOT NULL,
    actual_model_name   VARCHAR(100) NOT NULL,
    weight              BIGINT NOT NULL DEFAULT 1,
    priority            BIGINT NOT NULL DEFAULT 1,
    type                ENUM('CPU', 'GPU') NOT NULL DEFAULT 'GPU',
    performance         DOUBLE NOT NULL DEFAULT 0,
    description         TEXT,
    is_active           BOOLEAN NOT NULL DEFAULT TRUE,
    created_at          TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at          TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    count               BIGINT NOT NULL DEFAULT 0,
    skip_resource_check BOOLEAN NOT NULL DEFAULT FALSE,
    probe_url           VARCHAR(255),
    max_concurrency     BIGINT,
    INDEX idx_ollama_servers_model (virtual_model_name)
);

-- A change marker drover polls instead of reading the table: bumped by any change to
-- routing columns, whether made through the admin API or by hand in SQL.
CREATE TABLE IF NOT EXISTS drover_changes (id INTEGER PRIMARY KEY, version BIGINT NOT NULL);
INSERT INTO drover_changes (id, version) VALUES (1, 0);

CREATE TRIGGER ollama_servers_insert AFTER INSERT ON ollama_servers FOR EACH ROW
    UPDATE drover_changes SET version = version + 1 WHERE id = 1;
CREATE TRIGGER ollama_servers_delete AFTER DELETE ON ollama_servers FOR EACH ROW
    UPDATE drover_changes SET version = version + 1 WHERE id = 1;
CREATE TRIGGER ollama_servers_update AFTER UPDATE ON ollama_servers FOR EACH ROW
    UPDATE drover_changes SET version = version + IF(
        OLD.virtual_model_name <=> NEW.virtual_model_name AND OLD.server_url <=> NEW.server_url
        AND OLD.actual_model_name <=> NEW.actual_model_name AND OLD.weight <=> NEW.weight
        AND OLD.priority <=> NEW.priority AND OLD.type <=> NEW.type
        AND OLD.performance <=> NEW.performance AND OLD.description <=> NEW.description
        AND OLD.is_active <=> NEW.is_active AND OLD.skip_resource_check <=> NEW.skip_resource_check
        AND OLD.probe_url <=> NEW.probe_url AND OLD.max_concurrency <=> NEW.max_concurrency, 0, 1)
    WHERE id = 1;
