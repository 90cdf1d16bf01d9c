//! The files in `deploy/` checked offline (no container engine or cluster runs here): the Kubernetes YAML is
//! parsed and its cross-references followed (volumes, ports, probes, Secret keys, the headgate.toml in the
//! ConfigMap parsed by headgate itself with the mounted secrets), the Dockerfile's binary path, user, volume
//! and HEALTHCHECK agree with each other and with the manifests, the systemd unit is hardened and runs
//! `headgate serve`, and the demo's generated configuration is one headgate accepts.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use headgate::config::{Config, HeadplaneLogin};
use serde::Deserialize;
use serde_norway::Value;

use crate::harness;

const HEADGATE_BIN: &str = "/usr/local/bin/headgate";
const HEALTHZ: &str = "/_headgate/healthz";
const READYZ: &str = "/_headgate/readyz";

fn deploy() -> PathBuf {
    harness::root().join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ---------------------------------------------------------------------------------------------------------
// YAML helpers
// ---------------------------------------------------------------------------------------------------------

/// One Kubernetes object and the file it came from.
#[derive(Clone, Debug)]
struct Obj {
    file: String,
    v: Value,
}

impl Obj {
    fn kind(&self) -> &str {
        self.v["kind"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.v["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn what(&self) -> String {
        format!("{} {} ({})", self.kind(), self.name(), self.file)
    }
}

/// Every document of a (multi-document) YAML file; empty documents are skipped.
fn yaml_docs(path: &Path) -> Vec<Value> {
    let text = read(path);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The objects of every `.yaml` file directly in `dir`.
fn objects_in(dir: &Path) -> Vec<Obj> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let file = f
            .strip_prefix(harness::root())
            .unwrap()
            .display()
            .to_string();
        for v in yaml_docs(&f) {
            let obj = Obj {
                file: file.clone(),
                v,
            };
            assert!(
                obj.v["apiVersion"].as_str().is_some() && !obj.kind().is_empty(),
                "{}: a document without apiVersion or kind",
                obj.file
            );
            out.push(obj);
        }
    }
    out
}

fn sidecar_objects() -> Vec<Obj> {
    objects_in(&deploy().join("kubernetes"))
        .into_iter()
        .filter(|o| o.kind() != "Kustomization")
        .collect()
}

fn find<'a>(objs: &'a [Obj], kind: &str, name: &str) -> &'a Obj {
    objs.iter()
        .find(|o| o.kind() == kind && o.name() == name)
        .unwrap_or_else(|| {
            panic!(
                "no {kind} named {name:?}; the files define: {:?}",
                objs.iter().map(Obj::what).collect::<Vec<_>>()
            )
        })
}

fn only<'a>(objs: &'a [Obj], kind: &str) -> &'a Obj {
    let all: Vec<&Obj> = objs.iter().filter(|o| o.kind() == kind).collect();
    assert_eq!(
        all.len(),
        1,
        "expected exactly one {kind}, found {}",
        all.len()
    );
    all[0]
}

fn seq(v: &Value) -> Vec<Value> {
    v.as_sequence().cloned().unwrap_or_default()
}

fn string(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        _ => String::new(),
    }
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| m.iter().map(|(k, v)| (string(k), string(v))).collect())
        .unwrap_or_default()
}

/// The keys (and values) a Secret defines, from `stringData` and `data`.
fn secret_values(secret: &Obj) -> BTreeMap<String, String> {
    let mut out = labels(&secret.v["stringData"]);
    if let Some(m) = secret.v["data"].as_mapping() {
        use base64::Engine;
        for (k, v) in m {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(string(v))
                .unwrap_or_else(|e| {
                    panic!("{}: data.{} is not base64: {e}", secret.what(), string(k))
                });
            out.insert(string(k), String::from_utf8_lossy(&raw).into_owned());
        }
    }
    out
}

/// The pod template's containers of a Deployment, by name.
fn containers(deployment: &Obj) -> BTreeMap<String, Value> {
    seq(&deployment.v["spec"]["template"]["spec"]["containers"])
        .into_iter()
        .map(|c| (string(&c["name"]), c))
        .collect()
}

fn container(deployment: &Obj, name: &str) -> Value {
    containers(deployment)
        .remove(name)
        .unwrap_or_else(|| panic!("{} has no container {name:?}", deployment.what()))
}

fn volumes(deployment: &Obj) -> BTreeMap<String, Value> {
    seq(&deployment.v["spec"]["template"]["spec"]["volumes"])
        .into_iter()
        .map(|v| (string(&v["name"]), v))
        .collect()
}

fn env_of(c: &Value, name: &str) -> Option<String> {
    seq(&c["env"])
        .into_iter()
        .find(|e| e["name"].as_str() == Some(name))
        .map(|e| string(&e["value"]))
}

/// Where a container mounts a volume.
fn mount_path(c: &Value, volume: &str) -> String {
    seq(&c["volumeMounts"])
        .into_iter()
        .find(|m| m["name"].as_str() == Some(volume))
        .map(|m| string(&m["mountPath"]))
        .unwrap_or_else(|| panic!("container {} does not mount {volume:?}", string(&c["name"])))
}

/// The volume a container mounts at the longest prefix of `path`, and the rest of the path below it.
fn volume_at(c: &Value, path: &str) -> Option<(String, String)> {
    seq(&c["volumeMounts"])
        .into_iter()
        .filter_map(|m| {
            let mp = string(&m["mountPath"]);
            let rest = path.strip_prefix(&format!("{}/", mp.trim_end_matches('/')))?;
            Some((mp.len(), string(&m["name"]), rest.to_string()))
        })
        .max_by_key(|(len, _, _)| *len)
        .map(|(_, name, rest)| (name, rest))
}

