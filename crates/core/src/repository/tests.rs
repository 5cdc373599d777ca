use super::*;
use crate::datatype::DataType;
use crate::engine::{AutocompleteOptions, Backend, Engine, Phases};
use crate::scheduler::Admission;
use crate::tensor::Tensor;
use flotilla_proto::inference::{ModelInput, ModelOutput};
use std::path::Path;

/// A test backend: `model.echo` holds a number; the engine answers OUT = that number.
struct EchoBackend;
struct EchoEngine(u8);

impl Engine for EchoEngine {
    fn infer(&self, _: &[Tensor], _: &mut Phases) -> Result<Vec<Tensor>> {
        Ok(vec![Tensor::new("OUT", DataType::U8, vec![1], vec![self.0])])
    }
}

impl Backend for EchoBackend {
    fn name(&self) -> &'static str {
        "echo"
    }
    fn platform(&self) -> &'static str {
        "echo"
    }
    fn serves(&self, c: &ModelConfig) -> bool {
        c.backend == "echo"
    }
    fn default_filenames(&self) -> &'static [&'static str] {
        &["model.echo"]
    }
    fn autocomplete(&self, c: &mut ModelConfig, _: &Path, _: &AutocompleteOptions) -> Result<()> {
        c.input = vec![ModelInput {
            name: "IN".into(),
            data_type: DataType::U8.to_config() as i32,
            dims: vec![1],
            ..Default::default()
        }];
        c.output = vec![ModelOutput {
            name: "OUT".into(),
            data_type: DataType::U8.to_config() as i32,
            dims: vec![1],
            ..Default::default()
        }];
        Ok(())
    }
    fn load(&self, _: &ModelConfig, file: &Path) -> Result<Arc<dyn Engine>> {
        let text = std::fs::read_to_string(file).map_err(|e| Error::invalid(format!("{}: {e}", file.display())))?;
        let n: u8 = text.trim().parse().map_err(|_| Error::invalid(format!("{}: not a number", file.display())))?;
        Ok(Arc::new(EchoEngine(n)))
    }
}

fn repo(mode: ControlMode) -> (tempfile::TempDir, Repository) {
    let dir = tempfile::tempdir().unwrap();
    let settings = LoadSettings {
        backends: vec![Arc::new(EchoBackend)],
        autocomplete: AutocompleteOptions::default(),
        default_instances: 1,
    };
    let r = Repository::new(dir.path().to_path_buf(), mode, settings);
    (dir, r)
}

fn write_version(root: &Path, model: &str, v: u64, value: &str) {
    let d = root.join(model).join(v.to_string());
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("model.echo"), value).unwrap();
}

async fn answer(r: &Repository, model: &str, version: &str) -> u8 {
    let mv = r.get(model, version).unwrap();
    mv.scheduler.run(vec![], Admission::now()).await.outputs.unwrap()[0].data[0]
}

#[tokio::test]
async fn version_policies() {
    let (dir, r) = repo(ControlMode::None);
    for v in 1..=3 {
        write_version(dir.path(), "m", v, &v.to_string());
    }
    std::fs::write(
        dir.path().join("m/config.pbtxt"),
        "backend: \"echo\"\nversion_policy: { latest { num_versions: 2 } }",
    )
    .unwrap();
    r.load_initial(&[]).await.unwrap();
    assert_eq!(r.model("m").unwrap().versions.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(answer(&r, "m", "").await, 3);
    assert_eq!(answer(&r, "m", "2").await, 2);
    assert_eq!(r.get("m", "1").unwrap_err().kind, ErrorKind::NotFound);

    let (dir, r) = repo(ControlMode::None);
    for v in [1, 5, 9] {
        write_version(dir.path(), "m", v, "1");
    }
    std::fs::write(
        dir.path().join("m/config.pbtxt"),
        "backend: \"echo\"\nversion_policy: { specific { versions: [1, 9, 12] } }",
    )
    .unwrap();
    r.load_initial(&[]).await.unwrap();
    assert_eq!(r.model("m").unwrap().versions.keys().copied().collect::<Vec<_>>(), vec![1, 9]);

    let (dir, r) = repo(ControlMode::None);
    for v in [1, 2] {
        write_version(dir.path(), "m", v, "1");
    }
    std::fs::write(dir.path().join("m/config.pbtxt"), "backend: \"echo\"\nversion_policy: { all { } }").unwrap();
    r.load_initial(&[]).await.unwrap();
    assert_eq!(r.model("m").unwrap().versions.len(), 2);
}

use crate::error::ErrorKind;

#[tokio::test]
async fn reload_is_atomic_and_a_bad_version_keeps_the_old_one() {
    let (dir, r) = repo(ControlMode::Poll);
    write_version(dir.path(), "m", 1, "10");
    r.load_initial(&[]).await.unwrap();
    let held = r.get("m", "").unwrap();
    // New content for version 1: new requests see it, a request holding the old version finishes on it.
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_version(dir.path(), "m", 1, "11");
    r.poll().await;
    assert_eq!(answer(&r, "m", "").await, 11);
    assert_eq!(held.scheduler.run(vec![], Admission::now()).await.outputs.unwrap()[0].data[0], 10);
    // Broken new files: the previous load keeps serving, the index says why.
    write_version(dir.path(), "m", 1, "not a number!");
    r.poll().await;
    assert_eq!(answer(&r, "m", "").await, 11);
    let index = r.index(false).unwrap();
    assert_eq!(index[0].state, "READY");
    assert!(index[0].reason.contains("not a number"), "{index:?}");
    // A broken new version is UNAVAILABLE while the old one serves.
    write_version(dir.path(), "m", 1, "12");
    write_version(dir.path(), "m", 2, "oops");
    std::fs::write(dir.path().join("m/config.pbtxt"), "backend: \"echo\"\nversion_policy: { all { } }").unwrap();
    r.poll().await;
    let index = r.index(false).unwrap();
    assert!(index.iter().any(|e| e.version == "2" && e.state == "UNAVAILABLE"), "{index:?}");
    assert_eq!(answer(&r, "m", "").await, 12);
    // Removing the folder unloads the model.
    std::fs::remove_dir_all(dir.path().join("m")).unwrap();
    r.poll().await;
    assert_eq!(r.get("m", "").unwrap_err().kind, ErrorKind::Unavailable);
}

#[tokio::test]
async fn control_modes_gate_the_repository_api() {
    let (dir, r) = repo(ControlMode::None);
    write_version(dir.path(), "m", 1, "1");
    r.load_initial(&[]).await.unwrap();
    assert_eq!(r.load("m", None).await.unwrap_err().kind, ErrorKind::FailedPrecondition);
    assert_eq!(r.unload("m").await.unwrap_err().kind, ErrorKind::FailedPrecondition);

    let (dir, r) = repo(ControlMode::Explicit);
    write_version(dir.path(), "a", 1, "1");
    write_version(dir.path(), "b", 1, "2");
    r.load_initial(&["a".to_string()]).await.unwrap();
    assert!(r.get("b", "").is_err());
    assert!(r.all_ready());
    r.load("b", None).await.unwrap();
    assert_eq!(answer(&r, "b", "").await, 2);
    r.unload("a").await.unwrap();
    assert!(r.get("a", "").unwrap_err().message.contains("unloaded"));
    assert_eq!(r.load("zzz", None).await.unwrap_err().kind, ErrorKind::NotFound);
    assert_eq!(r.load("../x", None).await.unwrap_err().kind, ErrorKind::InvalidArgument);
}
