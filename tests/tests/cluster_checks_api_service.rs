//! End-to-end tests of `apiserver-service-type` and its fix `restore-service-type`: real
//! `netmend run` agents (one per simulated node, each with its own state and port) in a network
//! namespace with the project's fake API server, which holds the Service `default/kubernetes` and
//! changes it the way k3s does (back to `ClusterIP` when a server joins or restarts).
//!
//! Shown: only the agent holding the Lease `netmend-api-service-keeper` judges and patches the
//! Service, the other says who keeps it; a reset is restored (type and configured annotations,
//! other annotations untouched), a 409 in between is not overwritten; the Lease moves when its
//! holder dies; a Service reset over and over opens the breaker instead of a fight; with the fix
//! off the Service is never written.

use netmend_e2e::fake_apiserver::{
    objects, FakeApiServer, Fault, EVENTS, LEASES, NAMESPACES, NODES, SERVICES,
};
use netmend_e2e::{require_tool, wait_for, Background, NetNs};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NAMESPACE: &str = "netmend";
const CHECK: &str = "apiserver-service-type";
const FIX: &str = "restore-service-type";
const LEASE: &str = "netmend-api-service-keeper";
const SERVICE_PATH: &str = "/api/v1/namespaces/default/services/kubernetes";
const LB_ANNOTATION: &str = "metallb.universe.tf/loadBalancerIPs";

/// One simulated node's agent: its state directory and port.
struct Agent {
    process: Option<Background>,
    node: String,
    dir: PathBuf,
    port: u16,
}

/// A network namespace with the fake API server (the Service as k3s leaves it after a server
/// restart: `ClusterIP`, with an annotation of someone else's) and the agents started in it.
struct Cluster {
    agents: Vec<Agent>,
    api: FakeApiServer,
    ns: NetNs,
}

impl Cluster {
    fn new(tag: &str) -> Cluster {
        require_tool("nsenter");
        let ns = NetNs::new(tag);
        let api = FakeApiServer::start_in(&ns.path());
        api.put(&NAMESPACES, objects::namespace(NAMESPACE));
        api.put(&NAMESPACES, objects::namespace("default"));
        let mut service = objects::service("default", "kubernetes", "10.43.0.1", 443);
        service["spec"]["ports"][0]["name"] = json!("https");
        service["spec"]["ports"][0]["targetPort"] = json!(6443);
        service["spec"].as_object_mut().unwrap().remove("selector");
        service["metadata"]["annotations"] = json!({"ops.example.com/owner": "platform"});
        api.put(&SERVICES, service);
        Cluster {
            agents: Vec::new(),
            api,
            ns,
        }
    }