/// The key of a ConfigMap or Secret volume that appears at `file` inside the mount (with `items`, only the
/// listed keys appear, at their `path`; without, every key appears under its own name).
fn key_at(volume: &Value, source: &str, file: &str, all_keys: &BTreeSet<String>) -> Option<String> {
    let items = seq(&volume[source]["items"]);
    if items.is_empty() {
        return all_keys.contains(file).then(|| file.to_string());
    }
    items
        .into_iter()
        .find(|i| string(&i["path"]) == file)
        .map(|i| string(&i["key"]))
}

/// A container port by name or number (as a probe or a Service's targetPort names it).
fn resolve_port(c: &Value, port: &Value) -> Option<u64> {
    let ports = seq(&c["ports"]);
    match port {
        Value::Number(n) => ports
            .iter()
            .filter_map(|p| p["containerPort"].as_u64())
            .find(|p| Some(*p) == n.as_u64()),
        Value::String(name) => ports
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_u64()),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------------------
// The headgate.toml in the ConfigMap, parsed by headgate with the Secret's files laid out as mounted
// ---------------------------------------------------------------------------------------------------------

struct SidecarConfig {
    config: Config,
    toml: toml::Table,
    /// The files it was parsed with stay here until the test ends.
    _dir: tempfile::TempDir,
}

fn sidecar_headgate_config(objs: &[Obj]) -> SidecarConfig {
    let deployment = only(objs, "Deployment");
    let hg = container(deployment, "headgate");
    let vols = volumes(deployment);

    // Which ConfigMap key is the file HEADGATE_CONFIG names?
    let config_path = env_of(&hg, "HEADGATE_CONFIG")
        .expect("the headgate container sets HEADGATE_CONFIG to the mounted headgate.toml");
    let (vol_name, file) = volume_at(&hg, &config_path)
        .unwrap_or_else(|| panic!("HEADGATE_CONFIG={config_path} is not inside any volume mount"));
    let vol = &vols[&vol_name];
    let cm = find(objs, "ConfigMap", &string(&vol["configMap"]["name"]));
    let cm_data = labels(&cm.v["data"]);
    let key =
        key_at(vol, "configMap", &file, &cm_data.keys().cloned().collect()).unwrap_or_else(|| {
            panic!("{config_path}: the {vol_name} volume puts no ConfigMap key at {file}")
        });
    let text = cm_data
        .get(&key)
        .unwrap_or_else(|| panic!("{} has no key {key}", cm.what()))
        .clone();
    let table: toml::Table = text.parse().expect("the ConfigMap's headgate.toml is TOML");

    // Every `*_path` secret: a file of a mounted Secret volume whose key exists in that Secret.
    let dir = harness::tempdir();
    let mut text_for_parse = text.clone();
    let mut seen = 0;
    for (section, keys) in &table {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for (k, v) in keys {
            if !k.ends_with("_path") || k == "data_path" {
                continue;
            }
            let p = v
                .as_str()
                .unwrap_or_else(|| panic!("{section}.{k} is not a string"));
            let (vname, file) = volume_at(&hg, p).unwrap_or_else(|| {
                panic!(
                    "{section}.{k} = {p:?} is not inside any volume the headgate container mounts"
                )
            });
            let vol = &vols[&vname];
            let secret_name = string(&vol["secret"]["secretName"]);
            assert!(
                !secret_name.is_empty(),
                "{section}.{k} = {p:?} lies in volume {vname}, which is not a Secret"
            );
            let secret = find(objs, "Secret", &secret_name);
            let values = secret_values(secret);
            let key = key_at(vol, "secret", &file, &values.keys().cloned().collect())
                .unwrap_or_else(|| {
                    panic!("{section}.{k} = {p:?}: volume {vname} puts no key at {file}")
                });
            let value = values
                .get(&key)
                .unwrap_or_else(|| panic!("{section}.{k}: {} has no key {key:?}", secret.what()));
            let local = dir.path().join(&vname).join(&file);
            std::fs::create_dir_all(local.parent().unwrap()).unwrap();
            std::fs::write(&local, value).unwrap();
            text_for_parse =
                text_for_parse.replace(&format!("\"{p}\""), &format!("\"{}\"", local.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 3,
        "expected the cookie secret, client secret and API key as *_path files, found {seen}"
    );

    let config = Config::parse(
        "deploy/kubernetes headgate.toml",
        &text_for_parse,
        &HashMap::new(),
    )
    .unwrap_or_else(|e| panic!("the ConfigMap's headgate.toml is refused by headgate:\n{e}"));
    SidecarConfig {
        config,
        toml: table,
        _dir: dir,
    }
}

/// One `FROM` stage: its `AS` name and its instructions as (INSTRUCTION, arguments), continuations joined.
type Stage = (Option<String>, Vec<(String, String)>);

/// The stages of deploy/Dockerfile; the last one is the runtime image.
struct Dockerfile {
    stages: Vec<Stage>,
}

impl Dockerfile {
    fn read() -> Dockerfile {
        let text = read(&deploy().join("Dockerfile"));
        let mut logical = Vec::new();
        let mut cur = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('#') && cur.is_empty() || t.is_empty() && cur.is_empty() {
                continue;
            }
            if let Some(head) = t.strip_suffix('\\') {
                cur.push_str(head);
                cur.push(' ');
            } else {
                cur.push_str(t);
                logical.push(std::mem::take(&mut cur));
            }
        }
        let mut stages: Vec<Stage> = Vec::new();
        for l in logical {
            let (ins, args) = l.split_once(char::is_whitespace).unwrap_or((&l, ""));
            let ins = ins.to_ascii_uppercase();
            let args = args.trim().to_string();
            if ins == "FROM" {
                let name = args
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .windows(2)
                    .find(|w| w[0].eq_ignore_ascii_case("as"))
                    .map(|w| w[1].to_string());
                stages.push((name, vec![(ins, args)]));
            } else if let Some(s) = stages.last_mut() {
                s.1.push((ins, args));
            }
        }
        assert!(stages.len() >= 2, "deploy/Dockerfile must be multi-stage");
        Dockerfile { stages }
    }

    fn last(&self) -> &[(String, String)] {
        &self.stages.last().unwrap().1
    }

    fn one(&self, ins: &str) -> String {
        let all: Vec<&String> = self
            .last()
            .iter()
            .filter(|(i, _)| i == ins)
            .map(|(_, a)| a)
            .collect();
        assert_eq!(
            all.len(),
            1,
            "the runtime stage needs exactly one {ins}, has {}",
            all.len()
        );
        all[0].clone()
    }

    /// The JSON (exec) form of an instruction's arguments.
    fn exec_form(&self, ins: &str) -> Vec<String> {
        let a = self.one(ins);
        serde_json::from_str(&a)
            .unwrap_or_else(|e| panic!("{ins} must use the exec (JSON) form, got {a:?}: {e}"))
    }

    fn uid(&self) -> u64 {
        let user = self.one("USER");
        let uid = user.split(':').next().unwrap();
        uid.parse().unwrap_or_else(|_| {
            panic!("USER must be numeric (Kubernetes runAsNonRoot checks it), got {user:?}")
        })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Kubernetes: the sidecar layout
// ---------------------------------------------------------------------------------------------------------

#[test]
fn deploy_kustomization_lists_every_sidecar_file() {
    let dir = deploy().join("kubernetes");
    let k = yaml_docs(&dir.join("kustomization.yaml"));
    assert_eq!(k.len(), 1);
    let listed: BTreeSet<String> = seq(&k[0]["resources"]).iter().map(string).collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(
        listed, present,
        "kustomization.yaml resources vs the YAML files beside it"
    );
    for o in sidecar_objects() {
        assert!(
            !o.name().is_empty(),
            "{}: an object without metadata.name",
            o.file
        );
        assert!(
            o.v["metadata"]["namespace"].is_null(),
            "{}: set the namespace in kustomization.yaml, not in the object",
            o.what()
        );
    }
}

#[test]
fn deploy_kubernetes_volumes_mounts_and_references_exist() {
    let objs = sidecar_objects();
    let deployment = only(&objs, "Deployment");
    let vols = volumes(deployment);
    let mut used = BTreeSet::new();
    for (cname, c) in containers(deployment) {
        // No mount inside another (a ConfigMap or Secret volume is read-only: the mount point cannot be made).
        let paths: Vec<String> = seq(&c["volumeMounts"])
            .iter()
            .map(|m| string(&m["mountPath"]))
            .collect();
        for a in &paths {
            for b in &paths {
                assert!(
                    !b.starts_with(&format!("{}/", a.trim_end_matches('/'))),
                    "container {cname} mounts {b} inside its mount {a}"
                );
            }
        }
        for m in seq(&c["volumeMounts"]) {
            let name = string(&m["name"]);
            assert!(
                vols.contains_key(&name),
                "container {cname} mounts volume {name:?}, which the pod does not define ({:?})",
                vols.keys().collect::<Vec<_>>()
            );
            used.insert(name);
        }
    }
    for (name, v) in &vols {
        assert!(
            used.contains(name),
            "volume {name} is defined but no container mounts it"
        );
        if let Some(cm) = v["configMap"]["name"].as_str() {
            let data = labels(&find(&objs, "ConfigMap", cm).v["data"]);
            for i in seq(&v["configMap"]["items"]) {
                assert!(
                    data.contains_key(&string(&i["key"])),
                    "volume {name}: ConfigMap {cm} has no key {}",
                    string(&i["key"])
                );
            }
        } else if let Some(s) = v["secret"]["secretName"].as_str() {
            let values = secret_values(find(&objs, "Secret", s));
            for i in seq(&v["secret"]["items"]) {
                assert!(
                    values.contains_key(&string(&i["key"])),
                    "volume {name}: Secret {s} has no key {}",
                    string(&i["key"])
                );
            }
        } else if let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() {
            find(&objs, "PersistentVolumeClaim", claim);
        } else {
            assert!(
                v["emptyDir"].is_mapping(),
                "volume {name}: expected a configMap, secret, persistentVolumeClaim or emptyDir"
            );
        }
    }
    // The store is on the claim, not on an emptyDir (an empty store re-opens owner bootstrap).
    let hg = container(deployment, "headgate");
    let data_path = sidecar_headgate_config(&objs).config.server.data_path;
    let data_path = data_path.display().to_string();
    let (vname, _) =
        volume_at(&hg, &data_path).expect("server.data_path lies inside a mounted volume");
    assert!(
        vols[&vname]["persistentVolumeClaim"].is_mapping(),
        "server.data_path {data_path} is on volume {vname}, which is not the PersistentVolumeClaim"
    );
}

#[test]
fn deploy_kubernetes_ports_probes_service_and_network_policy_agree() {
    let objs = sidecar_objects();
    let deployment = only(&objs, "Deployment");
    let pod_labels = labels(&deployment.v["spec"]["template"]["metadata"]["labels"]);
    let selector = labels(&deployment.v["spec"]["selector"]["matchLabels"]);
    assert!(!selector.is_empty());
    for (k, v) in &selector {
        assert_eq!(
            pod_labels.get(k),
            Some(v),
            "the Deployment's selector does not match its pod labels"
        );
    }
    let hg = container(deployment, "headgate");
    let cfg = sidecar_headgate_config(&objs).config;
    let listen = u64::from(cfg.server.listen.port());
    let hg_ports: Vec<u64> = seq(&hg["ports"])
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert_eq!(
        hg_ports,
        vec![listen],
        "headgate's container port vs server.listen in the ConfigMap"
    );

    // Headplane exposes nothing: headgate is the only way in.
    let hp = container(deployment, "headplane");
    assert!(
        seq(&hp["ports"]).is_empty(),
        "the headplane container must not declare ports"
    );

    // Probes: headgate's own endpoints on headgate's port.
    for (probe, path) in [("livenessProbe", HEALTHZ), ("readinessProbe", READYZ)] {
        let get = &hg[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(
            resolve_port(&hg, &get["port"]),
            Some(listen),
            "{probe} port"
        );
        assert!(
            hp[probe].is_null(),
            "Headplane listens on loopback: a kubelet {probe} cannot reach it"
        );
    }

    // The Service selects the pod and targets headgate's port.
    let svc = only(&objs, "Service");
    for (k, v) in labels(&svc.v["spec"]["selector"]) {
        assert_eq!(
            pod_labels.get(&k),
            Some(&v),
            "the Service's selector does not match the pod"
        );
    }
    let svc_ports = seq(&svc.v["spec"]["ports"]);
    assert!(!svc_ports.is_empty());
    for p in &svc_ports {
        assert_eq!(
            resolve_port(&hg, &p["targetPort"]),
            Some(listen),
            "Service port {} targets {:?}, not headgate's port",
            string(&p["name"]),
            p["targetPort"]
        );
    }

    // The Ingress sends traffic to that Service, on a port it has.
    let ing = only(&objs, "Ingress");
    for rule in seq(&ing.v["spec"]["rules"]) {
        for path in seq(&rule["http"]["paths"]) {
            let b = &path["backend"]["service"];
            assert_eq!(
                b["name"].as_str(),
                Some(svc.name()),
                "Ingress backend service"
            );
            let port = &b["port"];
            assert!(
                svc_ports
                    .iter()
                    .any(|p| (port["name"].is_string() && p["name"] == port["name"])
                        || (port["number"].is_number() && p["port"] == port["number"])),
                "the Ingress names port {port:?}, which Service {} does not have",
                svc.name()
            );
        }
    }

    // Only headgate's port is open into the pod.
    let np = only(&objs, "NetworkPolicy");
    for (k, v) in labels(&np.v["spec"]["podSelector"]["matchLabels"]) {
        assert_eq!(
            pod_labels.get(&k),
            Some(&v),
            "the NetworkPolicy does not select the pod"
        );
    }
    assert!(
        seq(&np.v["spec"]["policyTypes"])
            .iter()
            .any(|t| t.as_str() == Some("Ingress"))
    );
    let rules = seq(&np.v["spec"]["ingress"]);
    assert!(
        !rules.is_empty(),
        "a NetworkPolicy with no ingress rule blocks headgate too"
    );
    for r in rules {
        let ports = seq(&r["ports"]);
        assert!(
            !ports.is_empty(),
            "an ingress rule without ports opens every port, Headplane's too"
        );
        for p in ports {
            assert_eq!(
                resolve_port(&hg, &p["port"]),
                Some(listen),
                "NetworkPolicy opens {:?}",
                p["port"]
            );
        }
    }
}

#[test]
fn deploy_kubernetes_configmap_headgate_toml_parses_with_the_mounted_secrets() {
    let objs = sidecar_objects();
    let sc = sidecar_headgate_config(&objs);
    let known: BTreeSet<String> = Config::known_keys().into_iter().collect();
    for (section, keys) in &sc.toml {
        for key in keys.as_table().expect("sections only").keys() {
            assert!(
                known.contains(&format!("{section}.{key}")),
                "unknown key {section}.{key}"
            );
        }
    }
    let c = &sc.config;
    assert_eq!(c.upstream.headplane_login, HeadplaneLogin::ApiKey);
    assert!(
        c.server.cookie_secure,
        "production config over https keeps cookie_secure"
    );
    assert_eq!(c.server.base_url.scheme(), "https");
    assert!(c.headscale.is_some() && c.oidc.is_some());

    // Headplane: on loopback, at the port headgate's upstream.url names, with its cookie secret mounted.
    let deployment = only(&objs, "Deployment");
    let hp = container(deployment, "headplane");
    let vols = volumes(deployment);
    let hp_config_path = env_of(&hp, "HEADPLANE_CONFIG_PATH").expect("HEADPLANE_CONFIG_PATH");
    let (vname, file) = volume_at(&hp, &hp_config_path).expect("Headplane's config is mounted");
    let cm = find(
        &objs,
        "ConfigMap",
        &string(&vols[&vname]["configMap"]["name"]),
    );
    let data = labels(&cm.v["data"]);
    let key = key_at(
        &vols[&vname],
        "configMap",
        &file,
        &data.keys().cloned().collect(),
    )
    .expect("a ConfigMap key at Headplane's config path");
    let hp_cfg: Value = serde_norway::from_str(&data[&key]).expect("headplane.yaml is YAML");
    assert_eq!(
        hp_cfg["server"]["host"].as_str(),
        Some("127.0.0.1"),
        "Headplane must listen on loopback only"
    );
    let upstream = c.upstream.url.as_ref().expect("upstream.url");
    assert_eq!(upstream.host_str(), Some("127.0.0.1"));
    assert_eq!(
        hp_cfg["server"]["port"].as_u64(),
        upstream.port().map(u64::from),
        "upstream.url's port vs Headplane's server.port"
    );
    let secret_path = hp_cfg["server"]["cookie_secret_path"]
        .as_str()
        .expect("Headplane reads its cookie secret from a file");
    let (svol, sfile) = volume_at(&hp, secret_path).expect("Headplane's cookie secret is mounted");
    let secret = find(
        &objs,
        "Secret",
        &string(&vols[&svol]["secret"]["secretName"]),
    );
    let values = secret_values(secret);
    let skey = key_at(
        &vols[&svol],
        "secret",
        &sfile,
        &values.keys().cloned().collect(),
    )
    .expect("a Secret key at Headplane's cookie_secret_path");
    assert_eq!(
        values[&skey].chars().count(),
        32,
        "Headplane's cookie secret must be exactly 32 characters"
    );
    assert!(
        hp_cfg["headscale"]["url"].as_str()
            == c.headscale
                .as_ref()
                .map(|h| h.url.as_str().trim_end_matches('/')),
        "Headplane and headgate must talk to the same Headscale"
    );
}

#[test]
fn deploy_kubernetes_security_context_matches_the_image() {
    let objs = sidecar_objects();
    let deployment = only(&objs, "Deployment");
    let hg = container(deployment, "headgate");
    let docker = Dockerfile::read();
    let sc = &hg["securityContext"];
    assert_eq!(
        sc["runAsUser"].as_u64(),
        Some(docker.uid()),
        "runAsUser vs the Dockerfile's USER"
    );
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert!(
        seq(&sc["capabilities"]["drop"])
            .iter()
            .any(|c| c.as_str() == Some("ALL"))
    );
    // The image's ENTRYPOINT is the binary; the manifest only picks the subcommand.
    assert!(hg["command"].is_null(), "keep the image's ENTRYPOINT");
    assert_eq!(
        seq(&hg["args"]).iter().map(string).collect::<Vec<_>>(),
        vec!["serve"]
    );

    // fsGroup makes the volume's root group-writable; without OnRootMismatch the kubelet would also widen the
    // store directory at every mount and headgate would refuse to start (S17).
    let pod_sc = &deployment.v["spec"]["template"]["spec"]["securityContext"];
    if !pod_sc["fsGroup"].is_null() {
        assert_eq!(
            pod_sc["fsGroupChangePolicy"].as_str(),
            Some("OnRootMismatch")
        );
        let cfg = sidecar_headgate_config(&objs).config;
        let data_path = cfg.server.data_path.display().to_string();
        let (store_volume, _) =
            volume_at(&hg, &data_path).expect("server.data_path lies inside a mounted volume");
        let store_mount = mount_path(&hg, &store_volume);
        assert!(
            cfg.server.data_path.starts_with(&store_mount)
                && cfg.server.data_path != Path::new(&store_mount),
            "with fsGroup, server.data_path ({}) must be a directory inside the volume ({store_mount}), not its root",
            cfg.server.data_path.display()
        );
    }
    // One writer for the store file.
    assert_eq!(deployment.v["spec"]["replicas"].as_u64(), Some(1));
    assert_eq!(
        deployment.v["spec"]["strategy"]["type"].as_str(),
        Some("Recreate")
    );
}

// ---------------------------------------------------------------------------------------------------------
// Kubernetes: the forward-auth examples
// ---------------------------------------------------------------------------------------------------------

/// The identity header names headgate sets by default (the four renamable ones and the fixed ones).
fn identity_headers() -> BTreeSet<String> {
    let c = Config::parse(
        "minimal",
        "[server]\nbase_url = \"https://hp.example.com\"\ncookie_secret = \"0123456789abcdef0123456789abcdef\"\n",
        &HashMap::new(),
    )
    .unwrap();
    let mut names: BTreeSet<String> = [
        c.headers.user_header,
        c.headers.email_header,
        c.headers.name_header,
        c.headers.picture_header,
    ]
    .into_iter()
    .collect();
    for fixed in [
        "x-headgate-role",
        "x-headgate-headscale-user",
        "x-headgate-headscale-user-id",
        "x-headgate-auth",
        "x-headgate-assertion",
    ] {
        names.insert(fixed.into());
    }
    names.into_iter().map(|n| n.to_ascii_lowercase()).collect()
}

/// A verdict URL must reach the `headgate` Service of the forward-auth layout, at a port it has, at `path`.
fn assert_verdict_url(objs: &[Obj], raw: &str, path: &str) {
    let u = url::Url::parse(raw).unwrap_or_else(|e| panic!("{raw:?} is not a URL: {e}"));
    assert_eq!(u.path(), path, "verdict endpoint in {raw}");
    let svc = find(objs, "Service", "headgate");
    let host = u.host_str().unwrap();
    assert!(
        host == "headgate" || host.starts_with("headgate."),
        "{raw} must name the headgate Service"
    );
    let port = u.port_or_known_default().map(u64::from);
    assert!(
        seq(&svc.v["spec"]["ports"])
            .iter()
            .any(|p| p["port"].as_u64() == port),
        "{raw}: Service headgate has no port {port:?}"
    );
}

/// The paths headgate serves itself in the forward-auth layout (sign-in, callback, logout, its pages).
const HEADGATE_PATHS: &[&str] = &[
    "/admin/login",
    "/admin/login.data",
    "/admin/logout",
    "/admin/logout.data",
    "/admin/oidc/start",
    "/admin/oidc/callback",
    "/_headgate/users",
];

#[test]
fn deploy_forward_auth_ingress_nginx_uses_the_nginx_verdict_endpoint() {
    let objs = objects_in(&deploy().join("kubernetes/forward-auth"));
    let ingresses: Vec<&Obj> = objs.iter().filter(|o| o.kind() == "Ingress").collect();
    let protected: Vec<&&Obj> = ingresses
        .iter()
        .filter(|o| {
            !o.v["metadata"]["annotations"]["nginx.ingress.kubernetes.io/auth-url"].is_null()
        })
        .collect();
    assert_eq!(protected.len(), 1, "one Ingress protected by auth-url");
    let ann = &protected[0].v["metadata"]["annotations"];
    assert_verdict_url(
        &objs,
        ann["nginx.ingress.kubernetes.io/auth-url"]
            .as_str()
            .unwrap(),
        "/_headgate/auth/nginx",
    );
    let signin = ann["nginx.ingress.kubernetes.io/auth-signin"]
        .as_str()
        .expect("auth-signin");
    assert!(
        signin.ends_with("/admin/login"),
        "auth-signin must be headgate's sign-in page, got {signin}"
    );
    let passed: BTreeSet<String> = ann["nginx.ingress.kubernetes.io/auth-response-headers"]
        .as_str()
        .expect("auth-response-headers")
        .split(',')
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    assert_eq!(
        passed,
        identity_headers(),
        "auth-response-headers vs headgate's identity headers"
    );

    // headgate's own paths go to headgate without auth; every exact/prefix match is computed as nginx would.
    let pages: Vec<&&Obj> = ingresses
        .iter()
        .filter(|o| o.name() != protected[0].name())
        .collect();
    let routes: Vec<(String, String, String)> = pages
        .iter()
        .flat_map(|o| seq(&o.v["spec"]["rules"]))
        .flat_map(|r| seq(&r["http"]["paths"]))
        .map(|p| {
            (
                string(&p["path"]),
                string(&p["pathType"]),
                string(&p["backend"]["service"]["name"]),
            )
        })
        .collect();
    for path in HEADGATE_PATHS {
        let hit = routes.iter().find(|(p, t, _)| match t.as_str() {
            "Exact" => p == path,
            "Prefix" => path == p || path.starts_with(&format!("{}/", p.trim_end_matches('/'))),
            other => panic!("use Exact or Prefix path types, not {other}"),
        });
        let (_, _, svc) =
            hit.unwrap_or_else(|| panic!("{path} is not routed to headgate without auth"));
        assert_eq!(svc, "headgate", "{path}");
    }
    for (_, _, svc) in &routes {
        assert_eq!(
            svc, "headgate",
            "the unauthenticated Ingress may only route to headgate"
        );
    }
}

/// Whether a Traefik rule's `Path(`…`)` / `PathPrefix(`…`)` matchers (ORed) take `path`.
fn traefik_matches(rule: &str, path: &str) -> bool {
    let args = |matcher: &str| -> Vec<String> {
        rule.match_indices(&format!("{matcher}(`"))
            .filter_map(|(i, m)| {
                rule[i + m.len()..]
                    .split_once('`')
                    .map(|(a, _)| a.to_string())
            })
            .collect()
    };
    args("Path").iter().any(|p| p == path)
        || args("PathPrefix")
            .iter()
            .any(|p| path.starts_with(p.as_str()))
}

#[test]
fn deploy_forward_auth_traefik_uses_the_forward_verdict_endpoint() {
    let objs = objects_in(&deploy().join("kubernetes/forward-auth"));
    let mw = only(&objs, "Middleware");
    let fa = &mw.v["spec"]["forwardAuth"];
    assert_verdict_url(
        &objs,
        fa["address"].as_str().expect("forwardAuth.address"),
        "/_headgate/auth/forward",
    );
    assert_ne!(
        fa["trustForwardHeader"].as_bool(),
        Some(true),
        "never trust clients' X-Forwarded-*"
    );
    let passed: BTreeSet<String> = seq(&fa["authResponseHeaders"])
        .iter()
        .map(|h| string(h).to_ascii_lowercase())
        .collect();
    assert_eq!(
        passed,
        identity_headers(),
        "authResponseHeaders vs headgate's identity headers"
    );

    let route = only(&objs, "IngressRoute");
    let routes = seq(&route.v["spec"]["routes"]);
    let mut protected = 0;
    for r in &routes {
        let services: Vec<String> = seq(&r["services"])
            .iter()
            .map(|s| string(&s["name"]))
            .collect();
        let mws: Vec<String> = seq(&r["middlewares"])
            .iter()
            .map(|m| string(&m["name"]))
            .collect();
        for m in &mws {
            assert_eq!(
                m,
                mw.name(),
                "route uses middleware {m}, which is not defined"
            );
        }
        if services == ["headgate"] {
            assert!(
                mws.is_empty(),
                "headgate's own pages must not pass through forward-auth (a loop)"
            );
            let m = string(&r["match"]);
            for path in HEADGATE_PATHS {
                assert!(
                    traefik_matches(&m, path),
                    "{path} is not matched by headgate's route: {m}"
                );
            }
        } else {
            assert_eq!(
                mws,
                vec![mw.name().to_string()],
                "a route to {services:?} without forward-auth"
            );
            protected += 1;
        }
    }
    assert!(protected >= 1, "no route is protected by forward-auth");
    let svc = find(&objs, "Service", "headgate");
    for r in &routes {
        for s in seq(&r["services"])
            .iter()
            .filter(|s| s["name"].as_str() == Some("headgate"))
        {
            assert!(
                seq(&svc.v["spec"]["ports"])
                    .iter()
                    .any(|p| p["port"] == s["port"]),
                "IngressRoute names headgate port {:?}, which the Service does not have",
                s["port"]
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------------------------------------

#[test]
fn deploy_dockerfile_binary_user_volume_and_healthcheck_agree() {
    let d = Dockerfile::read();
    assert_eq!(d.exec_form("ENTRYPOINT"), vec![HEADGATE_BIN]);
    assert_eq!(d.exec_form("CMD"), vec!["serve"]);
    let uid = d.uid();
    assert_ne!(uid, 0, "the image must not run as root");

    // HEALTHCHECK runs the binary's healthcheck subcommand (no curl in the image).
    let hc = d.one("HEALTHCHECK");
    let cmd = hc
        .split_once("CMD")
        .map(|(_, c)| c.trim())
        .expect("HEALTHCHECK ... CMD [...]");
    let cmd: Vec<String> = serde_json::from_str(cmd).expect("HEALTHCHECK CMD in exec (JSON) form");
    assert_eq!(cmd, vec![HEADGATE_BIN, "healthcheck"]);

    // The volume is headgate's default data_path, owned by the runtime user.
    let volume: Vec<String> = serde_json::from_str(&d.one("VOLUME")).expect("VOLUME in JSON form");
    let default = Config::parse(
        "minimal",
        "[server]\nbase_url = \"https://hp.example.com\"\ncookie_secret = \"0123456789abcdef0123456789abcdef\"\n",
        &HashMap::new(),
    )
    .unwrap();
    assert_eq!(volume, vec![default.server.data_path.display().to_string()]);

    // The binary is copied from the build stage, from where that stage installed cargo's release build.
    let (build_name, build) = d.stages[..d.stages.len() - 1]
        .iter()
        .find(|(_, ins)| {
            ins.iter()
                .any(|(i, a)| i == "RUN" && a.contains("cargo build"))
        })
        .expect("a build stage that runs cargo build");
    let build_name = build_name
        .clone()
        .expect("the build stage is named (FROM … AS name)");
    let run = build
        .iter()
        .find(|(i, a)| i == "RUN" && a.contains("cargo build"))
        .map(|(_, a)| a.clone())
        .unwrap();
    for flag in ["--release", "--locked", "--bin headgate"] {
        assert!(run.contains(flag), "cargo build needs {flag}: {run}");
    }
    let copies: Vec<String> = d
        .last()
        .iter()
        .filter(|(i, _)| i == "COPY")
        .map(|(_, a)| a.clone())
        .collect();
    let bin_copy = copies
        .iter()
        .find(|a| a.split_whitespace().last() == Some(HEADGATE_BIN))
        .unwrap_or_else(|| panic!("no COPY to {HEADGATE_BIN}: {copies:?}"));
    assert!(
        bin_copy.contains(&format!("--from={build_name}")),
        "{bin_copy}"
    );
    let src = bin_copy.split_whitespace().rev().nth(1).unwrap();
    assert!(
        run.contains(&format!("target/release/headgate {src}")),
        "the build stage must install target/release/headgate at {src}: {run}"
    );
    let vol_copy = copies
        .iter()
        .find(|a| a.split_whitespace().last() == Some(volume[0].as_str()))
        .unwrap_or_else(|| {
            panic!(
                "the volume directory {} is not created with its owner",
                volume[0]
            )
        });
    assert!(
        vol_copy.contains(&format!("--chown={uid}:"))
            || vol_copy.contains(&format!("--chown={uid} ")),
        "the volume directory must belong to the runtime user {uid}: {vol_copy}"
    );
    let vol_src = vol_copy.split_whitespace().rev().nth(1).unwrap();
    assert!(
        run.contains(&format!("-m 0700 {vol_src}")),
        "the volume directory must be created 0700 (headgate refuses a wider one): {run}"
    );

    // The build context leaves out the target directory and node packages.
    let ignore = read(&deploy().join("Dockerfile.dockerignore"));
    for p in ["target", "tests/idp/node_modules", ".git"] {
        assert!(
            ignore.lines().any(|l| l.trim() == p),
            "Dockerfile.dockerignore must exclude {p}"
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------------------

/// `[Section]` → key → every value (keys may repeat).
fn unit_file(path: &Path) -> BTreeMap<String, BTreeMap<String, Vec<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
    let mut section = String::new();
    for line in read(path).lines() {
        let l = line.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = s.to_string();
            continue;
        }
        let (k, v) = l
            .split_once('=')
            .unwrap_or_else(|| panic!("not key=value: {l}"));
        assert!(!section.is_empty(), "{l} outside a section");
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

#[test]
fn deploy_systemd_unit_is_hardened_and_runs_headgate_serve() {
    let dir = deploy().join("systemd");
    let unit = unit_file(&dir.join("headgate.service"));
    let svc = unit.get("Service").expect("[Service]");
    let one = |k: &str| -> String {
        let v = svc
            .get(k)
            .unwrap_or_else(|| panic!("[Service] {k}= is missing"));
        assert_eq!(v.len(), 1, "{k}= set more than once");
        v[0].clone()
    };

    let exec: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        exec[0], HEADGATE_BIN,
        "ExecStart runs the binary the Dockerfile and README install"
    );
    assert_eq!(
        exec.last().map(String::as_str),
        Some("serve"),
        "ExecStart: {exec:?}"
    );
    let config = exec
        .windows(2)
        .find(|w| w[0] == "--config" || w[0] == "-c")
        .map(|w| w[1].clone())
        .expect("ExecStart names the config file");
    assert!(config.starts_with("/etc/headgate/"), "config at {config}");
    let reload = one("ExecReload");
    assert!(
        reload.contains("-HUP") && reload.contains("$MAINPID"),
        "ExecReload sends SIGHUP: {reload}"
    );

    // The state directory is headgate's default data_path, private.
    assert_eq!(one("StateDirectory"), "headgate");
    assert_eq!(one("StateDirectoryMode"), "0700");
    assert_eq!(one("UMask"), "0077");
    let default = Config::parse(
        "minimal",
        "[server]\nbase_url = \"https://hp.example.com\"\ncookie_secret = \"0123456789abcdef0123456789abcdef\"\n",
        &HashMap::new(),
    )
    .unwrap();
    assert_eq!(default.server.data_path, Path::new("/var/lib/headgate"));

    // Not root: a dedicated user (the admin CLI must run as the same uid, S17) that sysusers creates.
    let user = one("User");
    assert!(!user.is_empty() && user != "root" && user != "0");
    let sysusers = read(&dir.join("headgate.sysusers"));
    assert!(
        sysusers
            .lines()
            .any(|l| l.split_whitespace().take(2).collect::<Vec<_>>() == ["u", user.as_str()]),
        "headgate.sysusers must create the user {user}"
    );

    for (k, v) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("CapabilityBoundingSet", ""),
        ("SystemCallArchitectures", "native"),
    ] {
        assert_eq!(one(k), v, "[Service] {k}");
    }
    let families = one("RestrictAddressFamilies");
    let families: BTreeSet<&str> = families.split_whitespace().collect();
    assert_eq!(families, BTreeSet::from(["AF_UNIX", "AF_INET", "AF_INET6"]));

    // Stopping waits longer than headgate's own grace period for in-flight requests.
    let stop = one("TimeoutStopSec");
    let secs: u64 = stop
        .trim_end_matches('s')
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        secs > default.server.shutdown_timeout,
        "TimeoutStopSec {secs} <= shutdown_timeout"
    );
    assert!(unit["Install"]["WantedBy"].contains(&"multi-user.target".to_string()));
}

// ---------------------------------------------------------------------------------------------------------
// The demo's configuration (deploy/demo/run --config-only: no build, nothing started)
// ---------------------------------------------------------------------------------------------------------

fn run_demo_config_only(state: &Path, port: &str) -> std::process::Output {
    std::process::Command::new("bash")
        .arg(deploy().join("demo/run"))
        .arg("--config-only")
        .env("HEADGATE_DEMO_DIR", state)
        .env("HEADGATE_DEMO_PORT", port)
        .output()
        .expect("run deploy/demo/run")
}

#[test]
fn deploy_demo_config_only_writes_a_config_headgate_accepts() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = harness::tempdir();
    let state = tmp.path().join("state");
    let out = run_demo_config_only(&state, "4999");
    assert!(
        out.status.success(),
        "deploy/demo/run --config-only failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(path, state.join("headgate.toml"));
    let c = Config::load(&path, &HashMap::new())
        .unwrap_or_else(|e| panic!("headgate refuses the demo's config:\n{e}"));
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:4999");
    assert_eq!(c.server.base_url.as_str(), "http://127.0.0.1:4999/");
    assert!(
        !c.server.cookie_secure,
        "the demo is plain HTTP on loopback"
    );
    assert_eq!(c.upstream.headplane_login, HeadplaneLogin::None);
    assert!(
        c.oidc.as_ref().unwrap().use_pkce,
        "the test IdP requires PKCE"
    );
    assert!(c.server.cookie_secret.len() >= 32);
    assert!(c.server.data_path.starts_with(&state));
    headgate::cli::prepare_data_dir(&c.server.data_path).unwrap_or_else(|e| {
        panic!(
            "serve would refuse the demo's data directory: {}",
            e.message
        )
    });
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    for f in std::fs::read_dir(state.join("secrets")).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }

    // The test IdP's configuration matches headgate's: the client, its secret, the callback.
    assert_eq!(
        mode(&state.join("idp.json")),
        0o600,
        "idp.json holds the client secret"
    );
    let idp: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(state.join("idp.json")).unwrap()).unwrap();
    let client = &idp["clients"][0];
    let oidc = c.oidc.as_ref().unwrap();
    assert_eq!(client["client_id"], oidc.client_id.as_str());
    assert_eq!(
        client["client_secret"],
        std::fs::read_to_string(state.join("secrets/oidc_client_secret"))
            .unwrap()
            .trim()
    );
    assert_eq!(
        client["redirect_uris"][0],
        "http://127.0.0.1:4999/admin/oidc/callback"
    );
    assert_eq!(idp["users"][0]["login"], "alice");

    // A second start wipes its own state (an old store, the old cookie secret) ...
    let first = std::fs::read(state.join("secrets/cookie_secret")).unwrap();
    std::fs::write(state.join("data/headgate.redb"), "an old store").unwrap();
    assert!(run_demo_config_only(&state, "4999").status.success());
    assert_ne!(
        first,
        std::fs::read(state.join("secrets/cookie_secret")).unwrap()
    );
    assert!(
        !state.join("data/headgate.redb").exists(),
        "the demo kept an old store: owner bootstrap would not re-open"
    );
    // ... but never a directory that is not the demo's.
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    let refused = run_demo_config_only(&other, "4999");
    assert!(
        !refused.status.success(),
        "the demo wiped a directory that is not its own"
    );
    assert_eq!(
        std::fs::read_to_string(other.join("keep.txt")).unwrap(),
        "mine"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Kubernetes: several replicas on one PostgreSQL store
// ---------------------------------------------------------------------------------------------------------

#[test]
fn deploy_kubernetes_replicas_share_a_postgresql_store() {
    let dir = deploy().join("kubernetes/replicas");
    let k = yaml_docs(&dir.join("kustomization.yaml"));
    let listed: BTreeSet<String> = seq(&k[0]["resources"]).iter().map(string).collect();
    let present: BTreeSet<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources vs the files");
    let objs: Vec<Obj> = objects_in(&dir)
        .into_iter()
        .filter(|o| o.kind() != "Kustomization")
        .collect();

    // The headgate.toml in the ConfigMap, parsed by headgate with the mounted secrets (store.url_path too).
    let sc = sidecar_headgate_config(&objs);
    let headgate::config::StoreConfig::Postgres(pg) = &sc.config.store else {
        panic!("the replicas example must use a PostgreSQL store")
    };
    assert!(pg.url.expose().starts_with("postgresql://"));
    assert!(
        sc.toml["store"].get("url").is_none(),
        "the URL holds a password: store.url_path, from a Secret"
    );

    let deployment = only(&objs, "Deployment");
    assert_eq!(deployment.v["spec"]["replicas"].as_u64(), Some(3));
    assert_ne!(
        deployment.v["spec"]["strategy"]["type"].as_str(),
        Some("Recreate"),
        "a shared store needs no Recreate: replicas roll"
    );
    let pod_labels = labels(&deployment.v["spec"]["template"]["metadata"]["labels"]);
    let vols = volumes(deployment);
    for (name, v) in &vols {
        assert!(
            v["persistentVolumeClaim"].is_null(),
            "{name}: replicas keep nothing on a volume of their own"
        );
    }
    for kind in ["Service", "PodDisruptionBudget"] {
        let o = only(&objs, kind);
        let sel = if kind == "Service" {
            labels(&o.v["spec"]["selector"])
        } else {
            labels(&o.v["spec"]["selector"]["matchLabels"])
        };
        assert!(
            sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v)),
            "{} selects the pods",
            o.what()
        );
    }
    let pdb = only(&objs, "PodDisruptionBudget");
    assert!(pdb.v["spec"]["minAvailable"].as_u64().unwrap() < 3);
    assert_eq!(
        only(&objs, "Service").v["spec"]["sessionAffinity"].as_str(),
        None
    );
}
