//! Model metadata, statistics and repository index ↔ protobuf, both ways: a worker encodes
//! them, the fleet router decodes its workers' answers (and encodes the merged result).

use flotilla_core::repository::IndexEntry;
use flotilla_core::service::{ModelMetadata, TensorMeta, VersionStats};
use flotilla_core::stats::{CountNs, StatsSnapshot};
use flotilla_proto::inference as pb;

pub fn metadata_to_proto(m: ModelMetadata) -> pb::ModelMetadataResponse {
    let tensors = |ts: Vec<TensorMeta>| {
        ts.into_iter()
            .map(|t| pb::model_metadata_response::TensorMetadata { name: t.name, datatype: t.datatype, shape: t.shape })
            .collect()
    };
    pb::ModelMetadataResponse {
        name: m.name,
        versions: m.versions,
        platform: m.platform,
        inputs: tensors(m.inputs),
        outputs: tensors(m.outputs),
    }
}

pub fn metadata_from_proto(m: pb::ModelMetadataResponse) -> ModelMetadata {
    let tensors = |ts: Vec<pb::model_metadata_response::TensorMetadata>| {
        ts.into_iter().map(|t| TensorMeta { name: t.name, datatype: t.datatype, shape: t.shape }).collect()
    };
    ModelMetadata {
        name: m.name,
        versions: m.versions,
        platform: m.platform,
        inputs: tensors(m.inputs),
        outputs: tensors(m.outputs),
    }
}

fn duration(c: CountNs) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count: c.count, ns: c.ns })
}

fn count_ns(d: Option<pb::StatisticDuration>) -> CountNs {
    d.map(|d| CountNs { count: d.count, ns: d.ns }).unwrap_or_default()
}

pub fn stats_to_proto(row: VersionStats) -> pb::ModelStatistics {
    let s = row.stats;
    pb::ModelStatistics {
        name: row.name,
        version: row.version,
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration(CountNs::default()),
            cache_miss: duration(CountNs::default()),
        }),
        batch_stats: s
            .batches
            .iter()
            .map(|(size, [i, c, o])| pb::InferBatchStatistics {
                batch_size: *size,
                compute_input: duration(*i),
                compute_infer: duration(*c),
                compute_output: duration(*o),
            })
            .collect(),
        memory_usage: vec![],
        response_stats: Default::default(),
    }
}

pub fn stats_from_proto(m: pb::ModelStatistics) -> VersionStats {
    let i = m.inference_stats.unwrap_or_default();
    let stats = StatsSnapshot {
        last_inference_ms: m.last_inference,
        inference_count: m.inference_count,
        execution_count: m.execution_count,
        success: count_ns(i.success),
        fail: count_ns(i.fail),
        queue: count_ns(i.queue),
        compute_input: count_ns(i.compute_input),
        compute_infer: count_ns(i.compute_infer),
        compute_output: count_ns(i.compute_output),
        batches: m
            .batch_stats
            .into_iter()
            .map(|b| (b.batch_size, [count_ns(b.compute_input), count_ns(b.compute_infer), count_ns(b.compute_output)]))
            .collect(),
    };
    VersionStats { name: m.name, version: m.version, stats }
}

pub fn index_to_proto(e: IndexEntry) -> pb::repository_index_response::ModelIndex {
    pb::repository_index_response::ModelIndex { name: e.name, version: e.version, state: e.state, reason: e.reason }
}

pub fn index_from_proto(e: pb::repository_index_response::ModelIndex) -> IndexEntry {
    IndexEntry { name: e.name, version: e.version, state: e.state, reason: e.reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip() {
        let mut snap = StatsSnapshot {
            last_inference_ms: 5,
            inference_count: 3,
            execution_count: 2,
            success: CountNs { count: 3, ns: 300 },
            ..Default::default()
        };
        snap.batches.insert(2, [CountNs { count: 1, ns: 1 }, CountNs { count: 1, ns: 2 }, CountNs { count: 1, ns: 3 }]);
        let row = VersionStats { name: "m".into(), version: "1".into(), stats: snap.clone() };
        let back = stats_from_proto(stats_to_proto(row));
        assert_eq!((back.name.as_str(), back.version.as_str()), ("m", "1"));
        assert_eq!(back.stats, snap);
    }

    #[test]
    fn metadata_round_trip() {
        let m = ModelMetadata {
            name: "m".into(),
            versions: vec!["1".into()],
            platform: "onnxruntime_onnx".into(),
            inputs: vec![TensorMeta { name: "x".into(), datatype: "FP32".into(), shape: vec![-1, 4] }],
            outputs: vec![],
        };
        assert_eq!(metadata_from_proto(metadata_to_proto(m.clone())), m);
    }
}
