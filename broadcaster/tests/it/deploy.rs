//! The deployment files, checked without a Docker engine.
//!
//! - `docker-compose -f build/docker-compose.yml config` (Debian's docker-compose 1.29, installed by
//!   `build/test.sh`) validates the file; its normalised output is turned into JSON with the PyYAML that
//!   docker-compose itself runs on.
//! - Every service built from `build/Dockerfile` whose entrypoint is one of our binaries is run through that
//!   binary's `--check-config` with exactly the environment its container gets (the image stage's `ENV` lines,
//!   then the compose `environment`): every variable must be one the binary knows, every value valid.
//! - Host names in the services' addresses are services of the file, on the ports they listen on; every
//!   service has a healthcheck and a restart policy; every data directory is on a named volume.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::harness::bin;

const COMPOSE_FILE: &str = "build/docker-compose.yml";
const DOCKERFILE: &str = "build/Dockerfile";
/// Our binaries; an image whose entrypoint is one of them is checked with `--check-config`.
const OUR_BINARIES: &[&str] = &["broadcaster", "reader", "storage-node"];
/// The topology the compose file must describe (issue 5).
const REQUIRED_SERVICES: &[&str] = &[
    "broadcaster",
    "reader-disk-1",
    "reader-disk-2",
    "reader-dash",
    "reader-s3",
    "storage-1",
    "storage-2",
    "storage-3",
    "etcd-1",
    "etcd-2",
    "etcd-3",
    "s3",
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("broadcaster crate has a parent directory")
        .to_path_buf()
}

/// `docker-compose config` output as JSON. Runs with a minimal environment so that variables of the test
/// process (S3_BUCKET, DISTRIBUTARY_TAG, ...) do not change the interpolated file.
fn compose_config() -> Value {
    let root = workspace_root();
    let mut cmd = Command::new("docker-compose");
    cmd.current_dir(&root)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LANG", "C.UTF-8")
        .args(["-f", COMPOSE_FILE, "config"]);
    let out = match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!(
            "cannot run docker-compose ({e}): build/test.sh installs it \
             (apt-get install -y --no-install-recommends docker-compose); run build/test.sh"
        ),
    };
    assert!(
        out.status.success(),
        "docker-compose -f {COMPOSE_FILE} config failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (docker-compose runs on it) converts the YAML to JSON");
    {
        use std::io::Write;
        let mut stdin = py.stdin.take().expect("stdin");
        stdin.write_all(&out.stdout).expect("write YAML");
    }
    let json = py.wait_with_output().expect("python3");
    assert!(
        json.status.success(),
        "YAML → JSON failed: {}",
        String::from_utf8_lossy(&json.stderr)
    );
    serde_json::from_slice(&json.stdout).expect("JSON from docker-compose config")
}

/// One build stage of the Dockerfile: what it inherits, and what it sets.
#[derive(Debug, Default, Clone)]
struct Stage {
    parent: Option<String>,
    env: Vec<(String, String)>,
    volumes: Vec<String>,
    entrypoint: Option<Vec<String>>,
}