    /// Starts the agent of `node` with `config`; returns its index.
    fn start(&mut self, node: &str, config: &str) -> usize {
        self.api.put(&NODES, objects::node(node));
        let dir = std::env::temp_dir().join(format!("netmend-apisvc-{}-{node}", self.ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        self.api
            .write_kubeconfig(&dir.join("kubeconfig"), NAMESPACE)
            .unwrap();
        std::fs::write(dir.join("config.yaml"), config).unwrap();
        let port = 9330 + self.agents.len() as u16;
        let process = self
            .ns
            .spawn_netmend_on_cluster(&dir, port, node, NAMESPACE);
        self.agents.push(Agent {
            process: Some(process),
            node: node.to_string(),
            dir,
            port,
        });
        let index = self.agents.len() - 1;
        self.wait("the agent connected", Duration::from_secs(20), || {
            let status = self.try_status(index)?;
            (status["kubernetes"]["connected"] == true).then_some(())
        });
        index
    }

    /// Kills an agent without letting it give its Lease back (a node that died).
    fn kill(&mut self, index: usize) {
        self.agents[index].process.take();
    }

    fn try_status(&self, index: usize) -> Option<Value> {
        let (code, body) = self.ns.http_get(self.agents[index].port, "/status").ok()?;
        (code == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    fn log(&self, index: usize) -> String {
        std::fs::read_to_string(self.agents[index].dir.join("agent.log")).unwrap_or_default()
    }

    fn wait<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        wait_for(timeout, f).unwrap_or_else(|| {
            let agents: Vec<String> = (0..self.agents.len())
                .map(|i| {
                    format!(
                        "--- {}: status {:#}\nlog:\n{}",
                        self.agents[i].node,
                        self.try_status(i).unwrap_or_default(),
                        self.log(i)
                    )
                })
                .collect();
            panic!(
                "timed out waiting for {what}\nservice: {:#}\nlease: {:#}\n{}",
                self.service(),
                self.api.get(&LEASES, NAMESPACE, LEASE).unwrap_or_default(),
                agents.join("\n")
            )
        })
    }

    fn service(&self) -> Value {
        self.api
            .get(&SERVICES, "default", "kubernetes")
            .expect("the Service exists")
    }

    fn service_type(&self) -> String {
        self.service()["spec"]["type"]
            .as_str()
            .unwrap_or("ClusterIP")
            .to_string()
    }

    /// What k3s does when a server joins or restarts: the type back to ClusterIP.
    fn reset_like_k3s(&self) {
        self.api
            .modify(&SERVICES, "default", "kubernetes", |s| {
                s["spec"]["type"] = json!("ClusterIP");
            })
            .unwrap();
    }

    fn holder(&self) -> String {
        self.api
            .get(&LEASES, NAMESPACE, LEASE)
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn index_of(&self, node: &str) -> usize {
        self.agents.iter().position(|a| a.node == node).unwrap()
    }

    fn journal(&self, index: usize) -> Vec<Value> {
        std::fs::read_to_string(self.agents[index].dir.join("state/journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .filter(|e: &Value| e["fix"] == FIX)
            .collect()
    }

    fn outcomes(&self, index: usize) -> Vec<String> {
        self.journal(index)
            .iter()
            .map(|e| e["outcome"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    fn service_patches(&self) -> usize {
        self.api.requests_to("PATCH", SERVICE_PATH).len()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for agent in &mut self.agents {
            agent.process.take();
            let _ = std::fs::remove_dir_all(&agent.dir);
        }
    }
}

fn config(fix: bool, max_attempts: u32) -> String {
    let mut text = format!(
        "mode: enforce\nkubernetes:\n  requestTimeout: 1s\n  slotLease: 3s\nchecks:\n  kube-proxy-endpoint-drift: {{ enabled: false }}\n  {CHECK}:\n    enabled: true\n    type: LoadBalancer\n    annotations:\n      {LB_ANNOTATION}: 192.168.1.240\n"
    );
    if fix {
        text.push_str(&format!(
            "fixes:\n  {FIX}: {{ enabled: true, confirmFor: 0s, cooldown: 0s, maxAttempts: {max_attempts} }}\n"
        ));
    }
    text
}

fn restored(cluster: &Cluster) -> Option<()> {
    let service = cluster.service();
    (service["spec"]["type"] == "LoadBalancer"
        && service["metadata"]["annotations"][LB_ANNOTATION] == "192.168.1.240")
        .then_some(())
}

#[test]
fn the_lease_holder_alone_restores_the_reset_service_and_the_lease_moves_when_it_dies() {
    let mut cluster = Cluster::new("apisvc-keep");
    // The first write meets a Service changed since it was read: refused, not overwritten.
    cluster.api.fail(
        Fault::status(409)
            .method("PATCH")
            .path(SERVICE_PATH)
            .times(1),
    );
    let a = cluster.start("node-a", &config(true, 5));
    let b = cluster.start("node-b", &config(true, 5));
    cluster.wait("the Service restored", Duration::from_secs(20), || {
        restored(&cluster)
    });
    // the journal line follows the read back
    cluster.wait("the fix journaled", Duration::from_secs(5), || {
        let holder = cluster.holder();
        let index = cluster.agents.iter().position(|a| a.node == holder)?;
        (cluster.outcomes(index).last().map(String::as_str) == Some("verified")).then_some(())
    });
    let service = cluster.service();
    assert_eq!(
        service["metadata"]["annotations"]["ops.example.com/owner"], "platform",
        "annotations netmend was not told about are left alone"
    );
    assert_eq!(service["spec"]["clusterIP"], "10.43.0.1");
    let keeper = cluster.holder();
    let (keeper_index, other) = if keeper == "node-a" { (a, b) } else { (b, a) };
    assert_eq!(cluster.agents[keeper_index].node, keeper);
    assert_eq!(
        cluster.outcomes(keeper_index),
        ["skipped_precondition_moved", "applied", "verified"],
        "{:#?}",
        cluster.journal(keeper_index)
    );
    assert!(cluster.journal(other).is_empty());
    let other_status = cluster.try_status(other).unwrap();
    let why = other_status["notJudged"][CHECK]
        .as_str()
        .unwrap_or_default();
    assert!(
        why.contains(&format!("the agent on {keeper} keeps")),
        "{other_status:#}"
    );
    // the patch carried the resourceVersion read, and only type and the wanted annotation
    let patches = cluster.api.requests_to("PATCH", SERVICE_PATH);
    let last = patches.last().unwrap().json().unwrap();
    assert!(last["metadata"]["resourceVersion"].is_string(), "{last:#}");
    assert_eq!(last["spec"], json!({"type": "LoadBalancer"}));
    assert_eq!(
        last["metadata"]["annotations"],
        json!({LB_ANNOTATION: "192.168.1.240"})
    );

    // Only what the chart's Roles grant for this check (kube-proxy-endpoint-drift, which would
    // watch every Service, is off here): that one Service by name (list and watch by a field
    // selector on its name), the keeper's and the fix slot's Leases by name.
    for request in cluster.api.requests() {
        if request.path.contains("/services") {
            let by_name = request.path == SERVICE_PATH
                || (request.path == "/api/v1/namespaces/default/services"
                    && request.param("fieldSelector").as_deref()
                        == Some("metadata.name=kubernetes"));
            assert!(
                by_name,
                "{} {}?{}",
                request.method, request.path, request.query
            );
        }
        if let Some(lease) = request
            .path
            .strip_prefix("/apis/coordination.k8s.io/v1/namespaces/netmend/leases/")
        {
            assert!(
                lease == LEASE || lease == "netmend-fix-slot-0",
                "{} {}",
                request.method,
                request.path
            );
        }
    }

    // k3s resets it: put back again by the holder
    cluster.reset_like_k3s();
    cluster.wait("restored after a reset", Duration::from_secs(10), || {
        restored(&cluster)?;
        (cluster.outcomes(keeper_index).len() == 5).then_some(())
    });
    assert_eq!(cluster.outcomes(keeper_index)[3..], ["applied", "verified"]);

    // the holder's node dies: the other agent takes the Lease over and keeps the Service
    let keeper_node = keeper.clone();
    cluster.kill(keeper_index);
    let successor = cluster.agents[other].node.clone();
    cluster.wait("the Lease moved", Duration::from_secs(20), || {
        (cluster.holder() == successor).then_some(())
    });
    cluster.reset_like_k3s();
    cluster.wait(
        "restored by the new holder",
        Duration::from_secs(10),
        || {
            restored(&cluster)?;
            (cluster.outcomes(other).len() == 2).then_some(())
        },
    );
    assert_eq!(cluster.outcomes(other), ["applied", "verified"]);
    assert_ne!(successor, keeper_node);
    assert_eq!(cluster.index_of(&successor), other);
}

#[test]
fn a_service_reset_over_and_over_opens_the_breaker_instead_of_a_fight() {
    let mut cluster = Cluster::new("apisvc-loop");
    let agent = cluster.start("node-a", &config(true, 2));
    // k3s in a restart loop: every time the Service is a LoadBalancer again, it is reset.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut resets = 0;
    while Instant::now() < deadline && resets < 3 {
        if cluster.service_type() == "LoadBalancer" {
            cluster.reset_like_k3s();
            resets += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(resets, 2, "restored twice, then no more");
    let status = cluster.wait("the breaker open", Duration::from_secs(10), || {
        let status = cluster.try_status(agent)?;
        let finding = status["findings"]
            .as_array()?
            .iter()
            .find(|f| f["check"] == CHECK)?
            .clone();
        (finding["fix"]["state"] == "circuit-open").then_some(finding)
    });
    assert!(
        status["fix"]["detail"]
            .as_str()
            .unwrap()
            .contains("fixed 2 times and back again"),
        "{status:#}"
    );
    let patches = cluster.service_patches();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(cluster.service_patches(), patches, "no more writes");
    assert_eq!(patches, 2);
    assert_eq!(cluster.service_type(), "ClusterIP");
    // the cluster sees it: the holder's condition and a CircuitOpen Event
    cluster.wait(
        "the condition and the Event",
        Duration::from_secs(10),
        || {
            let node = cluster.api.get(&NODES, "", "node-a")?;
            let condition = node["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "NetmendApiserverServiceType")?
                .clone();
            let opened = cluster
                .api
                .list(&EVENTS, None)
                .iter()
                .any(|e| e["reason"] == "CircuitOpen");
            (condition["status"] == "True"
                && condition["reason"] == "ApiServiceTypeReset"
                && opened)
                .then_some(())
        },
    );
}

#[test]
fn with_the_fix_off_the_reset_is_reported_and_the_service_never_written() {
    let mut cluster = Cluster::new("apisvc-off");
    let agent = cluster.start("node-a", &config(false, 3));
    let finding = cluster.wait("the finding", Duration::from_secs(15), || {
        let status = cluster.try_status(agent)?;
        status["findings"]
            .as_array()?
            .iter()
            .find(|f| f["check"] == CHECK)
            .cloned()
    });
    assert_eq!(finding["subject"], "default/kubernetes");
    let message = finding["message"].as_str().unwrap();
    assert!(
        message.contains("type is ClusterIP, wanted LoadBalancer")
            && message.contains(&format!("annotation {LB_ANNOTATION} is missing")),
        "{message}"
    );
    assert_eq!(finding["fix"]["state"], "disabled", "{finding:#}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(cluster.service_patches(), 0);
    assert_eq!(cluster.holder(), "node-a");
    // the Service as configured by hand: the finding goes
    cluster
        .api
        .modify(&SERVICES, "default", "kubernetes", |s| {
            s["spec"]["type"] = json!("LoadBalancer");
            s["metadata"]["annotations"][LB_ANNOTATION] = json!("192.168.1.240");
        })
        .unwrap();
    cluster.wait("the finding gone", Duration::from_secs(10), || {
        let status = cluster.try_status(agent)?;
        (!status["findings"]
            .as_array()?
            .iter()
            .any(|f| f["check"] == CHECK))
        .then_some(())
    });
}
