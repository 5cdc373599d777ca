//! Feast's online serving gRPC API (`feast.serving.ServingService`) over the feature store: the
//! same request and answer as `POST /get-online-features`, in Feast's protobuf messages.

use flotilla_features::feature_store::Status;
use flotilla_features::serving::OnlineResponse;
use flotilla_features::value::{Value, ValueType};
use flotilla_features::FeatureStore;
use flotilla_proto::feast::serving::get_online_features_request::Kind;
use flotilla_proto::feast::serving::serving_service_server::ServingService;
use flotilla_proto::feast::serving::{
    get_online_features_response::FeatureVector, FeatureList, FieldStatus, GetFeastServingInfoRequest,
    GetFeastServingInfoResponse, GetOnlineFeaturesRequest, GetOnlineFeaturesResponse,
    GetOnlineFeaturesResponseMetadata,
};
use flotilla_proto::feast::types::{value::Val, Value as PbValue};
use std::sync::Arc;
use tonic::{Request, Response, Status as RpcStatus};

pub struct FeatureServing {
    store: Arc<FeatureStore>,
}

impl FeatureServing {
    pub fn new(store: Arc<FeatureStore>) -> Self {
        Self { store }
    }
}

fn rpc_error(e: flotilla_features::FeatureError) -> RpcStatus {
    crate::status(e.into_core())
}

/// A protobuf value as the JSON the HTTP API takes (so both share one parser and its checks).
fn value_json(v: &PbValue, key: &str, row: usize) -> Result<serde_json::Value, RpcStatus> {
    use serde_json::Value as J;
    Ok(match &v.val {
        None | Some(Val::NullVal(_)) => J::Null,
        Some(Val::Int64Val(i)) => J::from(*i),
        Some(Val::Int32Val(i)) => J::from(*i),
        Some(Val::StringVal(s)) => J::String(s.clone()),
        Some(Val::BytesVal(b)) => J::String(String::from_utf8(b.clone()).map_err(|_| {
            RpcStatus::invalid_argument(format!("entities.{key}[{row}]: bytes keys must be UTF-8 here"))
        })?),
        Some(Val::DoubleVal(d)) => serde_json::Number::from_f64(*d).map(J::Number).unwrap_or(J::Null),
        Some(Val::FloatVal(f)) => serde_json::Number::from_f64(f64::from(*f)).map(J::Number).unwrap_or(J::Null),
        Some(Val::BoolVal(b)) => J::Bool(*b),
        Some(Val::UnixTimestampVal(s)) => J::from(*s),
        Some(_) => {
            return Err(RpcStatus::invalid_argument(format!("entities.{key}[{row}]: a list cannot be an entity key")))
        }
    })
}

fn pb_value(v: Option<&Value>) -> PbValue {
    let val = match v {
        None => Val::NullVal(0),
        Some(Value::Int32(i)) => Val::Int32Val(*i),
        Some(Value::Int64(i)) => Val::Int64Val(*i),
        Some(Value::Float32(f)) => Val::FloatVal(*f),
        Some(Value::Float64(f)) => Val::DoubleVal(*f),
        Some(Value::String(s)) => Val::StringVal(s.to_string()),
        Some(Value::Bool(b)) => Val::BoolVal(*b),
        Some(Value::Bytes(b)) => Val::BytesVal(b.to_vec()),
        Some(Value::UnixTimestamp(us)) => Val::UnixTimestampVal(us.div_euclid(1_000_000)),
        Some(Value::List(item, items)) => list(*item, items),
    };
    PbValue { val: Some(val) }
}

/// A list value as Feast's `*_list_val` of its item type.
fn list(item: ValueType, items: &[Value]) -> Val {
    use flotilla_proto::feast::types as t;
    macro_rules! collect {
        ($variant:ident, $list:ident, $pat:pat => $x:expr) => {
            Val::$variant(t::$list {
                val: items
                    .iter()
                    .filter_map(|v| match v {
                        $pat => Some($x),
                        _ => None,
                    })
                    .collect(),
            })
        };
    }
    match item {
        ValueType::Int32 => collect!(Int32ListVal, Int32List, Value::Int32(i) => *i),
        ValueType::Int64 => collect!(Int64ListVal, Int64List, Value::Int64(i) => *i),
        ValueType::Float32 => collect!(FloatListVal, FloatList, Value::Float32(f) => *f),
        ValueType::Float64 => collect!(DoubleListVal, DoubleList, Value::Float64(f) => *f),
        ValueType::String => collect!(StringListVal, StringList, Value::String(s) => s.to_string()),
        ValueType::Bool => collect!(BoolListVal, BoolList, Value::Bool(b) => *b),
        ValueType::Bytes => collect!(BytesListVal, BytesList, Value::Bytes(b) => b.to_vec()),
        _ => collect!(UnixTimestampListVal, Int64List, Value::UnixTimestamp(us) => us.div_euclid(1_000_000)),
    }
}

fn pb_status(s: Status) -> i32 {
    (match s {
        Status::Present => FieldStatus::Present,
        Status::NotFound => FieldStatus::NotFound,
        Status::OutsideMaxAge => FieldStatus::OutsideMaxAge,
        Status::NullValue => FieldStatus::NullValue,
    }) as i32
}

fn pb_response(r: OnlineResponse) -> GetOnlineFeaturesResponse {
    let results = r
        .columns
        .into_iter()
        .map(|c| FeatureVector {
            values: c.values.iter().map(|v| pb_value(v.as_ref())).collect(),
            statuses: c.statuses.into_iter().map(pb_status).collect(),
            event_timestamps: c
                .event_timestamps
                .into_iter()
                .map(|us| prost_types::Timestamp {
                    seconds: us.div_euclid(1_000_000),
                    nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
                })
                .collect(),
        })
        .collect();
    GetOnlineFeaturesResponse {
        metadata: Some(GetOnlineFeaturesResponseMetadata { feature_names: Some(FeatureList { val: r.feature_names }) }),
        results,
        status: true,
    }
}

#[tonic::async_trait]
impl ServingService for FeatureServing {
    async fn get_feast_serving_info(
        &self,
        _: Request<GetFeastServingInfoRequest>,
    ) -> Result<Response<GetFeastServingInfoResponse>, RpcStatus> {
        Ok(Response::new(GetFeastServingInfoResponse { version: format!("flotilla {}", env!("CARGO_PKG_VERSION")) }))
    }

    async fn get_online_features(
        &self,
        request: Request<GetOnlineFeaturesRequest>,
    ) -> Result<Response<GetOnlineFeaturesResponse>, RpcStatus> {
        let r = request.into_inner();
        let mut body = serde_json::Map::new();
        match r.kind {
            Some(Kind::FeatureService(s)) => {
                body.insert("feature_service".into(), s.into());
            }
            Some(Kind::Features(list)) => {
                body.insert("features".into(), list.val.into());
            }
            None => {}
        }
        let mut entities = serde_json::Map::new();
        for (key, values) in &r.entities {
            let column: Vec<serde_json::Value> =
                values.val.iter().enumerate().map(|(i, v)| value_json(v, key, i)).collect::<Result<_, _>>()?;
            entities.insert(key.clone(), column.into());
        }
        body.insert("entities".into(), entities.into());
        body.insert("full_feature_names".into(), r.full_feature_names.into());
        let parsed = self.store.parse_online_request(&serde_json::Value::Object(body)).map_err(rpc_error)?;
        let response = self.store.get_online_features(&parsed).await.map_err(rpc_error)?;
        Ok(Response::new(pb_response(response)))
    }
}
