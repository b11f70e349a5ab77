//! A route before validation, whatever it comes from: the config file's `routes:`, a row of
//! the store, or an admin request. `RouteInput::validate` is the one validator for all three.

use serde::Deserialize;

use super::model::RouteSpec;
use super::rules;
use crate::protocol::ollama::ServerUrl;

/// A route as written, in the config file (`routes:`), a row of the store, or an admin
/// request, before validation. `RouteInput::validate` is the one validator for all three.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteInput {
    #[serde(default)]
    pub(crate) virtual_model_name: Option<String>,
    #[serde(default)]
    pub(crate) server_url: Option<String>,
    #[serde(default)]
    pub(crate) actual_model_name: Option<String>,
    #[serde(default)]
    pub(crate) weight: Option<i64>,
    #[serde(default)]
    pub(crate) priority: Option<i64>,
    #[serde(default, rename = "type")]
    pub(crate) device: Option<String>,
    #[serde(default)]
    pub(crate) performance: Option<f64>,
    #[serde(default)]
    pub(crate) description: Option<String>,
    #[serde(default)]
    pub(crate) is_active: Option<bool>,
    #[serde(default)]
    pub(crate) skip_resource_check: Option<bool>,
    #[serde(default)]
    pub(crate) probe_url: Option<String>,
    #[serde(default)]
    pub(crate) max_concurrency: Option<i64>,
}

impl RouteInput {
    /// The validated route, with defaults for what is not given; or every bad field, named
    /// as in the table and the admin API, with why.
    pub(crate) fn validate(self) -> Result<RouteSpec, Vec<(&'static str, String)>> {
        let mut bad: Vec<(&'static str, String)> = Vec::new();
        let mut check = |field: &'static str, result: Result<(), String>| {
            if let Err(e) = result {
                bad.push((field, e));
            }
        };
        let virtual_model_name = self.virtual_model_name.unwrap_or_default();
        match self.server_url {
            None => check("server_url", Err("is required".into())),
            Some(_) if virtual_model_name.is_empty() => check("virtual_model_name", Err("is required".into())),
            Some(_) => check("virtual_model_name", rules::name(&virtual_model_name)),
        }
        let actual_model_name = self.actual_model_name.unwrap_or_else(|| virtual_model_name.clone());
        check("actual_model_name", rules::name(&actual_model_name));
        let weight = self.weight.unwrap_or(1);
        check("weight", rules::at_least_one(weight));
        let priority = self.priority.unwrap_or(1);
        check("priority", rules::at_least_one(priority));
        let device = rules::device(self.device.as_deref().unwrap_or("GPU"));
        check("type", device.clone().map(drop));
        let performance = self.performance.unwrap_or(0.0);
        check("performance", rules::performance(performance));
        if let Some(n) = self.max_concurrency {
            check("max_concurrency", rules::at_least_one(n));
        }
        let server_url = self.server_url.as_deref().map(ServerUrl::parse).transpose();
        check("server_url", server_url.clone().map(drop).map_err(|e| e.to_string()));
        let probe_url = self.probe_url.as_deref().filter(|p| !p.is_empty()).map(ServerUrl::parse).transpose();
        check("probe_url", probe_url.clone().map(drop).map_err(|e| e.to_string()));
        match (server_url, probe_url, device) {
            (Ok(Some(server_url)), Ok(probe_url), Ok(device)) if bad.is_empty() => Ok(RouteSpec {
                virtual_model_name,
                server_url,
                actual_model_name,
                weight: weight as u32,
                priority: priority as u32,
                device,
                performance,
                description: self.description.unwrap_or_default(),
                is_active: self.is_active.unwrap_or(true),
                skip_resource_check: self.skip_resource_check.unwrap_or(false),
                probe_url,
                max_concurrency: self.max_concurrency.map(|n| n as usize),
            }),
            _ => Err(bad),
        }
    }
}

impl From<&crate::storage::store::StoredRoute> for RouteInput {
    fn from(row: &crate::storage::store::StoredRoute) -> RouteInput {
        RouteInput {
            virtual_model_name: Some(row.virtual_model_name.clone()),
            server_url: Some(row.server_url.clone()),
            actual_model_name: Some(row.actual_model_name.clone()),
            weight: Some(row.weight),
            priority: Some(row.priority),
            device: Some(row.device.clone()),
            performance: Some(row.performance),
            description: row.description.clone(),
            is_active: Some(row.is_active),
            skip_resource_check: Some(row.skip_resource_check),
            probe_url: row.probe_url.clone(),
            max_concurrency: row.max_concurrency,
        }
    }
}
