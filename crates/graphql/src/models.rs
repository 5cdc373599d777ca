//! The root `Query`, and models through the protocol operations of [`flotilla_core::Api`]
//! (a worker's service or the fleet router: the same calls the REST endpoints make).

use crate::{drift, fail, features, fleet, Result, Sources};
use async_graphql::{Context, Json, Object, SimpleObject};
use flotilla_core::api::Readiness;
use flotilla_core::auth::Scope;
use flotilla_core::repository::IndexEntry;
use flotilla_core::service::VersionStats;
use flotilla_core::Api;
use futures::future::BoxFuture;
use serde_json::Value;

type CoreResult<T> = std::result::Result<T, flotilla_core::Error>;

/// The protocol operations the resolvers read, object-safe (so one schema serves a worker and
/// a router); implemented for every [`Api`] by calling it.
pub trait Models: Send + Sync + 'static {
    fn server_name(&self) -> String;
    fn server_version(&self) -> String;
    fn live(&self) -> bool;
    fn ready(&self) -> bool;
    fn index(&self) -> BoxFuture<'_, CoreResult<Vec<IndexEntry>>>;
    fn model_ready<'a>(&'a self, name: &'a str, version: &'a str) -> BoxFuture<'a, Readiness>;
    /// The model config as `/v2/models/{m}/config` answers it.
    fn config<'a>(&'a self, name: &'a str, version: &'a str) -> BoxFuture<'a, CoreResult<Value>>;
    fn statistics<'a>(&'a self, name: &'a str, version: &'a str) -> BoxFuture<'a, CoreResult<Vec<VersionStats>>>;
}

impl<A: Api> Models for A {
    fn server_name(&self) -> String {
        self.options().server_name.clone()
    }
    fn server_version(&self) -> String {
        self.options().server_version.clone()
    }
    fn live(&self) -> bool {
        Api::live(self)
    }
    fn ready(&self) -> bool {
        Api::ready(self)
    }
    fn index(&self) -> BoxFuture<'_, CoreResult<Vec<IndexEntry>>> {
        Box::pin(self.repository_index(false))
    }
    fn model_ready<'a>(&'a self, name: &'a str, version: &'a str) -> BoxFuture<'a, Readiness> {
        Box::pin(Api::model_ready(self, name, version))
    }
    fn config<'a>(&'a self, name: &'a str, version: &'a str) -> BoxFuture<'a, CoreResult<Value>> {
        Box::pin(async move { Ok(flotilla_core::config::to_json(&*self.model_config(name, version).await?)) })
    }
    fn statistics<'a>(&'a self, name: &'a str, version: &'a str) -> BoxFuture<'a, CoreResult<Vec<VersionStats>>> {
        Box::pin(Api::statistics(self, name, version))
    }
}

pub(crate) fn sources<'c>(ctx: &Context<'c>) -> Result<&'c Sources> {
    ctx.data::<Sources>()
}

/// [`sources`] for a caller holding `scope` (when tokens are checked): what each root field
/// asks first, as the REST endpoint it mirrors does (`fleet` needs any token, the HTTP layer's check).
fn allowed<'c>(ctx: &Context<'c>, scope: Scope) -> Result<&'c Sources> {
    if let Some(crate::Caller(Some(identity))) = ctx.data_opt::<crate::Caller>() {
        identity.require(scope).map_err(fail)?;
    }
    sources(ctx)
}

/// The root of every query (there is no mutation and no subscription).
pub struct Query;

#[Object]
impl Query {
    /// Server name, version and health.
    async fn server(&self, ctx: &Context<'_>) -> Result<Server> {
        let m = &allowed(ctx, Scope::Infer)?.models;
        Ok(Server { name: m.server_name(), version: m.server_version(), live: m.live(), ready: m.ready() })
    }

    /// The models of the repository (a router: of its workers), by name.
    async fn models(&self, ctx: &Context<'_>, #[graphql(default)] ready_only: bool) -> Result<Vec<Model>> {
        let index = allowed(ctx, Scope::Infer)?.models.index().await.map_err(fail)?;
        let mut models: Vec<Model> = Vec::new();
        for entry in index.into_iter().filter(|e| !ready_only || e.state == "READY") {
            match models.iter_mut().find(|m| m.name == entry.name) {
                Some(m) => m.entries.push(entry),
                None => models.push(Model { name: entry.name.clone(), entries: vec![entry] }),
            }
        }
        Ok(models)
    }

    /// One model by name (an error names an unknown one).
    async fn model(&self, ctx: &Context<'_>, name: String) -> Result<Model> {
        let index = allowed(ctx, Scope::Infer)?.models.index().await.map_err(fail)?;
        let entries: Vec<IndexEntry> = index.into_iter().filter(|e| e.name == name).collect();
        if entries.is_empty() {
            let e = flotilla_core::Error::not_found(format!("Request for unknown model: '{name}' is not found"));
            return Err(fail(e));
        }
        Ok(Model { name, entries })
    }

    /// The feature store's views (a worker with `--feature-repo`).
    async fn feature_views(&self, ctx: &Context<'_>) -> Result<Vec<features::FeatureView>> {
        features::views(allowed(ctx, Scope::FeaturesRead)?)
    }

