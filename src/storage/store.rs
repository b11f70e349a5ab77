//! The routes store: the `ollama_servers` table in SQLite, PostgreSQL or MySQL/MariaDB, through sqlx.
//!
//! One code path serves all three through sqlx's `Any` driver; the few places where their
//! SQL differs (placeholders, text casts, how an insert returns its id) are in `Backend`.
//! Migrations are embedded, one set per database, and applied on start.

use std::borrow::Cow;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyConnection, AnyPool, Executor, Row};

/// A database URL fit for logs and errors: the password replaced by `***`.
pub(crate) fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => text.to_string(),
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
    MySql,
}

impl Backend {
    pub(crate) fn of(url: &str) -> Option<Backend> {
        let scheme = url.split(':').next()?;
        match scheme {
            "sqlite" => Some(Backend::Sqlite),
            "postgres" | "postgresql" => Some(Backend::Postgres),
            "mysql" | "mariadb" => Some(Backend::MySql),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::MySql => "mysql",
        }
    }

    /// Queries are written with `?`; PostgreSQL numbers its placeholders.
    fn sql<'a>(self, query: &'a str) -> Cow<'a, str> {
        if self != Backend::Postgres {
            return Cow::Borrowed(query);
        }
        let mut out = String::with_capacity(query.len() + 8);
        let mut n = 0;
        for c in query.chars() {
            if c == '?' {
                n += 1;
                out.push_str(&format!("${n}"));
            } else {
                out.push(c);
            }
        }
        Cow::Owned(out)
    }

    fn text_type(self) -> &'static str {
        match self {
            Backend::MySql => "CHAR",
            _ => "TEXT",
        }
    }

    fn migrations(self) -> &'static [(i64, &'static str, &'static str)] {
        match self {
            Backend::Sqlite => &[
                (1, "ollama_servers", include_str!("../../migrations/sqlite/0001_ollama_servers.sql")),
                (2, "api_keys", include_str!("../../migrations/sqlite/0002_api_keys.sql")),
                (3, "conversations", include_str!("../../migrations/sqlite/0003_conversations.sql")),
                (4, "key_scheduling", include_str!("../../migrations/sqlite/0004_key_scheduling.sql")),
            ],
            Backend::Postgres => &[
                (1, "ollama_servers", include_str!("../../migrations/postgres/0001_ollama_servers.sql")),
                (2, "api_keys", include_str!("../../migrations/postgres/0002_api_keys.sql")),
                (3, "conversations", include_str!("../../migrations/postgres/0003_conversations.sql")),
                (4, "key_scheduling", include_str!("../../migrations/postgres/0004_key_scheduling.sql")),
            ],
            Backend::MySql => &[
                (1, "ollama_servers", include_str!("../../migrations/mysql/0001_ollama_servers.sql")),
                (2, "api_keys", include_str!("../../migrations/mysql/0002_api_keys.sql")),
                (3, "conversations", include_str!("../../migrations/mysql/0003_conversations.sql")),
                (4, "key_scheduling", include_str!("../../migrations/mysql/0004_key_scheduling.sql")),
            ],
        }
    }
}

/// One row of `ollama_servers`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredRoute {
    pub(crate) id: i64,
    pub(crate) virtual_model_name: String,
    pub(crate) server_url: String,
    pub(crate) actual_model_name: String,
    pub(crate) weight: i64,
    pub(crate) priority: i64,
    #[serde(rename = "type")]
    pub(crate) device: String,
    pub(crate) performance: f64,
    pub(crate) description: Option<String>,
    pub(crate) is_active: bool,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    pub(crate) count: i64,
    pub(crate) skip_resource_check: bool,
    pub(crate) probe_url: Option<String>,
    pub(crate) max_concurrency: Option<i64>,
}

