//! Membership changes on real processes, with etcdctl: a 4th member joins a 3-member cluster
//! under write load as a learner (`--initial-cluster-state existing`), is promoted once it
//! caught up, then an original member is removed and stops, then leadership moves to the new
//! member (`etcdctl move-leader`). No acknowledged write is lost, no write fails, and the
//! remaining members agree on the store's hash.

mod support;

use c20_client::{prefix_end, Client};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{free_ports, hashkv_hashes, run_etcdctl, Cluster, Flavor, C20_BIN, ETCD_BIN};

/// A process started by this test, killed when dropped.
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `(id, name, is_learner)` of every member, from `member list -w json` (ids are decimal there).
fn members(endpoint: &str) -> Vec<(u64, String, bool)> {
    let out = run_etcdctl(
        endpoint,
        &["member", "list", "-w", "json"],
        None,
        Duration::from_secs(20),
    );
    assert!(out.ok(), "member list: {out}");
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("member list json");
    v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["ID"].as_u64().expect("ID"),
                m["name"].as_str().unwrap_or("").to_string(),
                m["isLearner"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

#[test]
fn a_learner_joins_under_load_is_promoted_and_an_old_member_is_removed() {
    let mut cluster = Cluster::start(Flavor::C20, 3);
    cluster.wait_healthy(Duration::from_secs(30));
    cluster.wait_leader(Duration::from_secs(30));
    let n1 = cluster.members[0].client_addr();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Writes all along, through n1 (a member that stays).
    let acked = Arc::new(Mutex::new(Vec::<u64>::new()));
    let failed = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, failed, stop, ep) = (acked.clone(), failed.clone(), stop.clone(), n1.clone());
        rt.spawn(async move {
            let mut c = Client::connect(&[ep.as_str()]).await.unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match c.put(format!("w/{i:08}"), "v").await {
                    Ok(_) => acked.lock().unwrap().push(i),
                    Err(e) => failed.lock().unwrap().push(e.message),
                }
                i += 1;
            }
        })
    };
    let wait_acked = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while acked.lock().unwrap().len() < n {
            assert!(Instant::now() < deadline, "writes stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_acked(200);

    // Add n4 as a learner, then start it against the existing cluster.
    let ports = free_ports(2);
    let (client_url, peer_url) = (
        format!("http://127.0.0.1:{}", ports[0]),
        format!("http://127.0.0.1:{}", ports[1]),
    );
    // etcd refuses changes while its members have been up for less than a few seconds
    // ("unhealthy cluster"); c20 does not, but the test runs against both.
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = run_etcdctl(
            &n1,
            &[
                "member",
                "add",
                "n4",
                "--learner",
                &format!("--peer-urls={peer_url}"),
            ],
            None,
            Duration::from_secs(30),
        );
        if out.ok() || !out.stderr.contains("unhealthy cluster") || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(out.ok(), "member add: {out}");
    let initial_cluster = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("ETCD_INITIAL_CLUSTER=\""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap_or_else(|| panic!("no ETCD_INITIAL_CLUSTER in: {}", out.stdout))
        .to_string();
    assert!(
        out.stdout
            .contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{}",
        out.stdout
    );
    let learner = members(&n1)
        .into_iter()
        .find(|(_, name, learner)| name.is_empty() && *learner)
        .expect("the new member is listed as an unstarted learner");
    // A second learner is refused while the first one is there.
    let second = run_etcdctl(
        &n1,
        &[
            "member",
            "add",
            "n5",
            "--learner",
            "--peer-urls=http://127.0.0.1:1",
        ],
        None,
        Duration::from_secs(30),
    );
    assert!(
        second
            .stderr
            .contains("too many learner members in cluster"),
        "{second}"
    );

    let bin = if cluster.flavor == Flavor::Etcd {
        ETCD_BIN
    } else {
        C20_BIN
    };
    let log = std::fs::File::create(cluster.dir.path().join("n4.log")).unwrap();
    let mut cmd = Command::new(bin);
    if cluster.flavor == Flavor::C20 {
        cmd.arg("serve");
    }
    cmd.args([
        "--name",
        "n4",
        "--data-dir",
        cluster.dir.path().join("n4").to_str().unwrap(),
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        &initial_cluster,
        "--initial-cluster-state",
        "existing",
        "--initial-cluster-token",
        &cluster.token,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::from(log.try_clone().unwrap()))
    .stderr(Stdio::from(log));
    let _n4 = Proc(Some(cmd.spawn().expect("start n4")));

    // Promote once it has caught up (until then etcd's "not in sync" error).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = run_etcdctl(
            &n1,
            &["member", "promote", &format!("{:x}", learner.0)],
            None,
            Duration::from_secs(30),
        );
        if out.ok() {
            assert!(out.stdout.contains("promoted in cluster"), "{out}");
            break;
        }
        assert!(
            out.stderr.contains("in sync with leader") && Instant::now() < deadline,
            "promote: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let after_promote = members(&n1);
    assert_eq!(after_promote.len(), 4);
    assert!(
        after_promote.iter().all(|(_, _, learner)| !learner),
        "{after_promote:?}"
    );
    let so_far = acked.lock().unwrap().len();
    wait_acked(so_far + 200);

    // Remove an original member that neither leads nor takes the writes (so no election is
    // needed and no write may fail): it stops, saying why; the others go on.
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let gone = if leader == 2 { 1 } else { 2 };
    let gone_name = cluster.members[gone].name.clone();
    let gone_id = after_promote
        .iter()
        .find(|(_, name, _)| *name == gone_name)
        .expect("member listed")
        .0;
    let out = run_etcdctl(
        &n1,
        &["member", "remove", &format!("{gone_id:x}")],
        None,
        Duration::from_secs(30),
    );
    assert!(
        out.ok() && out.stdout.contains("removed from cluster"),
        "{out}"
    );
    if cluster.flavor == Flavor::C20 {
        let gone_child = cluster.members[gone]
            .child
            .as_mut()
            .expect("member running");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = gone_child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "a removed member kept running");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(!status.success());
        cluster.members[gone].child = None;
        let log = std::fs::read_to_string(&cluster.members[gone].log_path).unwrap();
        assert!(
            log.contains("permanently removed from the cluster"),
            "{log}"
        );
    }
    let so_far = acked.lock().unwrap().len();
    wait_acked(so_far + 200);

    // Hand leadership to the newest member under load (etcdctl finds the current leader among
    // the endpoints): the writes go on.
    let stayed = if gone == 2 { 1 } else { 2 };
    let n4 = format!("127.0.0.1:{}", ports[0]);
    let remaining = [
        n1.clone(),
        cluster.members[stayed].client_addr(),
        n4.clone(),
    ];
    let out = run_etcdctl(
        &remaining.join(","),
        &["move-leader", &format!("{:x}", learner.0)],
        None,
        Duration::from_secs(30),
    );
    assert!(
        out.ok()
            && out.stdout.starts_with("Leadership transferred from ")
            && out
                .stdout
                .trim_end()
                .ends_with(&format!(" to {:x}", learner.0)),
        "{out}"
    );
    let out = run_etcdctl(
        &n4,
        &["endpoint", "status", "-w", "json"],
        None,
        Duration::from_secs(30),
    );
    let st = support::parse_status_json(&out.stdout).expect("status");
    assert_eq!((st.member_id, st.leader), (learner.0, learner.0), "{out}");
    let so_far = acked.lock().unwrap().len();
    wait_acked(so_far + 200);
    stop.store(true, Ordering::Relaxed);
    rt.block_on(writer).unwrap();

    assert!(
        failed.lock().unwrap().is_empty(),
        "writes failed: {:?}",
        failed.lock().unwrap()
    );
    let acked = acked.lock().unwrap().clone();
    rt.block_on(async {
        for ep in &remaining {
            let mut c = Client::connect(&[ep.as_str()]).await.unwrap();
            let r = c
                .range(c20_api::etcdserverpb::RangeRequest {
                    key: b"w/".to_vec(),
                    range_end: prefix_end(b"w/"),
                    keys_only: true,
                    ..Default::default()
                })
                .await
                .unwrap();
            let have: std::collections::HashSet<Vec<u8>> =
                r.kvs.into_iter().map(|kv| kv.key).collect();
            for i in &acked {
                assert!(
                    have.contains(format!("w/{i:08}").as_bytes()),
                    "{ep} lost write {i}"
                );
            }
        }
    });
    let out = run_etcdctl(
        &remaining.join(","),
        &["endpoint", "hashkv", "-w", "json"],
        None,
        Duration::from_secs(30),
    );
    let hashes = hashkv_hashes(&out.stdout);
    assert_eq!(hashes.len(), 3, "{out}");
    assert!(
        hashes.windows(2).all(|w| w[0] == w[1]),
        "members disagree: {out}"
    );
    assert_eq!(members(&n4).len(), 3);
}
