//! The REST API as an OpenAPI 3.0 document, served at `GET /openapi.json`: KServe v2 with the
//! Triton extensions Flotilla implements, Feast's feature-server endpoints and drift, as the
//! router in `lib.rs` mounts them. Schemathesis runs it against the real server
//! (`tests/python/test_openapi.py`, and longer in `bench/openapi/run.sh`). Unsupported Triton
//! extensions (shared memory, trace and log settings, which answer 501) are left out.
//!
//! Written as data rather than derived with a macro crate: the handlers answer
//! `serde_json::Value` documents shaped by the protocol, so the schemas below are the protocol's
//! (KServe v2's `predict_v2.yaml`, Triton's extensions), and one place holds them.

use serde_json::{json, Value};

/// Which optional parts of the API this server mounts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Parts {
    pub features: bool,
    pub drift: bool,
}

fn error_responses() -> Value {
    json!({
        "default": {
            "description": "An error: the status and `flotilla-error-kind` come from the one error table (400 invalid argument or failed precondition, 401, 403, 404, 413, 429 with Retry-After, 500, 501, 503, 504)",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        }
    })
}

fn ok(description: &str, schema: Value) -> Value {
    let mut responses = error_responses();
    responses["200"] = json!({"description": description, "content": {"application/json": {"schema": schema}}});
    responses
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn model_param() -> Value {
    json!({"name": "model", "in": "path", "required": true, "schema": {"type": "string"}})
}

fn version_param() -> Value {
    json!({"name": "version", "in": "path", "required": true, "schema": {"type": "string"}})
}

fn get(id: &str, summary: &str, params: Vec<Value>, responses: Value) -> Value {
    json!({"get": {"operationId": id, "summary": summary, "parameters": params, "responses": responses}})
}

fn post(id: &str, summary: &str, params: Vec<Value>, body: Option<Value>, responses: Value) -> Value {
    let mut op = json!({"operationId": id, "summary": summary, "parameters": params, "responses": responses});
    if let Some(schema) = body {
        op["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    json!({ "post": op })
}

fn schemas() -> Value {
    let tensor_meta = json!({
        "type": "object", "required": ["name", "datatype", "shape"],
        "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                       "shape": {"type": "array", "items": {"type": "integer"}}}
    });
    let datatype = json!({"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
        "INT32", "INT64", "FP16", "BF16", "FP32", "FP64", "BYTES"]});
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
        "ServerMetadata": {"type": "object", "required": ["name", "version", "extensions"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"},
            "extensions": {"type": "array", "items": {"type": "string"}}}},
        "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
        "Ready": {"type": "object", "required": ["ready"], "properties": {"ready": {"type": "boolean"}}},
        "ModelReady": {"type": "object", "required": ["name", "ready"], "properties": {
            "name": {"type": "string"}, "ready": {"type": "boolean"}}},
        "TensorMetadata": tensor_meta,
        "ModelMetadata": {"type": "object", "required": ["name", "platform", "inputs", "outputs"], "properties": {
            "name": {"type": "string"}, "platform": {"type": "string"},
            "versions": {"type": "array", "items": {"type": "string"}},
            "inputs": {"type": "array", "items": reference("TensorMetadata")},
            "outputs": {"type": "array", "items": reference("TensorMetadata")}}},
        "ModelConfig": {"type": "object", "description": "Triton's model configuration as JSON (its field names)"},
        "Statistics": {"type": "object", "required": ["model_stats"], "properties": {
            "model_stats": {"type": "array", "items": {"type": "object", "required": ["name", "version"]}}}},
        "Parameters": {"type": "object", "additionalProperties": true},
        "RequestInput": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
            "name": {"type": "string"}, "datatype": datatype,
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "parameters": reference("Parameters"),
            "data": {"description": "row-major values, flat or nested"}}},
        "RequestOutput": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "parameters": reference("Parameters")}},
        "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
            "id": {"type": "string"}, "parameters": reference("Parameters"),
            "inputs": {"type": "array", "items": reference("RequestInput")},
            "outputs": {"type": "array", "items": reference("RequestOutput")}}},
        "ResponseOutput": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
            "name": {"type": "string"}, "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "parameters": reference("Parameters"), "data": {"type": "array"}}},
        "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
            "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"},
            "parameters": reference("Parameters"),
            "outputs": {"type": "array", "items": reference("ResponseOutput")}}},
        "RepositoryIndexRequest": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        "RepositoryIndex": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "version": {"type": "string"}, "state": {"type": "string"},
            "reason": {"type": "string"}}}},
        "LoadRequest": {"type": "object", "properties": {"parameters": reference("Parameters")}},
        "OnlineFeaturesRequest": {"type": "object", "required": ["entities"], "properties": {
            "features": {"type": "array", "items": {"type": "string"}},
            "feature_service": {"type": "string"},
            "entities": {"type": "object", "additionalProperties": {"type": "array"}},
            "full_feature_names": {"type": "boolean"}}},
        "OnlineFeaturesResponse": {"type": "object", "required": ["metadata", "results"], "properties": {
            "metadata": {"type": "object", "required": ["feature_names"], "properties": {
                "feature_names": {"type": "array", "items": {"type": "string"}}}},
            "results": {"type": "array", "items": {"type": "object", "required": ["values", "statuses"], "properties": {
                "values": {"type": "array"},
                "statuses": {"type": "array", "items": {"type": "string"}},
                "event_timestamps": {"type": "array", "items": {"type": "string"}}}}}}},
        "PushRequest": {"type": "object", "required": ["push_source_name", "df"], "properties": {
            "push_source_name": {"type": "string"}, "to": {"type": "string", "enum": ["online", "online_and_offline"]},
            "df": {"type": "object", "additionalProperties": {"type": "array"}}}},
        "PushResponse": {"type": "object", "required": ["applied", "stale"], "properties": {
            "applied": {"type": "integer"}, "stale": {"type": "integer"}}},
        "Drift": {"type": "object", "required": ["model"], "properties": {"model": {"type": "string"}},
                  "description": "the drift document: reference summary, settings, windows and alerts per version"}
    })
}