    async fn feature_view(&self, ctx: &Context<'_>, name: String) -> Result<features::FeatureView> {
        features::view(allowed(ctx, Scope::FeaturesRead)?, &name)
    }

    /// Online feature values for entity rows, as `/get-online-features` reads them: `features`
    /// (`view:feature` or `view`) or a `featureService`, and `entities` (join key → values).
    async fn online_features(
        &self,
        ctx: &Context<'_>,
        features: Option<Vec<String>>,
        feature_service: Option<String>,
        entities: Json<Value>,
        #[graphql(default)] full_feature_names: bool,
    ) -> Result<features::OnlineFeatures> {
        features::online(allowed(ctx, Scope::FeaturesRead)?, features, feature_service, entities.0, full_feature_names)
            .await
    }

    /// Drift state of a model: this worker's windows, or on a router the fleet's.
    async fn drift(&self, ctx: &Context<'_>, model: String) -> Result<drift::ModelDrift> {
        drift::model_drift(allowed(ctx, Scope::Infer)?, &model).await
    }

    /// The fleet as the router sees it (only on `flotilla route`).
    async fn fleet(&self, ctx: &Context<'_>) -> Result<fleet::FleetView> {
        fleet::view(sources(ctx)?)
    }
}

#[derive(SimpleObject)]
pub struct Server {
    name: String,
    version: String,
    live: bool,
    ready: bool,
}

/// A model and its versions in the repository index.
pub struct Model {
    name: String,
    entries: Vec<IndexEntry>,
}

#[Object]
impl Model {
    async fn name(&self) -> &str {
        &self.name
    }

    /// Versions as the repository index lists them (a model never loaded has one entry with
    /// an empty version).
    async fn versions(&self) -> Vec<ModelVersion> {
        self.entries.iter().map(|e| ModelVersion { model: self.name.clone(), entry: e.clone() }).collect()
    }

    /// Whether the model (its default version) takes requests.
    async fn ready(&self, ctx: &Context<'_>) -> Result<bool> {
        Ok(sources(ctx)?.models.model_ready(&self.name, "").await.ready)
    }

    /// Why the model is not ready (null when it is).
    async fn not_ready_reason(&self, ctx: &Context<'_>) -> Result<Option<String>> {
        let r = sources(ctx)?.models.model_ready(&self.name, "").await;
        Ok(r.reason.filter(|_| !r.ready).map(|e| e.message))
    }

    /// The model config, as `/v2/models/{m}/config` answers it.
    async fn config(&self, ctx: &Context<'_>) -> Result<Json<Value>> {
        Ok(Json(sources(ctx)?.models.config(&self.name, "").await.map_err(fail)?))
    }

    /// Statistics of every version.
    async fn statistics(&self, ctx: &Context<'_>) -> Result<Vec<Statistics>> {
        let rows = sources(ctx)?.models.statistics(&self.name, "").await.map_err(fail)?;
        Ok(rows.into_iter().map(Statistics).collect())
    }

    /// The model's drift state (as the top-level `drift` field).
    async fn drift(&self, ctx: &Context<'_>) -> Result<drift::ModelDrift> {
        drift::model_drift(sources(ctx)?, &self.name).await
    }
}

pub struct ModelVersion {
    model: String,
    entry: IndexEntry,
}

#[Object]
impl ModelVersion {
    async fn version(&self) -> &str {
        &self.entry.version
    }

    /// `READY`, `UNAVAILABLE`, or empty for a model never loaded.
    async fn state(&self) -> &str {
        &self.entry.state
    }

    async fn reason(&self) -> &str {
        &self.entry.reason
    }

    async fn ready(&self, ctx: &Context<'_>) -> Result<bool> {
        Ok(sources(ctx)?.models.model_ready(&self.model, &self.entry.version).await.ready)
    }

    async fn config(&self, ctx: &Context<'_>) -> Result<Json<Value>> {
        let m = &sources(ctx)?.models;
        Ok(Json(m.config(&self.model, &self.entry.version).await.map_err(fail)?))
    }

    /// This version's statistics (null when it has none).
    async fn statistics(&self, ctx: &Context<'_>) -> Result<Option<Statistics>> {
        if self.entry.version.is_empty() {
            return Ok(None);
        }
        let m = &sources(ctx)?.models;
        let rows = m.statistics(&self.model, &self.entry.version).await.map_err(fail)?;
        Ok(rows.into_iter().next().map(Statistics))
    }
}

/// One version's statistics.
pub struct Statistics(VersionStats);

#[Object]
impl Statistics {
    async fn version(&self) -> &str {
        &self.0.version
    }
    async fn inference_count(&self) -> u64 {
        self.0.stats.inference_count
    }
    async fn execution_count(&self) -> u64 {
        self.0.stats.execution_count
    }
    async fn success_count(&self) -> u64 {
        self.0.stats.success.count
    }
    async fn fail_count(&self) -> u64 {
        self.0.stats.fail.count
    }
    /// Milliseconds since the epoch of the last inference (0: none yet).
    async fn last_inference_ms(&self) -> u64 {
        self.0.stats.last_inference_ms
    }
    /// The whole entry as `/v2/models/{m}/versions/{v}/stats` lists it in `model_stats`.
    async fn document(&self) -> Json<Value> {
        let doc = flotilla_http::stats_json(vec![self.0.clone()]);
        Json(doc["model_stats"][0].clone())
    }
}