/// One row of `drover_api_keys`: never the key itself, only its hash and first characters.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct StoredKey {
    pub(crate) id: i64,
    pub(crate) name: String,
    #[serde(skip)]
    pub(crate) key_hash: String,
    /// The key's first characters, to recognise it in lists.
    pub(crate) key_prefix: String,
    /// Virtual model names the key may use; `["*"]` for all.
    pub(crate) models: Vec<String>,
    pub(crate) requests_per_minute: Option<i64>,
    pub(crate) tokens_per_minute: Option<i64>,
    /// RFC 3339; none for a key that does not expire.
    pub(crate) expires_at: Option<String>,
    pub(crate) is_active: bool,
    pub(crate) created_at: String,
    pub(crate) request_count: i64,
    pub(crate) prompt_tokens: i64,
    pub(crate) completion_tokens: i64,
    /// Its share of freed slots while requests wait, against other keys' (routing/queue.rs).
    pub(crate) weight: i64,
    /// "interactive" (served first while requests wait) or "batch".
    pub(crate) priority: String,
}

/// The writable fields of a key; `None` leaves a field as it is (or at its default on insert).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct KeyFields {
    pub(crate) name: Option<String>,
    pub(crate) models: Option<Vec<String>>,
    pub(crate) requests_per_minute: Option<Option<i64>>,
    pub(crate) tokens_per_minute: Option<Option<i64>>,
    pub(crate) expires_at: Option<Option<String>>,
    pub(crate) is_active: Option<bool>,
    pub(crate) weight: Option<i64>,
    pub(crate) priority: Option<String>,
}

impl KeyFields {
    fn columns(&self) -> Vec<(&'static str, Value)> {
        let mut cols = Vec::new();
        if let Some(v) = &self.name {
            cols.push(("name", Value::Text(Some(v.clone()))));
        }
        if let Some(v) = &self.models {
            cols.push(("models", Value::Text(Some(serde_json::to_string(v).expect("strings serialise")))));
        }
        if let Some(v) = self.requests_per_minute {
            cols.push(("requests_per_minute", Value::Int(v)));
        }
        if let Some(v) = self.tokens_per_minute {
            cols.push(("tokens_per_minute", Value::Int(v)));
        }
        if let Some(v) = &self.expires_at {
            cols.push(("expires_at", Value::Text(v.clone())));
        }
        if let Some(v) = self.is_active {
            cols.push(("is_active", Value::Bool(v)));
        }
        if let Some(v) = self.weight {
            cols.push(("weight", Value::Int(Some(v))));
        }
        if let Some(v) = &self.priority {
            cols.push(("priority", Value::Text(Some(v.clone()))));
        }
        cols
    }
}

/// Requests and tokens served under one key, not yet added to its row.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct KeyUsage {
    pub(crate) requests: u64,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
}

impl std::ops::AddAssign for KeyUsage {
    fn add_assign(&mut self, more: KeyUsage) {
        self.requests += more.requests;
        self.prompt_tokens += more.prompt_tokens;
        self.completion_tokens += more.completion_tokens;
    }
}

/// The writable fields of a route; `None` leaves a field as it is (or at its default on insert).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RouteFields {
    pub(crate) virtual_model_name: Option<String>,
    pub(crate) server_url: Option<String>,
    pub(crate) actual_model_name: Option<String>,
    pub(crate) weight: Option<i64>,
    pub(crate) priority: Option<i64>,
    pub(crate) device: Option<String>,
    pub(crate) performance: Option<f64>,
    pub(crate) description: Option<Option<String>>,
    pub(crate) is_active: Option<bool>,
    pub(crate) skip_resource_check: Option<bool>,
    pub(crate) probe_url: Option<Option<String>>,
    pub(crate) max_concurrency: Option<Option<i64>>,
}

/// A value to bind, so one dynamic UPDATE can carry any mix of columns.
enum Value {
    Text(Option<String>),
    Int(Option<i64>),
    Float(f64),
    Bool(bool),
}

