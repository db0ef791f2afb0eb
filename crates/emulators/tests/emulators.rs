//! Starts the real emulators on free loopback ports and checks that each answers real requests,
//! that stop/restart keeps the port, and that nothing is left running afterwards.

use std::process::Command;
use std::time::{Duration, Instant};

use emulators::{process_group_alive, Emulators, Service};

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into()
}

/// Sends a request and returns (status, body).
fn call(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let agent = agent();
    let result = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("PUT", None) => agent.put(url).send_empty(),
        ("POST", Some(b)) => agent
            .post(url)
            .header("content-type", "application/json")
            .send(b),
        _ => panic!("unsupported request {method} {url}"),
    };
    let mut response = result.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .unwrap_or_else(|e| panic!("{method} {url}: reading the body: {e}"));
    (status, body)
}

fn start(services: &[Service]) -> Emulators {
    let started = Instant::now();
    let emu = Emulators::start(services).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "started {:?} in {:.2} s",
        services,
        started.elapsed().as_secs_f64()
    );
    emu
}

fn pubsub_creates_a_topic(emu: &Emulators, topic: &str) {
    let host = emu.pubsub_host().unwrap();
    let project = emu.project();
    let (status, body) = call(
        "PUT",
        &format!("http://{host}/v1/projects/{project}/topics/{topic}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains(&format!("projects/{project}/topics/{topic}")),
        "{body}"
    );
    let (status, body) = call(
        "GET",
        &format!("http://{host}/v1/projects/{project}/topics"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(topic), "{body}");
}

fn storage_creates_a_bucket(emu: &Emulators, bucket: &str) {
    let url = emu.storage_url().unwrap();
    let project = emu.project();
    let (status, body) = call(
        "POST",
        &format!("{url}/storage/v1/b?project={project}"),
        Some(&format!(r#"{{"name":"{bucket}"}}"#)),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        "GET",
        &format!("{url}/storage/v1/b?project={project}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(bucket), "{body}");
}

fn bigquery_creates_a_dataset(emu: &Emulators, dataset: &str) {
    let url = emu.bigquery_rest().unwrap();
    let project = emu.project();
    let (status, body) = call(
        "POST",
        &format!("{url}/bigquery/v2/projects/{project}/datasets"),
        Some(&format!(
            r#"{{"datasetReference":{{"projectId":"{project}","datasetId":"{dataset}"}}}}"#
        )),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(
        "GET",
        &format!("{url}/bigquery/v2/projects/{project}/datasets"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(dataset), "{body}");
    let grpc = emu.bigquery_grpc().unwrap();
    let grpc = grpc.trim_start_matches("http://");
    std::net::TcpStream::connect(grpc).unwrap_or_else(|e| panic!("gRPC port {grpc}: {e}"));
}

/// Creates a table with Google's `cbt` CLI when it is installed, else checks the gRPC port.
fn bigtable_creates_a_table(emu: &Emulators, table: &str) {
    let host = emu.bigtable_host().unwrap();
    let cbt = |args: &[&str]| {
        Command::new("cbt")
            .args(["-project", emu.project(), "-instance", "local-instance"])
            .args(args)
            .env("BIGTABLE_EMULATOR_HOST", &host)
            .output()
    };
    match cbt(&["createtable", table]) {
        Ok(out) => {
            assert!(out.status.success(), "cbt createtable: {out:?}");
            let out = cbt(&["ls"]).expect("cbt ls");
            assert!(out.status.success(), "cbt ls: {out:?}");
            assert!(
                String::from_utf8_lossy(&out.stdout).contains(table),
                "{out:?}"
            );
        }
        Err(e) => {
            eprintln!("cbt not available ({e}): checking the gRPC port only");
            std::net::TcpStream::connect(&host).unwrap_or_else(|e| panic!("{host}: {e}"));
        }
    }
}

#[test]
fn all_four_emulators_answer_real_requests() {
    let emu = start(&Service::ALL);
    pubsub_creates_a_topic(&emu, "invoices");
    bigtable_creates_a_table(&emu, "invoices");
    storage_creates_a_bucket(&emu, "invoices-raw");
    bigquery_creates_a_dataset(&emu, "invoices");

    let vars = emu.env_vars();
    let get = |k: &str| {
        vars.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{k} missing from {vars:?}"))
    };
    assert_eq!(get("PUBSUB_EMULATOR_HOST"), emu.pubsub_host().unwrap());
    assert_eq!(get("BIGTABLE_EMULATOR_HOST"), emu.bigtable_host().unwrap());
    assert_eq!(get("STORAGE_EMULATOR_HOST"), emu.storage_url().unwrap());
    assert_eq!(
        format!("http://{}", get("BIGQUERY_EMULATOR_HOST")),
        emu.bigquery_rest().unwrap()
    );
    assert_eq!(
        format!("http://{}", get("BIGQUERY_EMULATOR_GRPC_HOST")),
        emu.bigquery_grpc().unwrap()
    );
    assert_eq!(get("GOOGLE_CLOUD_PROJECT"), emu.project());
    let mut ports: Vec<String> = vars.iter().map(|(_, v)| v.clone()).collect();
    ports.sort();
    ports.dedup();
    assert_eq!(
        ports.len(),
        vars.len(),
        "endpoints must be distinct: {vars:?}"
    );
}

#[test]
fn a_stopped_emulator_restarts_on_the_same_port() {
    let mut emu = start(&Service::ALL);
    for service in Service::ALL {
        let addr = emu.addr(service).unwrap();
        let grpc = emu.bigquery_grpc();
        let pgid = emu.process_group(service).unwrap();

        emu.stop(service).unwrap();
        assert!(!emu.is_running(service));
        assert!(
            !process_group_alive(pgid),
            "{service} still running after stop"
        );
        assert!(
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "{service} still answers on {addr} after stop"
        );

        let started = Instant::now();
        emu.restart(service).unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "restarted {service} in {:.2} s",
            started.elapsed().as_secs_f64()
        );
        assert!(emu.is_running(service));
        assert_eq!(emu.addr(service), Some(addr), "{service} moved");
        assert_eq!(emu.bigquery_grpc(), grpc);
        match service {
            Service::PubSub => pubsub_creates_a_topic(&emu, "after-restart"),
            Service::Bigtable => bigtable_creates_a_table(&emu, "after-restart"),
            Service::Storage => storage_creates_a_bucket(&emu, "after-restart"),
            Service::BigQuery => bigquery_creates_a_dataset(&emu, "after_restart"),
        }
    }
    // Restarting a running emulator works too (stop + start).
    emu.restart(Service::Bigtable).unwrap();
    emu.check().unwrap();
}

#[test]
fn drop_stops_every_process_group_also_on_panic() {
    // A clean drop.
    let emu = start(&[Service::Bigtable, Service::Storage, Service::BigQuery]);
    let groups: Vec<i32> = emu
        .services()
        .into_iter()
        .map(|s| emu.process_group(s).unwrap())
        .collect();
    let log_dir = emu.log_dir().to_path_buf();
    assert!(groups.iter().all(|&g| process_group_alive(g)));
    drop(emu);
    for g in &groups {
        assert!(!process_group_alive(*g), "process group {g} left behind");
    }
    assert!(
        !log_dir.exists(),
        "log directory {} left behind",
        log_dir.display()
    );

    // A test that panics while holding the emulators.
    let (tx, rx) = std::sync::mpsc::channel();
    let outcome = std::thread::spawn(move || {
        let emu = start(&[Service::PubSub, Service::Bigtable]);
        let groups: Vec<i32> = emu
            .services()
            .into_iter()
            .map(|s| emu.process_group(s).unwrap())
            .collect();
        tx.send((groups, emu.log_dir().to_path_buf())).unwrap();
        panic!("deliberate panic while the emulators run");
    })
    .join();
    assert!(outcome.is_err(), "the thread should have panicked");
    let (groups, log_dir) = rx.recv().unwrap();
    assert_eq!(groups.len(), 2);
    for g in &groups {
        assert!(
            !process_group_alive(*g),
            "process group {g} left behind after a panic"
        );
    }
    // Logs are kept after a panic (for diagnosis); this panic was deliberate.
    assert!(log_dir.join("pubsub.log").exists());
    std::fs::remove_dir_all(&log_dir).unwrap();
}

/// A fake Google Cloud CLI root whose `cbtemulator` is the given shell script.
fn fake_sdk(name: &str, script: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let sdk =
        std::env::temp_dir().join(format!("emulators-fake-sdk-{}-{name}", std::process::id()));
    let dir = sdk.join("platform/bigtable-emulator");
    std::fs::create_dir_all(&dir).unwrap();
    let program = dir.join("cbtemulator");
    std::fs::write(&program, format!("#!/bin/sh\n{script}\n")).unwrap();
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    sdk
}

#[test]
fn an_emulator_that_exits_reports_its_log_tail() {
    let sdk = fake_sdk(
        "exits",
        "echo starting; echo 'fatal: something broke' >&2; exit 3",
    );
    let options = emulators::Options {
        gcloud_sdk: Some(sdk.clone()),
        start_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let err = Emulators::start_with(&[Service::Bigtable], options).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, emulators::Error::Exited { .. }), "{msg}");
    assert!(
        msg.starts_with("the Bigtable emulator exited (exit status: 3)"),
        "{msg}"
    );
    assert!(msg.contains("fatal: something broke"), "{msg}");
    if let emulators::Error::Exited { log, .. } = &err {
        std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
    }
    std::fs::remove_dir_all(sdk).unwrap();
}

#[test]
fn an_emulator_that_never_answers_times_out_and_is_stopped() {
    let pid_file = std::env::temp_dir().join(format!("emulators-hang-{}.pid", std::process::id()));
    let sdk = fake_sdk(
        "hangs",
        &format!(
            "echo $$ > {}; echo 'listening soon'; exec sleep 600",
            pid_file.display()
        ),
    );
    let options = emulators::Options {
        gcloud_sdk: Some(sdk.clone()),
        start_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let started = Instant::now();
    let err = Emulators::start_with(&[Service::Bigtable], options).unwrap_err();
    let msg = err.to_string();
    assert!(started.elapsed() < Duration::from_secs(15), "{msg}");
    assert!(matches!(err, emulators::Error::NotReady { .. }), "{msg}");
    assert!(msg.contains("did not answer on 127.0.0.1:"), "{msg}");
    assert!(msg.contains("listening soon"), "{msg}");
    // The hanging process (leader of its own group) was stopped when the failed start returned.
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(!process_group_alive(pid), "process group {pid} left behind");
    std::fs::remove_file(&pid_file).unwrap();
    if let emulators::Error::NotReady { log, .. } = &err {
        std::fs::remove_dir_all(log.parent().unwrap()).unwrap();
    }
    std::fs::remove_dir_all(sdk).unwrap();
}