/// Reads the stages of `build/Dockerfile`: `FROM x AS name`, `ENV K=V`, `VOLUME`, `ENTRYPOINT [...]`.
fn dockerfile_stages() -> BTreeMap<String, Stage> {
    let text = std::fs::read_to_string(workspace_root().join(DOCKERFILE)).expect("read Dockerfile");
    // Join continuation lines, drop comments.
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let t = line.trim();
        if cur.is_empty() && (t.starts_with('#') || t.is_empty()) {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            cur.push_str(head);
            cur.push(' ');
        } else {
            cur.push_str(t);
            lines.push(std::mem::take(&mut cur));
        }
    }
    let mut stages: BTreeMap<String, Stage> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in lines {
        let (instr, rest) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let rest = rest.trim();
        match instr.to_ascii_uppercase().as_str() {
            "FROM" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let (base, name) = match words[..] {
                    [base, as_, name] if as_.eq_ignore_ascii_case("as") => (base, name),
                    [base] => (base, base),
                    _ => panic!("unexpected FROM line: {line}"),
                };
                let parent = stages.contains_key(base).then(|| base.to_owned());
                stages.insert(
                    name.to_owned(),
                    Stage {
                        parent,
                        ..Stage::default()
                    },
                );
                current = Some(name.to_owned());
            }
            "ENV" => {
                let stage = stages
                    .get_mut(current.as_deref().expect("ENV before FROM"))
                    .expect("stage");
                for pair in rest.split_whitespace() {
                    let (k, v) = pair
                        .split_once('=')
                        .unwrap_or_else(|| panic!("ENV lines must be K=V: {line}"));
                    stage
                        .env
                        .push((k.to_owned(), v.trim_matches('"').to_owned()));
                }
            }
            "VOLUME" => {
                let stage = stages
                    .get_mut(current.as_deref().expect("VOLUME before FROM"))
                    .expect("stage");
                stage.volumes.extend(
                    rest.trim_matches(['[', ']'])
                        .split([' ', ','])
                        .map(|v| v.trim().trim_matches('"'))
                        .filter(|v| !v.is_empty())
                        .map(str::to_owned),
                );
            }
            "ENTRYPOINT" => {
                let stage = stages
                    .get_mut(current.as_deref().expect("ENTRYPOINT before FROM"))
                    .expect("stage");
                let v: Vec<String> = serde_json::from_str(rest)
                    .unwrap_or_else(|e| panic!("ENTRYPOINT must be exec form ({e}): {line}"));
                stage.entrypoint = Some(v);
            }
            _ => {}
        }
    }
    stages
}

/// A stage with everything it inherits: ENV in order (later wins), all VOLUMEs, the last ENTRYPOINT.
fn resolve(stages: &BTreeMap<String, Stage>, name: &str) -> Stage {
    let mut chain = Vec::new();
    let mut cur = Some(name.to_owned());
    while let Some(n) = cur {
        let s = stages
            .get(&n)
            .unwrap_or_else(|| panic!("no stage {n} in {DOCKERFILE}"));
        chain.push(s.clone());
        cur = s.parent.clone();
    }
    let mut out = Stage::default();
    for s in chain.into_iter().rev() {
        out.env.extend(s.env);
        out.volumes.extend(s.volumes);
        if s.entrypoint.is_some() {
            out.entrypoint = s.entrypoint;
        }
    }
    out
}

fn services(config: &Value) -> &serde_json::Map<String, Value> {
    config["services"]
        .as_object()
        .expect("services in docker-compose config")
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Null => BTreeMap::new(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        other => panic!("environment is not a mapping: {other}"),
    }
}

/// The Dockerfile stage a service is built from, if it is built from ours.
fn built_stage(service: &Value) -> Option<String> {
    let build = service.get("build")?;
    assert_eq!(
        build["dockerfile"].as_str(),
        Some(DOCKERFILE),
        "every image we build comes from {DOCKERFILE}: {build}"
    );
    Some(
        build["target"]
            .as_str()
            .expect("build.target names the stage")
            .to_owned(),
    )
}

/// The container's environment as our binary would see it: image ENV, then the compose environment.
fn container_env(stage: &Stage, service: &Value) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = stage.env.iter().cloned().collect();
    env.extend(environment(service));
    env
}