impl RouteFields {
    fn columns(&self) -> Vec<(&'static str, Value)> {
        let mut cols = Vec::new();
        let text = |v: &Option<String>| Value::Text(v.clone());
        if let Some(v) = &self.virtual_model_name {
            cols.push(("virtual_model_name", text(&Some(v.clone()))));
        }
        if let Some(v) = &self.server_url {
            cols.push(("server_url", text(&Some(v.clone()))));
        }
        if let Some(v) = &self.actual_model_name {
            cols.push(("actual_model_name", text(&Some(v.clone()))));
        }
        if let Some(v) = self.weight {
            cols.push(("weight", Value::Int(Some(v))));
        }
        if let Some(v) = self.priority {
            cols.push(("priority", Value::Int(Some(v))));
        }
        if let Some(v) = &self.device {
            cols.push(("type", text(&Some(v.clone()))));
        }
        if let Some(v) = self.performance {
            cols.push(("performance", Value::Float(v)));
        }
        if let Some(v) = &self.description {
            cols.push(("description", text(v)));
        }
        if let Some(v) = self.is_active {
            cols.push(("is_active", Value::Bool(v)));
        }
        if let Some(v) = self.skip_resource_check {
            cols.push(("skip_resource_check", Value::Bool(v)));
        }
        if let Some(v) = &self.probe_url {
            cols.push(("probe_url", text(v)));
        }
        if let Some(v) = self.max_concurrency {
            cols.push(("max_concurrency", Value::Int(v)));
        }
        cols
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

fn bind(q: Query<'_>, v: Value) -> Query<'_> {
    match v {
        Value::Text(t) => q.bind(t),
        Value::Int(i) => q.bind(i),
        Value::Float(f) => q.bind(f),
        Value::Bool(b) => q.bind(b),
    }
}

/// What went wrong with the store, as its callers must tell apart (the admin API answers
/// 409, 404 and 503 for them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StoreError {
    /// The write would break a uniqueness rule of the schema (a key name, say).
    Conflict(String),
    /// No row with that id.
    NotFound(String),
    /// The database cannot be reached, failed the statement, or gave back what drover
    /// cannot read.
    Unavailable(String),
}

impl StoreError {
    pub(crate) fn message(&self) -> &str {
        match self {
            StoreError::Conflict(m) | StoreError::NotFound(m) | StoreError::Unavailable(m) => m,
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for StoreError {}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        match &e {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(db.message().to_string()),
            sqlx::Error::RowNotFound => StoreError::NotFound(e.to_string()),
            _ => StoreError::Unavailable(e.to_string()),
        }
    }
}

/// The store as the parts that use it share it: connected (and migrated) on first use, and
/// again after a failed first connection, so drover starts and serves while its database is
/// away and joins it when it comes.
pub(crate) struct StoreHandle {
    url: String,
    pool_size: u32,
    store: tokio::sync::OnceCell<Store>,
}

impl StoreHandle {
    pub(crate) fn new(url: &str, pool_size: u32) -> StoreHandle {
        StoreHandle { url: url.to_string(), pool_size, store: tokio::sync::OnceCell::new() }
    }

    /// The store, connecting when it is not yet.
    pub(crate) async fn get(&self) -> Result<&Store, StoreError> {
        self.store.get_or_try_init(|| Store::open(&self.url, self.pool_size)).await
    }

    /// The store when it is connected, without trying to connect.
    pub(crate) fn connected(&self) -> Option<&Store> {
        self.store.get()
    }
}

/// What /health says about the store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum StoreState {
    Ok,
    Unreachable(String),
}

pub(crate) struct Store {
    pool: AnyPool,
    pub(crate) backend: Backend,
    /// The URL with its password hidden, for messages.
    pub(crate) url: String,
}

impl Store {
    /// Connects (creating an SQLite file when missing); errors name the URL, password hidden.
    pub(crate) async fn connect(url: &str, pool_size: u32) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let shown = redact_url(url);
        let backend = Backend::of(url)
            .ok_or_else(|| StoreError::Unavailable(format!("database {shown}: unsupported URL scheme")))?;
        let url = match backend {
            Backend::Sqlite if !url.contains('?') && !url.contains(":memory:") => format!("{url}?mode=rwc"),
            Backend::MySql if url.starts_with("mariadb:") => url.replacen("mariadb:", "mysql:", 1),
            _ => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(pool_size.max(1))
            .acquire_timeout(Duration::from_secs(3))
            .idle_timeout(Duration::from_secs(60))
            .connect(&url)
            .await
            .map_err(|e| StoreError::Unavailable(format!("database {shown}: cannot connect: {e}")))?;
        Ok(Store { pool, backend, url: shown })
    }

    /// Connects and applies the migrations not yet applied: what every part that uses the
    /// store needs, whether the database was there at start or came later.
    pub(crate) async fn open(url: &str, pool_size: u32) -> Result<Store, StoreError> {
        let store = Store::connect(url, pool_size).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Applies the migrations not yet applied, in order, under the database's own lock, so
    /// that drovers started at once on a fresh database do not race (PostgreSQL's advisory
    /// lock, MySQL's `GET_LOCK`, SQLite's write transaction), held by one connection: given
    /// back to the pool once released, closed after a failure (which releases it; so does a
    /// process that dies mid-way).
    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
        let fail = |e| self.migration_failed(e);
        let mut conn = self.pool.acquire().await.map_err(fail)?;
        let (lock, unlock) = match self.backend {
            Backend::Postgres => ("SELECT pg_advisory_lock(7268316)", "SELECT pg_advisory_unlock(7268316)"),
            Backend::MySql => {
                ("SELECT CAST(GET_LOCK('drover_migrations', 60) AS SIGNED)", "SELECT RELEASE_LOCK('drover_migrations')")
            }
            Backend::Sqlite => ("BEGIN IMMEDIATE", "COMMIT"),
        };
        // GET_LOCK says whether it was granted; the others wait until it is (rows unread:
        // pg_advisory_lock returns a void no driver decodes).
        let granted = match self.backend {
            Backend::MySql => int(&conn.fetch_one(sqlx::query(lock)).await.map_err(fail)?, 0)? == 1,
            _ => conn.execute(sqlx::raw_sql(lock)).await.map(|_| true).map_err(fail)?,
        };
        if !granted {
            let _ = sqlx::Connection::close(conn.detach()).await;
            return Err(StoreError::Unavailable(format!(
                "database {}: migration lock not granted within 60 s (another drover migrating?)",
                self.url
            )));
        }
        let applied = self.apply_migrations(&mut conn).await.map_err(fail);
        let released = applied.is_ok() && conn.execute(sqlx::raw_sql(unlock)).await.is_ok();
        if !released {
            // Closing the connection ends its session: the lock goes (and an SQLite
            // transaction left open by a failure is rolled back).
            let _ = sqlx::Connection::close(conn.detach()).await;
        }
        applied
    }

    fn migration_failed(&self, e: sqlx::Error) -> StoreError {
        StoreError::Unavailable(format!("database {}: migration failed: {e}", self.url))
    }

    async fn apply_migrations(&self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        conn.execute(sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS drover_migrations (version BIGINT PRIMARY KEY, name VARCHAR(255) NOT NULL)",
        ))
        .await?;
        // PostgreSQL changes its schema in transactions: a migration is applied whole or not at all.
        let transactional = self.backend == Backend::Postgres;
        for &(version, name, sql) in self.backend.migrations() {
            let check = self.backend.sql("SELECT COUNT(*) FROM drover_migrations WHERE version = ?");
            let done = conn.fetch_one(sqlx::query(&check).bind(version)).await?;
            if int(&done, 0).map_err(|e| sqlx::Error::Protocol(e.to_string()))? > 0 {
                continue;
            }
            log::info!("database {}: applying migration {version} ({name})", self.url);
            if transactional {
                conn.execute(sqlx::raw_sql("BEGIN")).await?;
            }
            conn.execute(sqlx::raw_sql(sql)).await?;
            let record = self.backend.sql("INSERT INTO drover_migrations (version, name) VALUES (?, ?)");
            conn.execute(sqlx::query(&record).bind(version).bind(name)).await?;
            if transactional {
                conn.execute(sqlx::raw_sql("COMMIT")).await?;
            }
        }
        Ok(())
    }

    /// The change marker: a number that moves whenever a routing column changes.
    pub(crate) async fn marker(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT version FROM drover_changes WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::from)?;
        int(&row, 0)
    }