/// The OpenAPI document of this server's REST API.
pub fn document(parts: Parts) -> Value {
    let (m, v) = (model_param(), version_param());
    let mut paths = serde_json::Map::new();
    let mut add = |path: &str, item: Value| {
        paths.insert(path.to_string(), item);
    };
    add(
        "/v2",
        get("serverMetadata", "Server metadata", vec![], ok("name, version, extensions", reference("ServerMetadata"))),
    );
    add("/v2/health/live", get("serverLive", "Liveness", vec![], ok("live", reference("Live"))));
    add(
        "/v2/health/ready",
        get("serverReady", "Readiness (503 while not ready)", vec![], ok("ready", reference("Ready"))),
    );
    add(
        "/v2/models/stats",
        get("allStatistics", "Statistics of every model", vec![], ok("statistics", reference("Statistics"))),
    );
    // Each model read at `/v2/models/{model}<suffix>` and at `.../versions/{version}<suffix>`.
    let reads = [
        ("", "modelMetadata", "Model metadata", "metadata", "ModelMetadata"),
        ("/ready", "modelReady", "Model readiness", "readiness", "ModelReady"),
        ("/config", "modelConfig", "Model configuration", "config", "ModelConfig"),
        ("/stats", "modelStatistics", "Model statistics", "statistics", "Statistics"),
    ];
    for (suffix, id, summary, answer, schema) in reads {
        add(&format!("/v2/models/{{model}}{suffix}"), get(id, summary, vec![m.clone()], ok(answer, reference(schema))));
        add(
            &format!("/v2/models/{{model}}/versions/{{version}}{suffix}"),
            get(
                &id.replacen("model", "modelVersion", 1),
                &summary.replacen("Model", "Model version", 1),
                vec![m.clone(), v.clone()],
                ok(answer, reference(schema)),
            ),
        );
    }
    add(
        "/v2/models/{model}/infer",
        post(
            "infer",
            "Inference (JSON; binary tensors with Inference-Header-Content-Length)",
            vec![m.clone()],
            Some(reference("InferRequest")),
            ok("outputs", reference("InferResponse")),
        ),
    );
    add(
        "/v2/models/{model}/versions/{version}/infer",
        post(
            "inferVersion",
            "Inference on a version",
            vec![m.clone(), v.clone()],
            Some(reference("InferRequest")),
            ok("outputs", reference("InferResponse")),
        ),
    );
    add(
        "/v2/repository/index",
        post(
            "repositoryIndex",
            "The model repository's models and states",
            vec![],
            Some(reference("RepositoryIndexRequest")),
            ok("index", reference("RepositoryIndex")),
        ),
    );
    add(
        "/v2/repository/models/{model}/load",
        post(
            "repositoryLoad",
            "Load or reload a model (explicit mode; `config` parameter overrides)",
            vec![m.clone()],
            Some(reference("LoadRequest")),
            ok("loaded", json!({"type": "object"})),
        ),
    );
    add(
        "/v2/repository/models/{model}/unload",
        post(
            "repositoryUnload",
            "Unload a model (explicit mode)",
            vec![m.clone()],
            Some(reference("LoadRequest")),
            ok("unloaded", json!({"type": "object"})),
        ),
    );
    if parts.drift {
        add(
            "/v2/models/{model}/drift",
            get("modelDrift", "Drift state of a model", vec![m.clone()], ok("drift", reference("Drift"))),
        );
        add(
            "/v2/models/{model}/drift/window",
            get(
                "modelDriftWindows",
                "Open and recently closed drift windows (mergeable)",
                vec![
                    m.clone(),
                    json!({"name": "profile", "in": "query", "required": false, "schema": {"type": "boolean"}}),
                ],
                ok("windows", json!({"type": "object"})),
            ),
        );
    }
    if parts.features {
        add(
            "/get-online-features",
            post(
                "getOnlineFeatures",
                "Feast: online feature values for entity rows",
                vec![],
                Some(reference("OnlineFeaturesRequest")),
                ok("values", reference("OnlineFeaturesResponse")),
            ),
        );
        add(
            "/push",
            post(
                "push",
                "Feast: write rows into the online store",
                vec![],
                Some(reference("PushRequest")),
                ok("applied", reference("PushResponse")),
            ),
        );
        add("/health", get("featureServerHealth", "Feast feature server health", vec![], ok("healthy", json!({}))));
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Flotilla",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "KServe v2 / Open Inference Protocol REST API with Triton's extensions, Feast's feature server and drift monitoring. gRPC: inference.GRPCInferenceService (reflection on)."
        },
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                "description": "with --auth-tokens: the scopes infer, features:read, features:write, admin (README, Security)"}}
        },
        "security": [{"bearer": []}, {}]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_an_id_and_an_error_response() {
        let doc = document(Parts { features: true, drift: true });
        let paths = doc["paths"].as_object().expect("paths");
        assert!(paths.len() >= 20);
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in paths {
            for (method, op) in item.as_object().expect("operations") {
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                assert!(ids.insert(id.to_string()), "{id} twice");
                assert!(op["responses"]["default"].is_object() && op["responses"]["200"].is_object(), "{path}");
            }
        }
        // every $ref resolves
        let text = doc.to_string();
        for r in text.split("\"$ref\":\"#/components/schemas/").skip(1) {
            let name = &r[..r.find('"').expect("end of ref")];
            assert!(doc["components"]["schemas"][name].is_object(), "{name} is referenced but not defined");
        }
        let bare = document(Parts::default());
        assert!(bare["paths"].get("/push").is_none() && bare["paths"].get("/v2/models/{model}/drift").is_none());
    }
}
