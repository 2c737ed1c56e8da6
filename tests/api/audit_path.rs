//! The audit path must name the regular file the gateway writes, at start and for as long as it
//! runs: anything else fails closed with a line that says what happened, and nothing is renamed.

use crate::helpers::{
    config_toml, logs, problem_of, problem_type, spawn_app_with, start_world, Setup,
};
use sync_gateway::server::StartError;
use sync_gateway::{Application, Config};

#[tokio::test]
async fn an_audit_path_that_is_a_directory_stops_the_gateway_from_starting() {
    let world = start_world().await;
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_and_env(
        &config_toml(&world, dir.path(), &[]),
        [(
            "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".to_string(),
            world.secret.clone(),
        )],
    )
    .unwrap();
    match Application::build(config).await {
        Err(e @ StartError::Audit { .. }) => {
            assert!(
                e.to_string().contains("is a directory, not a regular file"),
                "{e}"
            )
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the gateway started with a directory as its audit file"),
    }
}

#[tokio::test]
async fn a_missing_audit_directory_stops_the_gateway_naming_the_directory_to_create() {
    let world = start_world().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not-yet").join("audit");
    let config = Config::from_toml_and_env(
        &config_toml(&world, &missing.join("audit.jsonl"), &[]),
        [(
            "SYNC_GATEWAY__ENTRA__CLIENT_SECRET".to_string(),
            world.secret.clone(),
        )],
    )
    .unwrap();
    match Application::build(config).await {
        Err(e @ StartError::Audit { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains(&format!(
                    "audit.path's directory {} does not exist: create it (e.g. `mkdir -p {}`)",
                    missing.display(),
                    missing.display()
                )),
                "{text}"
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("the gateway started without its audit directory"),
    }
    assert!(
        !missing.exists(),
        "the gateway created the directory itself"
    );
}

#[tokio::test]
async fn an_audit_file_replaced_by_a_directory_fails_closed_and_is_never_rotated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.jsonl");
    // Every commit is past the rotation size, so the next one would rotate.
    let mut app = spawn_app_with(
        Setup {
            audit_path: Some(path.clone()),
            ..Setup::default()
        }
        .set("audit.rotate_bytes", "1"),
    )
    .await;
    let token = app.token();
    assert_eq!(app.post_sync(&token).await.status(), 202);
    let calls = app.sims.graph.sync_calls();
    // The run's own `finished` record may still be on its way after the answer: let the trail
    // settle so that the file is replaced between two commits, not during one.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let finished_in_trail = || {
        app.audit_files().iter().any(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .contains("\"event\":\"finished\"")
        })
    };
    while !finished_in_trail() {
        assert!(
            std::time::Instant::now() < deadline,
            "the run never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let moved = dir.path().join("moved-away.jsonl");
    std::fs::rename(&path, &moved).unwrap();
    std::fs::create_dir(&path).unwrap();
    let resp = app.post_sync(&token).await;
    let status = resp.status();
    let problem = problem_of(resp).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["type"], problem_type("audit-unavailable"));
    assert_eq!(app.sims.graph.sync_calls(), calls, "Graph was called");
    assert!(path.is_dir(), "the directory was renamed");
    let renamed: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && *p != path)
        .collect();
    assert!(
        renamed.is_empty(),
        "the directory was rotated to {renamed:?}"
    );
    assert!(
        logs().contains("was replaced by a directory while the gateway was writing it"),
        "no log line says what happened"
    );

    // The file back where it belongs: the gateway writes again, on the same chain.
    std::fs::remove_dir(&path).unwrap();
    std::fs::rename(&moved, &path).unwrap();
    app.wait_until_ready().await;
    assert_eq!(app.post_sync(&token).await.status(), 202);
    // The run goes on writing (and, at this size, rotating) after the answer: the trail is
    // verified once the gateway has stopped, not while a rotation may be halfway.
    app.stop().await;
}