    fn select(&self) -> String {
        let t = self.backend.text_type();
        format!(
            "SELECT id, virtual_model_name, server_url, actual_model_name, weight, priority, CAST(type AS {t}) AS type, \
             performance, description, CASE WHEN is_active THEN 1 ELSE 0 END AS is_active, \
             CAST(created_at AS {t}) AS created_at, CAST(updated_at AS {t}) AS updated_at, count, \
             CASE WHEN skip_resource_check THEN 1 ELSE 0 END AS skip_resource_check, probe_url, max_concurrency \
             FROM ollama_servers"
        )
    }

    pub(crate) async fn list(&self) -> Result<Vec<StoredRoute>, StoreError> {
        let rows = sqlx::query(&format!("{} ORDER BY id", self.select()))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from)?;
        rows.iter().map(row_to_route).collect()
    }

    pub(crate) async fn get(&self, id: i64) -> Result<Option<StoredRoute>, StoreError> {
        let sql = format!("{} WHERE id = ?", self.select());
        let row =
            sqlx::query(&self.backend.sql(&sql)).bind(id).fetch_optional(&self.pool).await.map_err(StoreError::from)?;
        row.as_ref().map(row_to_route).transpose()
    }

    /// Inserts a route (fields already validated) and returns it as stored.
    pub(crate) async fn insert(&self, fields: &RouteFields) -> Result<StoredRoute, StoreError> {
        let id = self.insert_row("ollama_servers", fields.columns()).await?;
        self.get(id).await?.ok_or_else(|| StoreError::NotFound(format!("route {id} vanished after insert")))
    }

    /// Inserts one row and returns its id.
    async fn insert_row(&self, table: &str, cols: Vec<(&'static str, Value)>) -> Result<i64, StoreError> {
        let names: Vec<&str> = cols.iter().map(|(n, _)| *n).collect();
        let marks = vec!["?"; cols.len()].join(", ");
        let mut sql = format!("INSERT INTO {table} ({}) VALUES ({marks})", names.join(", "));
        // MySQL has no RETURNING; the others do, and Any does not surface SQLite's last id.
        let returning = self.backend != Backend::MySql;
        if returning {
            sql.push_str(" RETURNING id");
        }
        let sql = self.backend.sql(&sql);
        let mut q = sqlx::query(&sql);
        for (_, v) in cols {
            q = bind(q, v);
        }
        if returning {
            let row = q.fetch_one(&self.pool).await.map_err(StoreError::from)?;
            int(&row, 0)
        } else {
            let done = q.execute(&self.pool).await.map_err(StoreError::from)?;
            done.last_insert_id()
                .ok_or_else(|| StoreError::Unavailable("the database did not return the new id".into()))
        }
    }

    /// Changes the given fields of a route; None when no route has that id.
    pub(crate) async fn update(&self, id: i64, fields: &RouteFields) -> Result<Option<StoredRoute>, StoreError> {
        self.update_row("ollama_servers", fields.columns(), Some("updated_at = CURRENT_TIMESTAMP"), id).await?;
        // Read back rather than trust rows_affected: MySQL counts changed rows, not matched
        // ones, so an update that changes nothing would look like an absent id.
        self.get(id).await
    }

    pub(crate) async fn delete(&self, id: i64) -> Result<bool, StoreError> {
        self.delete_row("ollama_servers", id).await
    }

    /// Sets `cols` (and `also`, an assignment of its own) on the row `id` of `table`.
    async fn update_row(
        &self,
        table: &str,
        cols: Vec<(&'static str, Value)>,
        also: Option<&str>,
        id: i64,
    ) -> Result<(), StoreError> {
        let mut sets: Vec<String> = cols.iter().map(|(n, _)| format!("{n} = ?")).collect();
        sets.extend(also.map(str::to_string));
        if sets.is_empty() {
            return Ok(());
        }
        let sql = format!("UPDATE {table} SET {} WHERE id = ?", sets.join(", "));
        let sql = self.backend.sql(&sql);
        let mut q = sqlx::query(&sql);
        for (_, v) in cols {
            q = bind(q, v);
        }
        q.bind(id).execute(&self.pool).await.map_err(StoreError::from)?;
        Ok(())
    }

    /// Deletes the row `id` of `table`; false when there was none.
    async fn delete_row(&self, table: &str, id: i64) -> Result<bool, StoreError> {
        let done = sqlx::query(&self.backend.sql(&format!("DELETE FROM {table} WHERE id = ?")))
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::from)?;
        Ok(done.rows_affected() > 0)
    }

    /// Adds served-request counts to `count`, all in one transaction.
    pub(crate) async fn add_counts(&self, counts: &[(i64, u64)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let sql = self.backend.sql("UPDATE ollama_servers SET count = count + ? WHERE id = ?");
        for &(id, n) in counts {
            sqlx::query(&sql).bind(n as i64).bind(id).execute(&mut *tx).await.map_err(StoreError::from)?;
        }
        tx.commit().await.map_err(StoreError::from)
    }

    fn select_keys(&self) -> String {
        let t = self.backend.text_type();
        format!(
            "SELECT id, name, key_hash, key_prefix, models, requests_per_minute, tokens_per_minute, expires_at, \
             CASE WHEN is_active THEN 1 ELSE 0 END AS is_active, CAST(created_at AS {t}) AS created_at, \
             request_count, prompt_tokens, completion_tokens, weight, priority FROM drover_api_keys"
        )
    }

    pub(crate) async fn list_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        let rows = sqlx::query(&format!("{} ORDER BY id", self.select_keys()))
            .fetch_all(&self.pool)
            .await
            .map_err(StoreError::from)?;
        rows.iter().map(row_to_key).collect()
    }

    pub(crate) async fn get_key(&self, id: i64) -> Result<Option<StoredKey>, StoreError> {
        let sql = format!("{} WHERE id = ?", self.select_keys());
        let row =
            sqlx::query(&self.backend.sql(&sql)).bind(id).fetch_optional(&self.pool).await.map_err(StoreError::from)?;
        row.as_ref().map(row_to_key).transpose()
    }

    /// Stores a new key (fields already validated) by its hash and prefix; returns the row.
    pub(crate) async fn insert_key(
        &self,
        fields: &KeyFields,
        hash: &str,
        prefix: &str,
    ) -> Result<StoredKey, StoreError> {
        let mut cols = fields.columns();
        cols.push(("key_hash", Value::Text(Some(hash.to_string()))));
        cols.push(("key_prefix", Value::Text(Some(prefix.to_string()))));
        let id = self.insert_row("drover_api_keys", cols).await?;
        self.get_key(id).await?.ok_or_else(|| StoreError::NotFound(format!("key {id} vanished after insert")))
    }

    /// Changes the given fields of a key; None when no key has that id.
    pub(crate) async fn update_key(&self, id: i64, fields: &KeyFields) -> Result<Option<StoredKey>, StoreError> {
        self.update_row("drover_api_keys", fields.columns(), None, id).await?;
        self.get_key(id).await
    }

    pub(crate) async fn delete_key(&self, id: i64) -> Result<bool, StoreError> {
        self.delete_row("drover_api_keys", id).await
    }

    /// Adds served requests and tokens to each key's row, all in one transaction.
    pub(crate) async fn add_key_usage(&self, usage: &[(i64, KeyUsage)]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let sql = self.backend.sql(
            "UPDATE drover_api_keys SET request_count = request_count + ?, prompt_tokens = prompt_tokens + ?, \
             completion_tokens = completion_tokens + ? WHERE id = ?",
        );
        for (id, u) in usage {
            sqlx::query(&sql)
                .bind(u.requests as i64)
                .bind(u.prompt_tokens as i64)
                .bind(u.completion_tokens as i64)
                .bind(*id)
                .execute(&mut *tx)
                .await
                .map_err(StoreError::from)?;
        }
        tx.commit().await.map_err(StoreError::from)
    }

    /// A conversation's messages (JSON), unless expired by `now_ms`.
    pub(crate) async fn get_conversation(&self, key: &str, now_ms: i64) -> Result<Option<String>, StoreError> {
        let sql =
            self.backend.sql("SELECT messages FROM drover_conversations WHERE session_key = ? AND expires_at > ?");
        let row =
            sqlx::query(&sql).bind(key).bind(now_ms).fetch_optional(&self.pool).await.map_err(StoreError::from)?;
        // MySQL's MEDIUMTEXT reaches sqlx's Any driver as a BLOB: read it as bytes there.
        row.map(|r| {
            r.try_get::<String, _>(0)
                .or_else(|_| r.try_get::<Vec<u8>, _>(0).map(|b| String::from_utf8_lossy(&b).into_owned()))
                .map_err(StoreError::from)
        })
        .transpose()
    }

    /// Replaces a conversation's messages; expired conversations are removed on the way.
    pub(crate) async fn put_conversation(
        &self,
        key: &str,
        messages: &str,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let delete = self.backend.sql("DELETE FROM drover_conversations WHERE session_key = ? OR expires_at <= ?");
        sqlx::query(&delete).bind(key).bind(now_ms).execute(&mut *tx).await.map_err(StoreError::from)?;
        let insert =
            self.backend.sql("INSERT INTO drover_conversations (session_key, messages, expires_at) VALUES (?, ?, ?)");
        sqlx::query(&insert)
            .bind(key)
            .bind(messages)
            .bind(expires_ms)
            .execute(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        tx.commit().await.map_err(StoreError::from)
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// An integer column, whichever width the database gave it.
fn int(row: &AnyRow, i: usize) -> Result<i64, StoreError> {
    row.try_get::<i64, _>(i)
        .or_else(|_| row.try_get::<i32, _>(i).map(i64::from))
        .or_else(|_| row.try_get::<i16, _>(i).map(i64::from))
        .or_else(|_| row.try_get::<bool, _>(i).map(i64::from))
        .map_err(|e| StoreError::Unavailable(format!("column {i}: {e}")))
}

fn opt_int(row: &AnyRow, i: usize) -> Result<Option<i64>, StoreError> {
    match row.try_get::<Option<i64>, _>(i) {
        Ok(v) => Ok(v),
        Err(_) => match row.try_get::<Option<i32>, _>(i) {
            Ok(v) => Ok(v.map(i64::from)),
            Err(e) => Err(StoreError::Unavailable(format!("column {i}: {e}"))),
        },
    }
}

fn text(row: &AnyRow, i: usize) -> Result<String, StoreError> {
    row.try_get::<String, _>(i).map_err(|e| StoreError::Unavailable(format!("column {i}: {e}")))
}

/// A nullable text column; MySQL sends TEXT columns with the BLOB wire type, so bytes are accepted too.
fn opt_text(row: &AnyRow, i: usize) -> Result<Option<String>, StoreError> {
    row.try_get::<Option<String>, _>(i)
        .or_else(|_| row.try_get::<Option<Vec<u8>>, _>(i).map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned())))
        .map_err(|e| StoreError::Unavailable(format!("column {i}: {e}")))
}

/// Timestamps differ in precision between databases; drover shows them to the second.
fn timestamp(row: &AnyRow, i: usize) -> Result<String, StoreError> {
    let t = text(row, i)?;
    Ok(t.chars().take(19).collect::<String>().replacen(' ', "T", 1))
}

fn row_to_route(row: &AnyRow) -> Result<StoredRoute, StoreError> {
    Ok(StoredRoute {
        id: int(row, 0)?,
        virtual_model_name: text(row, 1)?,
        server_url: text(row, 2)?,
        actual_model_name: text(row, 3)?,
        weight: int(row, 4)?,
        priority: int(row, 5)?,
        device: text(row, 6)?,
        performance: row
            .try_get::<f64, _>(7)
            .or_else(|_| row.try_get::<f32, _>(7).map(f64::from))
            .or_else(|_| int(row, 7).map(|v| v as f64))
            .map_err(|e| StoreError::Unavailable(format!("performance: {e}")))?,
        description: opt_text(row, 8)?,
        is_active: int(row, 9)? != 0,
        created_at: timestamp(row, 10)?,
        updated_at: timestamp(row, 11)?,
        count: int(row, 12)?,
        skip_resource_check: int(row, 13)? != 0,
        probe_url: opt_text(row, 14)?,
        max_concurrency: opt_int(row, 15)?,
    })
}

fn row_to_key(row: &AnyRow) -> Result<StoredKey, StoreError> {
    let models_text = opt_text(row, 4)?.unwrap_or_default();
    let models = serde_json::from_str(&models_text)
        .map_err(|e| StoreError::Unavailable(format!("models {models_text:?}: {e}")))?;
    Ok(StoredKey {
        id: int(row, 0)?,
        name: text(row, 1)?,
        key_hash: text(row, 2)?,
        key_prefix: text(row, 3)?,
        models,
        requests_per_minute: opt_int(row, 5)?,
        tokens_per_minute: opt_int(row, 6)?,
        expires_at: opt_text(row, 7)?,
        is_active: int(row, 8)? != 0,
        created_at: timestamp(row, 9)?,
        request_count: int(row, 10)?,
        prompt_tokens: int(row, 11)?,
        completion_tokens: int(row, 12)?,
        weight: int(row, 13)?,
        priority: text(row, 14)?,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_hidden() {
        assert_eq!(super::redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(super::redact_url("sqlite://drover.db"), "sqlite://drover.db");
    }

    use super::*;

    #[test]
    fn backends_from_urls() {
        assert_eq!(Backend::of("sqlite://drover.db"), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgresql://h/db"), Some(Backend::Postgres));
        assert_eq!(Backend::of("mariadb://h/db"), Some(Backend::MySql));
        assert_eq!(Backend::of("redis://h"), None);
    }

    #[test]
    fn postgres_numbers_placeholders() {
        assert_eq!(Backend::Postgres.sql("a = ? AND b = ?"), "a = $1 AND b = $2");
        assert_eq!(Backend::MySql.sql("a = ?"), "a = ?");
    }

    #[tokio::test]
    async fn sqlite_round_trip_and_marker() {
        let dir = std::env::temp_dir().join(format!("drover-store-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/t.db", dir.display());
        let store = Store::connect(&url, 2).await.unwrap();
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        let m0 = store.marker().await.unwrap();
        let fields = RouteFields {
            virtual_model_name: Some("chat".into()),
            server_url: Some("http://a:1".into()),
            actual_model_name: Some("qwen3:14b".into()),
            weight: Some(30),
            ..Default::default()
        };
        let r = store.insert(&fields).await.unwrap();
        assert_eq!((r.weight, r.priority, r.device.as_str(), r.is_active), (30, 1, "GPU", true));
        let m1 = store.marker().await.unwrap();
        assert!(m1 > m0);
        store.add_counts(&[(r.id, 5)]).await.unwrap();
        assert_eq!(store.marker().await.unwrap(), m1, "counts do not look like a routing change");
        assert_eq!(store.get(r.id).await.unwrap().unwrap().count, 5);
        let patch = RouteFields { is_active: Some(false), ..Default::default() };
        assert!(!store.update(r.id, &patch).await.unwrap().unwrap().is_active);
        assert!(store.marker().await.unwrap() > m1);
        assert!(store.update(999, &patch).await.unwrap().is_none());
        assert!(store.delete(r.id).await.unwrap());
        assert!(!store.delete(r.id).await.unwrap());
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_uniqueness_violation_is_a_conflict() {
        let dir = std::env::temp_dir().join(format!("drover-store-conflict-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::connect(&format!("sqlite://{}/t.db", dir.display()), 1).await.unwrap();
        store.migrate().await.unwrap();
        let fields = KeyFields { name: Some("ci".into()), models: Some(vec!["*".into()]), ..Default::default() };
        store.insert_key(&fields, "same-hash", "drv_abc").await.unwrap();
        let again = store.insert_key(&fields, "same-hash", "drv_abc").await.unwrap_err();
        assert!(matches!(again, StoreError::Conflict(_)), "{again:?}");
        assert_eq!(store.list_keys().await.unwrap().len(), 1, "nothing half-written");
        assert!(matches!(store.get_key(12345).await, Ok(None)));
        store.close().await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// On a paused clock: the pool's 3 s acquire timeout passes at once.
    #[tokio::test(start_paused = true)]
    async fn an_unreachable_store_is_unavailable() {
        let away = Store::connect("postgres://u:p@127.0.0.1:1/db", 1).await.err().unwrap();
        assert!(matches!(away, StoreError::Unavailable(_)), "{away:?}");
        assert!(away.to_string().contains("u:***@"), "password hidden: {away}");
    }
}