/// Runs `bin --check-config` with exactly `env`; returns (exit code, stdout + stderr).
fn check_config(binary: &str, env: &BTreeMap<String, String>) -> (Option<i32>, String) {
    // Compose mounts secrets under /run/secrets; here each becomes a file with a secret of the right size.
    let secrets = tempfile::tempdir().expect("secrets dir");
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| match v.strip_prefix("/run/secrets/") {
            Some(name) => {
                let path = secrets.path().join(name);
                std::fs::write(&path, "s".repeat(48)).expect("write secret");
                (k.clone(), path.display().to_string())
            }
            None => (k.clone(), v.clone()),
        })
        .collect();
    let out = Command::new(bin(binary))
        .env_clear()
        .envs(&env)
        .arg("--check-config")
        .stdin(Stdio::null())
        .output()
        .expect("run --check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// Our services: (service name, binary, container environment).
fn our_services(config: &Value) -> Vec<(String, String, BTreeMap<String, String>)> {
    let stages = dockerfile_stages();
    let mut out = Vec::new();
    for (name, svc) in services(config) {
        let Some(stage_name) = built_stage(svc) else {
            continue;
        };
        let stage = resolve(&stages, &stage_name);
        let entry = stage.entrypoint.clone().unwrap_or_default();
        let program = entry
            .first()
            .and_then(|p| Path::new(p).file_name())
            .and_then(|p| p.to_str())
            .unwrap_or_default()
            .to_owned();
        if OUR_BINARIES.contains(&program.as_str()) {
            out.push((name.clone(), program, container_env(&stage, svc)));
        }
    }
    out
}

#[test]
fn compose_file_describes_the_whole_topology() {
    let config = compose_config();
    let names: BTreeSet<&str> = services(&config).keys().map(String::as_str).collect();
    for s in REQUIRED_SERVICES {
        assert!(names.contains(s), "service {s} missing from {COMPOSE_FILE}");
    }
    let ours: Vec<String> = our_services(&config).into_iter().map(|s| s.0).collect();
    for s in REQUIRED_SERVICES
        .iter()
        .filter(|s| !s.starts_with("etcd") && **s != "s3")
    {
        assert!(
            ours.iter().any(|o| o == s),
            "{s} must run one of our binaries from {DOCKERFILE}"
        );
    }
}

#[test]
fn every_service_environment_passes_check_config() {
    let config = compose_config();
    let ours = our_services(&config);
    assert_eq!(
        ours.len(),
        8,
        "broadcaster, 4 readers, 3 storage nodes: {ours:?}"
    );
    let mut failures = Vec::new();
    for (name, binary, env) in &ours {
        let (code, out) = check_config(binary, env);
        if code != Some(0) || !out.contains("config ok") {
            failures.push(format!("{name} ({binary}): exit {code:?}: {out}"));
        }
    }
    assert!(
        failures.is_empty(),
        "services whose environment their binary refuses:\n{}",
        failures.join("\n")
    );

    // The check is real: a misspelt variable in a service's environment is refused, naming it.
    let (name, binary, env) = &ours[0];
    let mut env = env.clone();
    let (var, _) = env
        .iter()
        .find(|(k, _)| k.ends_with("_HTTP_PORT"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap_or_else(|| panic!("{name} sets its port"));
    let typo = var.replace("_HTTP_PORT", "_HTTP_PROT");
    env.insert(typo.clone(), "1".into());
    let (code, out) = check_config(binary, &env);
    assert_eq!(code, Some(2), "{name} with {typo}: {out}");
    assert!(
        out.contains(&typo) && out.contains(&format!("did you mean {var}?")),
        "{out}"
    );
}

/// `host:port` pairs in an address list such as `a:1;b:2`, `etcd:http://a:1,http://b:2` or `http://a:1`.
fn addresses(value: &str) -> Vec<(String, u16)> {
    let value = value.strip_prefix("etcd:").unwrap_or(value);
    value
        .split([';', ','])
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.eq_ignore_ascii_case("ring"))
        .map(|s| {
            let s = s
                .strip_prefix("http://")
                .or_else(|| s.strip_prefix("https://"))
                .unwrap_or(s);
            let s = s.split('/').next().unwrap_or(s);
            let (host, port) = s
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("{s} has no port"));
            (
                host.to_owned(),
                port.parse()
                    .unwrap_or_else(|e| panic!("bad port in {s}: {e}")),
            )
        })
        .collect()
}

/// The port a service listens on inside its container, as its own configuration says.
fn listen_port(svc: &Value, env: &BTreeMap<String, String>) -> Option<u16> {
    let from_env = |k: &str| env.get(k).and_then(|v| v.parse().ok());
    from_env("BROADCASTER_HTTP_PORT")
        .or_else(|| from_env("READER_HTTP_PORT"))
        .or_else(|| from_env("STORAGE_NODE_HTTP_PORT"))
        .or_else(|| from_env("S3_PORT"))
        .or_else(|| {
            env.get("ETCD_LISTEN_CLIENT_URLS")
                .and_then(|v| addresses(v).first().map(|a| a.1))
        })
        .or_else(|| {
            svc["expose"]
                .as_array()
                .and_then(|a| a.first())
                .and_then(|p| p.as_str()?.parse().ok())
        })
}

#[test]
fn addresses_name_services_on_their_ports() {
    let config = compose_config();
    let stages = dockerfile_stages();
    let svcs = services(&config);
    let env_of = |svc: &Value| match built_stage(svc) {
        Some(stage) => container_env(&resolve(&stages, &stage), svc),
        None => environment(svc),
    };
    let mut checked = 0;
    for (name, svc) in svcs {
        let env = env_of(svc);
        for (var, value) in &env {
            let refers = matches!(
                var.as_str(),
                "BROADCASTER_HOST_LIST"
                    | "BROADCASTER_STORAGE_NODES"
                    | "BROADCASTER_METADATA"
                    | "READER_METADATA"
                    | "READER_S3_ENDPOINT"
            );
            if !refers || value.starts_with("sqlite:") {
                continue;
            }
            for (host, port) in addresses(value) {
                let target = svcs
                    .get(&host)
                    .unwrap_or_else(|| panic!("{name}: {var} names {host}, which is no service"));
                assert_eq!(
                    listen_port(target, &env_of(target)),
                    Some(port),
                    "{name}: {var} reaches {host} on port {port}, where it does not listen"
                );
                checked += 1;
            }
        }
        // The healthcheck probes the port the service listens on.
        if let (Some(port), Some(test)) = (
            listen_port(svc, &env),
            svc["healthcheck"]["test"].as_array(),
        ) {
            let probe: String = test
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ");
            assert!(
                probe.contains(&format!(":{port}")),
                "{name}: healthcheck `{probe}` does not probe port {port}"
            );
        }
    }
    assert!(checked >= 10, "only {checked} addresses checked");
}

#[test]
fn every_service_has_a_healthcheck_restart_policy_and_named_volumes() {
    let config = compose_config();
    let stages = dockerfile_stages();
    let named: BTreeSet<String> = config["volumes"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let mut used_volumes = BTreeSet::new();
    for (name, svc) in services(&config) {
        let hc = &svc["healthcheck"];
        let test = hc["test"].as_array().cloned().unwrap_or_default();
        assert!(
            !test.is_empty()
                && test[0].as_str() != Some("NONE")
                && hc["disable"].as_bool() != Some(true),
            "{name} has no healthcheck: {hc}"
        );
        assert!(
            matches!(
                svc["restart"].as_str(),
                Some("unless-stopped" | "always" | "on-failure")
            ),
            "{name} has no restart policy"
        );

        // Mounts: (named volume or None for a bind mount, target path).
        let mounts: Vec<(Option<String>, String)> = svc["volumes"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|v| match v {
                Value::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    let (src, target) = match parts[..] {
                        [target] => ("", target),
                        [src, target, ..] => (src, target),
                        _ => panic!("{name}: odd volume {s}"),
                    };
                    let named = (!src.is_empty() && !src.starts_with(['/', '.', '~']))
                        .then(|| src.to_owned());
                    (named, target.to_owned())
                }
                Value::Object(m) => (
                    (m.get("type").and_then(Value::as_str) == Some("volume"))
                        .then(|| m.get("source").and_then(Value::as_str).map(str::to_owned))
                        .flatten(),
                    m["target"].as_str().expect("volume target").to_owned(),
                ),
                other => panic!("{name}: odd volume {other}"),
            })
            .collect();
        for (vol, _) in &mounts {
            if let Some(v) = vol {
                assert!(
                    named.contains(v),
                    "{name} mounts {v}, not a declared volume"
                );
                used_volumes.insert(v.clone());
            }
        }

        // Data directories: the image's VOLUMEs, and every directory the configuration writes to.
        let (mut dirs, env) = match built_stage(svc) {
            Some(stage) => {
                let stage = resolve(&stages, &stage);
                (stage.volumes.clone(), container_env(&stage, svc))
            }
            None => (Vec::new(), environment(svc)),
        };
        for (k, v) in &env {
            if k.ends_with("_DATA_DIR") {
                dirs.push(v.clone());
            }
            if let Some(path) = v
                .strip_prefix("sqlite:")
                .filter(|_| k.ends_with("_METADATA"))
            {
                let parent = Path::new(path)
                    .parent()
                    .expect("sqlite path has a directory");
                dirs.push(parent.to_string_lossy().into_owned());
            }
        }
        for dir in dirs {
            assert!(
                dir.starts_with('/'),
                "{name}: data directory {dir} must be absolute in a container"
            );
            let covered = mounts.iter().any(|(vol, target)| {
                vol.is_some() && Path::new(&dir).starts_with(Path::new(target))
            });
            assert!(
                covered,
                "{name}: data directory {dir} is not on a named volume"
            );
        }
    }
    let unused: Vec<&String> = named.difference(&used_volumes).collect();
    assert!(unused.is_empty(), "declared but unused volumes: {unused:?}");
}

#[test]
fn dockerfile_stages_run_as_a_user_with_healthchecks() {
    let text = std::fs::read_to_string(workspace_root().join(DOCKERFILE)).expect("read Dockerfile");
    let stages = dockerfile_stages();
    for target in ["broadcaster", "reader", "reader-dash", "storage-node", "s3"] {
        assert!(stages.contains_key(target), "stage {target} missing");
    }
    assert!(
        text.contains("USER distributary"),
        "images run as a non-root user"
    );
    assert!(text.contains("HEALTHCHECK"), "images carry healthchecks");
    let broadcaster = resolve(&stages, "broadcaster");
    let web = broadcaster
        .env
        .iter()
        .find(|(k, _)| k == "BROADCASTER_WEB_DIR")
        .map(|(_, v)| v.clone())
        .expect("the broadcaster image sets BROADCASTER_WEB_DIR");
    assert!(
        text.contains(&format!("/player {web}")),
        "the web player is copied into BROADCASTER_WEB_DIR ({web})"
    );
}

/// The image and the release tarball carry every script the pages load from the web root (the player and
/// the resumable uploader), at the paths the broadcaster serves them from: a page whose script 404s in a
/// container would fall back silently to plain uploads.
#[test]
fn images_and_releases_ship_the_pages_scripts() {
    let docker =
        std::fs::read_to_string(workspace_root().join(DOCKERFILE)).expect("read Dockerfile");
    let release =
        std::fs::read_to_string(workspace_root().join("dist/release.sh")).expect("read release.sh");
    for script in ["dist/modern/umd/dash.all.min.js", "dist/tus.min.js"] {
        assert!(
            docker.contains(script),
            "build/Dockerfile does not copy {script}"
        );
        assert!(
            release.contains(script),
            "dist/release.sh does not ship {script}"
        );
    }
    for served in [
        broadcaster::web::assets::DASH_JS_FILE,
        broadcaster::web::assets::TUS_JS_FILE,
    ] {
        let file = served.rsplit('/').next().expect("a file name");
        assert!(
            docker.contains(file),
            "build/Dockerfile does not copy {served}"
        );
    }
}
