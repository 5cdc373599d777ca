//! The schema over a stub of [`Models`]: limits, read-only shape, errors.

use super::*;
use crate::models::Models;
use flotilla_core::api::Readiness;
use flotilla_core::repository::IndexEntry;
use flotilla_core::service::VersionStats;
use futures::future::BoxFuture;
use serde_json::Value;

struct Stub;

type R<T> = std::result::Result<T, flotilla_core::Error>;

impl Models for Stub {
    fn server_name(&self) -> String {
        "stub".into()
    }
    fn server_version(&self) -> String {
        "0".into()
    }
    fn live(&self) -> bool {
        true
    }
    fn ready(&self) -> bool {
        true
    }
    fn index(&self) -> BoxFuture<'_, R<Vec<IndexEntry>>> {
        let e =
            |v: &str| IndexEntry { name: "m".into(), version: v.into(), state: "READY".into(), reason: String::new() };
        Box::pin(async move { Ok(vec![e("1"), e("2")]) })
    }
    fn model_ready<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, Readiness> {
        Box::pin(async { Readiness::ready() })
    }
    fn config<'a>(&'a self, name: &'a str, _: &'a str) -> BoxFuture<'a, R<Value>> {
        Box::pin(async move { Ok(serde_json::json!({ "name": name })) })
    }
    fn statistics<'a>(&'a self, _: &'a str, _: &'a str) -> BoxFuture<'a, R<Vec<VersionStats>>> {
        Box::pin(async { Ok(vec![]) })
    }
}

fn stub() -> FlotillaSchema {
    schema(Sources { models: Arc::new(Stub), features: None, drift: None, fleet: None })
}

async fn run(query: &str) -> Value {
    serde_json::to_value(stub().execute(query).await).unwrap_or_default()
}

#[tokio::test]
async fn models_and_versions() {
    let r = run("{ models { name ready config versions { version state ready } } }").await;
    assert_eq!(r["data"]["models"][0]["name"], "m");
    assert_eq!(r["data"]["models"][0]["config"]["name"], "m");
    assert_eq!(r["data"]["models"][0]["versions"][1]["version"], "2");
}

#[tokio::test]
async fn read_only() {
    let sdl = stub().sdl();
    assert!(sdl.contains("type Query"));
    assert!(!sdl.contains("type Mutation") && !sdl.contains("type Subscription"));
    let r = run("mutation { x }").await;
    assert!(r["errors"][0]["message"].as_str().unwrap_or_default().to_lowercase().contains("mutation"), "{r}");
}

#[tokio::test]
async fn over_deep_and_over_complex_queries_are_refused() {
    let deep = format!(
        "{{ __schema {{ queryType {{ fields {{ type {{ {}name{} }} }} }} }} }}",
        "ofType { ".repeat(14),
        " }".repeat(14)
    );
    let r = run(&deep).await;
    assert!(r["errors"][0]["message"].as_str().unwrap_or_default().contains("Query is nested too deep"), "{r}");
    let wide: String = (0..MAX_COMPLEXITY + 1).map(|i| format!("a{i}: server {{ name }} ")).collect();
    let r = run(&format!("{{ {wide} }}")).await;
    assert!(r["errors"][0]["message"].as_str().unwrap_or_default().contains("Query is too complex"), "{r}");
}

#[tokio::test]
async fn missing_parts_say_why() {
    let r = run("{ featureViews { name } }").await;
    assert!(r["errors"][0]["message"].as_str().unwrap_or_default().contains("no feature store"));
    assert_eq!(r["errors"][0]["extensions"]["code"], "unavailable");
    let r = run("{ fleet { policy } }").await;
    assert!(r["errors"][0]["message"].as_str().unwrap_or_default().contains("not a fleet router"));
    let r = run(r#"{ model(name: "nope") { name } }"#).await;
    assert_eq!(r["errors"][0]["extensions"]["code"], "not_found");
}
