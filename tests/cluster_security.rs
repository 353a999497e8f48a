//! Cluster mode attacked from outside and from inside, against real
//! `medfed` processes on 127.0.0.1: each experiment of the security review
//! (forged messages, Sybil names, session take-over, oversized
//! announcements, a cookie oracle, connection floods, certificates) is now
//! refused, logged, and leaves the federation working.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::cluster::{
    gen_certs, metric, scrape, shard_hospital, spawn, spawn_program, tls_flags, Process, COOKIE,
};
use common::{free_port, medfed};
use medfed_actors::cluster::gate::{frames, handshake, Cookie, Identity};
use medfed_actors::cluster::node::{self, NodeOptions};
use medfed_actors::cluster::{ClusterError, Envelope, COORDINATOR_GROUP};
use medfed_actors::messages::wire::{Uplinked, WireMessage};
use medfed_actors::messages::{Ask, HospitalInfo, ToCoordinator, TrainOutcome};
use prost::Message;

const TASK: &str = "breast_cancer";
const SHORT: Duration = Duration::from_secs(60);

fn coordinator(dir: &std::path::Path, addr: &str, extra: &[&str], envs: &[(&str, &str)]) -> Process {
    let mut args = vec!["coordinator", "--task", TASK, "--listen", addr];
    args.extend_from_slice(extra);
    let p = spawn(dir, "coordinator", &args, envs);
    p.wait_for(&["coordinator listening for hospitals"], 1, SHORT);
    p
}

fn hospital(dir: &std::path::Path, name: &str, addr: &str, shard: usize, extra: &[&str]) -> Process {
    shard_hospital(dir, name, TASK, addr, &format!("{shard}/5"), extra, &[])
}

fn rss_kib(pid: u32) -> u64 {
    common::cluster::proc_status(pid, "VmRSS:")
}

fn hello(name: &str) -> HospitalInfo {
    HospitalInfo {
        name: name.into(),
        task: TASK.into(),
        kind: "tabular".into(),
        samples: 100_000,
        node: String::new(),
        held_out: None,
        attack: None,
        privacy: None,
        features: None,
    }
}

/// A node holding the cookie that says it is hospital `name`.
async fn intruder(name: &str) -> node::Node {
    let id = Identity::Hospital(name.into());
    let (n, _events) = node::start(NodeOptions::new(
        format!("{}00000000000000aa", id.node_name_prefix()),
        id,
        COOKIE.into(),
    ))
    .await
    .unwrap();
    n
}

async fn gateway() -> ractor::ActorRef<Envelope> {
    loop {
        if let Some(c) = ractor::pg::get_members(&COORDINATOR_GROUP.to_string())
            .into_iter()
            .find(|c| !c.get_id().is_local())
        {
            return ractor::ActorRef::from(c);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn forged_hellos_and_updates_under_another_name_are_dropped_and_a_live_hospital_cannot_be_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let coordinator = coordinator(d, &addr, &[], &[]);
    let _real = hospital(d, "h1", &addr, 1, &[]);
    coordinator.wait_for(&["hospital said hello"], 1, SHORT);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // Mallory holds the cookie and connects as herself, then speaks for
        // breast_cancer-1: a hello in its name (three Sybil names too) and
        // an update under its link.
        let mallory = intruder("mallory").await;
        mallory.connect(&addr).await.unwrap();
        let gateway = gateway().await;
        let link = "medfed.hospital.breast_cancer-1.0000000000000000".to_string();
        for name in ["breast_cancer-1", "sybil-1", "sybil-2", "sybil-3"] {
            let forged = Uplinked {
                link: link.clone(),
                message: ToCoordinator::Hello { info: hello(name) },
            };
            gateway.cast(Envelope::new(forged.encode().unwrap())).unwrap();
        }
        let stats = Uplinked {
            link: link.clone(),
            message: ToCoordinator::Update {
                ask: Ask {
                    run: 1,
                    round: 1,
                    attempt: 0,
                },
                outcome: TrainOutcome::Declined {
                    reason: "forged".into(),
                },
            },
        };
        gateway.cast(Envelope::new(stats.encode().unwrap())).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;

        // Taking the name at the handshake: refused while the real one lives.
        let twin = intruder("breast_cancer-1").await;
        match twin.connect(&addr).await {
            Err(ClusterError::Duplicate(reason)) => assert!(reason.contains("already connected"), "{reason}"),
            other => panic!("a second session of breast_cancer-1 was not refused: {other:?}"),
        }
        mallory.stop();
        twin.stop();
    });
    coordinator.wait_for(&["dropped a cluster message", "identity_mismatch"], 1, SHORT);
    coordinator.wait_for(&["dropped a cluster message", "unknown_link"], 1, SHORT);
    coordinator.wait_for(&["refused a cluster connection", "duplicate_session"], 1, SHORT);
    // Only the real hospital ever said hello; no Sybil counts toward a quorum.
    coordinator.assert_lines(&["hospital said hello"], 1);
    // Four forged hellos from one session, one log line (throttled per kind and sender).
    coordinator.assert_lines(&["identity_mismatch"], 1);
}

#[test]
fn hospitals_outside_the_allow_list_and_weak_cookies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let coordinator = coordinator(
        d,
        &addr,
        &[],
        &[("MEDFED_CLUSTER__ALLOW", "[\"breast_cancer-1\"]")],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let sybil = intruder("sybil-1").await;
        match sybil.connect(&addr).await {
            Err(ClusterError::Refused(reason)) => {
                assert!(reason.contains("not on this coordinator's list"), "{reason}")
            }
            other => panic!("sybil-1 was not refused: {other:?}"),
        }
        sybil.stop();
    });
    coordinator.wait_for(&["refused a cluster connection", "not_admitted"], 1, SHORT);
    let allowed = hospital(d, "h1", &addr, 1, &[]);
    coordinator.wait_for(&["hospital said hello", "breast_cancer-1"], 1, SHORT);
    drop(allowed);

    for weak in ["test-cluster-cookie", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"] {
        let out = medfed(
            &["coordinator", "--task", TASK, "--listen", "127.0.0.1:1"],
            &[("MEDFED_CLUSTER_COOKIE", weak)],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("too weak") && err.contains("/dev/urandom"), "{err}");
    }
    // Plaintext beyond loopback needs the explicit flag.
    let data = d.join("plaintext.data");
    let out = medfed(
        &["coordinator", "--task", TASK, "--listen", "0.0.0.0:1"],
        &[
            ("MEDFED_CLUSTER_COOKIE", COOKIE),
            ("MEDFED_RUN__DATA_DIR", data.to_str().unwrap()),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without TLS") && err.contains("--insecure-plaintext"),
        "{err}"
    );
}

/// A TCP connection that passed the gate's handshake as hospital `name`
/// (with the cookie), ready for raw ractor_cluster frames.
fn raw_session(runtime: &tokio::runtime::Runtime, addr: &str, name: &str) -> TcpStream {
    let tcp = runtime.block_on(async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let cookie = Cookie::new(COOKIE).unwrap();
        handshake::as_hospital(&mut tcp, &cookie, &Identity::Hospital(name.into()), b"")
            .await
            .unwrap();
        tcp.into_std().unwrap()
    });
    tcp.set_nonblocking(false).unwrap();
    tcp
}

/// Write one ractor_cluster frame.
fn write_frame(s: &mut TcpStream, message: &frames::NetworkMessage) {
    s.write_all(&frames::frame(message)).unwrap();
}

#[test]
fn a_200000_actor_process_group_join_closes_the_session_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let coordinator = coordinator(d, &addr, &[], &[]);
    let before = rss_kib(coordinator.pid());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut socket = raw_session(&runtime, &addr, "bulk");
    let join = frames::NetworkMessage {
        message: Some(frames::Family::Control(frames::ControlMessage {
            msg: Some(frames::ControlKind::PgJoin(frames::PgChange {
                group: "medfed.link.breast_cancer".into(),
                actors: (0..200_000)
                    .map(|pid| frames::Actor {
                        pid,
                        name: Some(format!("a{pid}")),
                    })
                    .collect(),
                scope: "__default_scope__".into(),
            })),
        })),
    };
    assert!(join.encoded_len() > 1 << 20);
    let _ = socket.write_all(&frames::frame(&join));
    coordinator.wait_for(&["closed the cluster session", "frame"], 1, SHORT);
    let mut rest = Vec::new();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = socket.read_to_end(&mut rest);
    // A join within the frame limit but over the actor budget.
    let mut second = raw_session(&runtime, &addr, "bulk2");
    let mut many = join.clone();
    if let Some(frames::Family::Control(frames::ControlMessage {
        msg: Some(frames::ControlKind::PgJoin(j)),
    })) = &mut many.message
    {
        j.actors.truncate(100);
    }
    write_frame(&mut second, &many);
    coordinator.wait_for(&["closed the cluster session", "announced 17 actors"], 1, SHORT);
    let after = rss_kib(coordinator.pid());
    assert!(
        after < before + 64 * 1024,
        "the coordinator grew from {before} to {after} KiB"
    );
}

#[test]
fn a_rogue_server_learns_nothing_from_a_hospital_but_its_hello() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let rogue = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = rogue.local_addr().unwrap().to_string();
    let mut h = hospital(d, "h1", &addr, 1, &[]);
    let (mut s, _) = rogue.accept().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let name = "breast_cancer-1";
    let mut hello = vec![0u8; handshake::MAGIC.len() + 2 + name.len() + 32];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[..16], handshake::MAGIC);
    // A challenge and a made-up proof: a classic oracle would now answer.
    let mut reply = handshake::MAGIC.to_vec();
    reply.extend_from_slice(&[0x5a; 64]);
    s.write_all(&reply).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the hospital answered {} bytes", rest.len());
    assert!(!h.wait_exit(SHORT).success());
    assert!(
        h.log().contains("did not prove it holds the cluster cookie"),
        "{}",
        h.log()
    );
}

#[test]
fn floods_of_unauthenticated_connections_are_capped_quietly_and_hospitals_still_join() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let coordinator = coordinator(d, &addr, &[], &[]);
    let before = rss_kib(coordinator.pid());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // 500 idle connections from another loopback address.
    let idle = runtime.block_on(async {
        let mut idle = Vec::new();
        for _ in 0..500 {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
            if let Ok(s) = socket.connect(addr.parse().unwrap()).await {
                idle.push(s);
            }
        }
        idle
    });
    assert!(idle.len() >= 400, "{} connections", idle.len());
    let h = hospital(d, "h1", &addr, 1, &[]);
    coordinator.wait_for(&["hospital said hello"], 1, SHORT);
    let after = rss_kib(coordinator.pid());
    assert!(after < before + 64 * 1024, "{before} -> {after} KiB");
    let flood_lines = coordinator.count(&["closed a cluster connection at once"]);
    assert!(
        (1..=3).contains(&flood_lines),
        "{flood_lines} lines:\n{}",
        coordinator.log()
    );
    drop(idle);
    drop(h);
}

#[test]
fn an_idle_connection_does_not_hold_up_a_tls_join() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = d.join("certs");
    gen_certs(&certs, "breast_cancer-1");
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let mut c_args = tls_flags(&certs, "coordinator");
    c_args.extend(["--http".to_string(), http.clone()]);
    let coordinator = coordinator(
        d,
        &addr,
        &c_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    // Connected, silent: before the gate, this blocked every TLS join.
    let idle = TcpStream::connect(&addr).unwrap();
    let h_args = tls_flags(&certs, "breast_cancer-1");
    let _h = hospital(
        d,
        "h1",
        &addr,
        1,
        &h_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    // Well inside the idle connection's 10 s handshake deadline.
    coordinator.wait_for(&["hospital said hello"], 1, Duration::from_secs(8));
    drop(idle);
    // The certificates' expiry is on /metrics (open: no scrape token set).
    let metrics = scrape(&http);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    for certificate in ["node", "ca"] {
        let prefix = format!("medfed_tls_cert_expiry_seconds{{certificate=\"{certificate}\"}} ");
        let line = metrics
            .lines()
            .find(|l| l.starts_with(&prefix))
            .unwrap_or_else(|| panic!("{metrics}"));
        let at: i64 = line[prefix.len()..].trim().parse().unwrap();
        let days = (at - now) / 86_400;
        assert!((364..=365).contains(&days), "{line}");
    }
    assert!(metrics.contains("medfed_cluster_sessions 1"), "{metrics}");
}

#[test]
fn gen_certs_issues_certificates_that_say_what_they_are() {
    use std::os::unix::fs::PermissionsExt;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::pem::parse_x509_pem;

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    std::fs::create_dir_all(&out).unwrap();
    // A file left from before is rewritten owner-only.
    std::fs::write(out.join("h1.pem"), "old").unwrap();
    std::fs::set_permissions(out.join("h1.pem"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let made = medfed(
        &[
            "cluster",
            "gen-certs",
            "--out",
            out.to_str().unwrap(),
            "--hospitals",
            "h1,h2",
            "--coordinator-names",
            "medfed-coordinator.medfed.svc,10.0.0.7",
            "--days",
            "30",
        ],
        &[],
    );
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let ca_key = dir.path().join("certs.ca-key.pem");
    assert!(ca_key.exists(), "the CA key beside the directory");
    let mut files: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ca.pem",
            "coordinator-key.pem",
            "coordinator.pem",
            "h1-key.pem",
            "h1.pem",
            "h2-key.pem",
            "h2.pem"
        ]
    );
    for f in files.iter().map(|f| out.join(f)).chain([ca_key]) {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let read = |name: &str| std::fs::read(out.join(name)).unwrap();
    let days = |c: &x509_parser::certificate::X509Certificate| {
        (c.validity().not_after.timestamp() - c.validity().not_before.timestamp()) / 86_400
    };

    let ca_pem = read("ca.pem");
    let (_, pem) = parse_x509_pem(&ca_pem).unwrap();
    let ca = pem.parse_x509().unwrap();
    let bc = ca.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    let constraints = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::NameConstraints(n) => {
                Some(n.permitted_subtrees.clone().unwrap_or_default().len())
            }
            _ => None,
        })
        .expect("name constraints");
    assert_eq!(constraints, 4, "localhost, 127.0.0.1 and the two names given");
    assert_eq!(days(&ca), 30);

    let coordinator_pem = read("coordinator.pem");
    let (_, pem) = parse_x509_pem(&coordinator_pem).unwrap();
    let c = pem.parse_x509().unwrap();
    let eku = c.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let names: Vec<String> = c
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(ip) => format!("{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert!(
        names.contains(&"medfed-coordinator.medfed.svc".to_string()),
        "{names:?}"
    );
    assert!(names.contains(&"localhost".to_string()), "{names:?}");
    assert_eq!(
        medfed_actors::cluster::tls::certificate_identity(&pem.contents),
        Ok(Identity::Coordinator)
    );

    let h1_pem = read("h1.pem");
    let (_, pem) = parse_x509_pem(&h1_pem).unwrap();
    let h = pem.parse_x509().unwrap();
    let eku = h.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert_eq!(days(&h), 30);
    assert_eq!(
        medfed_actors::cluster::tls::certificate_identity(&pem.contents),
        Ok(Identity::Hospital("h1".into()))
    );
    // The CA key may not be written among the nodes' files.
    let inside = medfed(
        &[
            "cluster",
            "gen-certs",
            "--out",
            out.to_str().unwrap(),
            "--ca-key",
            out.join("ca-key.pem").to_str().unwrap(),
        ],
        &[],
    );
    assert!(!inside.status.success());
    assert!(String::from_utf8_lossy(&inside.stderr).contains("must not travel with the nodes"));
    // Also when written relative to a differently spelt --out.
    let relative = std::process::Command::new(env!("CARGO_BIN_EXE_medfed"))
        .current_dir(dir.path())
        .args([
            "cluster",
            "gen-certs",
            "--out",
            "./certs",
            "--ca-key",
            "certs/ca-key.pem",
        ])
        .output()
        .unwrap();
    assert!(!relative.status.success());
    assert!(String::from_utf8_lossy(&relative.stderr).contains("must not travel with the nodes"));
    // Hospital names whose files would overwrite others.
    for names in ["coordinator-key", "h1,h1-key", "ca", "h1,H1"] {
        let out = medfed(
            &[
                "cluster",
                "gen-certs",
                "--out",
                out.to_str().unwrap(),
                "--hospitals",
                names,
            ],
            &[],
        );
        assert!(!out.status.success(), "{names}");
    }
}

fn tls_files(certs: &std::path::Path, name: &str) -> medfed_actors::cluster::TlsFiles {
    medfed_actors::cluster::TlsFiles {
        cert: certs.join(format!("{name}.pem")),
        key: certs.join(format!("{name}-key.pem")),
        ca: certs.join("ca.pem"),
    }
}

#[test]
fn a_hospital_with_another_hospitals_valid_certificate_cannot_speak_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = d.join("certs");
    gen_certs(&certs, "breast_cancer-1,breast_cancer-2");
    let addr = format!("127.0.0.1:{}", free_port());
    let flags = tls_flags(&certs, "coordinator");
    let coordinator = coordinator(
        d,
        &addr,
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    );
    // The honest binary refuses to start under a name its certificate lacks.
    let h = tls_flags(&certs, "breast_cancer-2");
    let mut args: Vec<&str> = h.iter().map(String::as_str).collect();
    args.extend(["--name", "breast_cancer-1"]);
    let mut wrong = shard_hospital(d, "wrong", TASK, &addr, "1/5", &args, &[]);
    assert!(!wrong.wait_exit(SHORT).success());
    assert!(
        wrong.log().contains(
            "is the certificate of hospital breast_cancer-2, but this node is hospital breast_cancer-1"
        ),
        "{}",
        wrong.log()
    );
    // A modified one skips that check and claims breast_cancer-1 in the
    // handshake with breast_cancer-2's certificate: the coordinator refuses.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let id = Identity::Hospital("breast_cancer-2".into());
        let mut options = NodeOptions::new(
            format!("{}00000000000000c2", id.node_name_prefix()),
            id,
            COOKIE.into(),
        );
        options.tls = Some(tls_files(&certs, "breast_cancer-2"));
        let (node, _events) = node::start(options).await.unwrap();
        let mut forged = node.gate.clone();
        forged.me = Identity::Hospital("breast_cancer-1".into());
        match medfed_actors::cluster::gate::dial::dial(&forged, &addr, &node.server).await {
            Err(ClusterError::Refused(reason)) => assert!(
                reason.contains("its certificate names hospital breast_cancer-2 but its handshake says hospital breast_cancer-1"),
                "{reason}"
            ),
            other => panic!("not refused: {other:?}"),
        }
        node.stop();
    });
    coordinator.wait_for(
        &["refused a cluster connection", "certificate_mismatch"],
        1,
        SHORT,
    );
    assert_eq!(coordinator.count(&["hospital said hello"]), 0);
}

#[test]
fn a_coordinator_certificate_for_both_uses_is_refused_by_the_hospital() {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let certs = d.join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    // A CA and, as older releases made them, a leaf for server AND client use.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(certs.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let leaf = |name: &str, sans: Vec<SanType>, usages: Vec<ExtendedKeyUsagePurpose>| {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        p.extended_key_usages = usages;
        let cert = p.signed_by(&key, &issuer).unwrap();
        std::fs::write(certs.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(certs.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
    };
    leaf(
        "rogue",
        vec![
            SanType::DnsName("localhost".try_into().unwrap()),
            SanType::IpAddress("127.0.0.1".parse().unwrap()),
        ],
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    );
    leaf(
        "breast_cancer-1",
        vec![SanType::URI(
            "urn:medfed:hospital:breast_cancer-1".try_into().unwrap(),
        )],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let acceptor = medfed_actors::cluster::tls::acceptor(&tls_files(&certs, "rogue")).unwrap();
    // The rogue completes TLS, then counts what the hospital tells it.
    let rogue = runtime.spawn(async move {
        use tokio::io::AsyncReadExt;
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut heard = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(20), tls.read_to_end(&mut heard)).await;
        heard.len()
    });
    let flags = tls_flags(&certs, "breast_cancer-1");
    let mut h = hospital(
        d,
        "h1",
        &addr,
        1,
        &flags.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(!h.wait_exit(SHORT).success());
    assert!(
        h.log().contains("marked for both server and client use"),
        "{}",
        h.log()
    );
    assert_eq!(
        runtime.block_on(rogue).unwrap(),
        0,
        "the hospital said nothing to it"
    );
}

/// The TCP ports process `pid` listens on, with their addresses.
fn listening(pid: u32) -> Vec<(String, u16)> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().to_string();
            l.strip_prefix("socket:[")?.strip_suffix(']').map(str::to_string)
        })
        .collect();
    let mut out = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && f[3] == "0A" && inodes.iter().any(|i| i == f[9]) {
                let (ip, port) = f[1].split_once(':').unwrap();
                out.push((ip.to_string(), u16::from_str_radix(port, 16).unwrap()));
            }
        }
    }
    out
}

#[test]
fn a_hospital_accepts_no_session_from_anyone_it_did_not_dial() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let coordinator = coordinator(d, &addr, &[], &[]);
    let h = hospital(d, "h1", &addr, 1, &[]);
    coordinator.wait_for(&["hospital said hello"], 1, SHORT);
    // Its only listening socket is ractor_cluster's own, on loopback.
    let ports = listening(h.pid());
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0].0, "0100007F", "bound to 127.0.0.1: {ports:?}");
    let port = ports[0].1;
    // A rogue coordinator with the cookie dials it: medfed's handshake...
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let rogue = intruder("rogue").await;
        let refused = rogue.connect(&format!("127.0.0.1:{port}")).await;
        assert!(refused.is_err(), "{refused:?}");
        rogue.stop();
    });
    // ...and ractor_cluster's own protocol (its first frame, a name):
    // the listener speaks only TLS without a certificate and closes.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let name = frames::NetworkMessage {
        message: Some(frames::Family::Auth(frames::AuthenticationMessage {
            msg: Some(frames::AuthKind::Name(frames::NameMessage {
                name: "medfed.coordinator@127.0.0.1".into(),
                ..Default::default()
            })),
        })),
    };
    write_frame(&mut s, &name);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(answer.len() < 64, "{} bytes", answer.len());
    std::thread::sleep(Duration::from_millis(300));
    let h_log = std::fs::read_to_string(&h.stderr).unwrap();
    assert_eq!(h_log.matches("coordinator found").count(), 1, "{h_log}");
}

#[test]
fn a_session_that_takes_another_hospitals_node_name_is_closed_and_the_hospital_stays() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let coordinator = coordinator(d, &addr, &[], &[]);
    let _real = hospital(d, "h1", &addr, 1, &[]);
    coordinator.wait_for(&["hospital said hello"], 1, SHORT);
    let node_name = coordinator
        .log()
        .lines()
        .find(|l| l.contains("cluster node authenticated"))
        .and_then(|l| l.split("\"peer\":\"").nth(1))
        .and_then(|p| p.split('"').next())
        .map(str::to_string)
        .expect("the real hospital's node name in the log");
    assert!(
        node_name.starts_with("medfed.hospital.breast_cancer-1."),
        "{node_name}"
    );
    // Mallory authenticates as herself, then names her node like the real
    // hospital's (ractor_cluster's duplicate-session rule would keep hers).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut s = raw_session(&runtime, &addr, "mallory");
    let name = frames::NetworkMessage {
        message: Some(frames::Family::Auth(frames::AuthenticationMessage {
            msg: Some(frames::AuthKind::Name(frames::NameMessage {
                name: node_name,
                ..Default::default()
            })),
        })),
    };
    write_frame(&mut s, &name);
    coordinator.wait_for(&["closed the cluster session", "node name"], 1, SHORT);
    std::thread::sleep(Duration::from_millis(500));
    coordinator.assert_lines(&["hospital departed"], 0);
    coordinator.assert_lines(&["cluster node disconnected"], 0);
}

#[test]
fn a_chunk_flood_from_an_authenticated_node_does_not_disturb_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let coordinator = coordinator(d, &addr, &["--rounds", "3", "--auto-start", "--http", &http], &[]);
    let before = rss_kib(coordinator.pid());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // The flooder starts 400 messages it never finishes, each announcing
    // 1 GiB, ids high and low; then the hospitals join and the run goes on.
    let flooder = runtime.block_on(async {
        let flooder = intruder("flooder").await;
        flooder.connect(&addr).await.unwrap();
        let gateway = gateway().await;
        for n in 0..400u64 {
            let id = if n % 2 == 0 { u64::MAX - n } else { n };
            let mut chunk = medfed_actors::wire::chunks::split(id, &[0u8; 64 << 10], (64 << 10) + 24)
                .unwrap()
                .remove(0);
            // Announce 1 GiB in 16,384 chunks of which only this one comes.
            chunk[12..16].copy_from_slice(&16_384u32.to_le_bytes());
            chunk[16..24].copy_from_slice(&(1u64 << 30).to_le_bytes());
            let frame = medfed_actors::wire::Frame {
                kind: medfed_actors::messages::wire::KIND_CHUNK,
                payload: chunk,
            }
            .encode()
            .unwrap();
            gateway.cast(Envelope::new(frame)).unwrap();
        }
        flooder
    });
    let _hospitals: Vec<Process> = (1..=5)
        .map(|i| hospital(d, &format!("h{i}"), &addr, i, &[]))
        .collect();
    coordinator.wait_for(&["run ended"], 1, SHORT);
    coordinator.assert_lines(&["round aggregated"], 3);
    let metrics = scrape(&http);
    let evicted = metric(
        &metrics,
        "medfed_cluster_frames_dropped_total{reason=\"chunks_evicted\"}",
    )
    .unwrap_or_else(|| panic!("{metrics}"));
    assert_eq!(evicted, 396.0, "all but the last 4 of its 400");
    let after = rss_kib(coordinator.pid());
    assert!(after < before + 100 * 1024, "{before} -> {after} KiB");
    // Evictions are counted, and logged only now and then.
    let lines = coordinator.count(&["dropped incomplete messages of one sender"]);
    assert!((1..=3).contains(&lines), "{lines} lines");
    runtime.block_on(async { flooder.stop() });
}

/// User and system CPU seconds process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = stat.rsplit(')').next().unwrap();
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime), counted from after the name.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn out_of_descriptors_the_accept_loop_pauses_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let addr = format!("127.0.0.1:{}", free_port());
    // A coordinator with 40 descriptors (it needs about 20).
    let bin = env!("CARGO_BIN_EXE_medfed");
    let args = [
        "-c",
        "ulimit -n 40 && exec \"$0\" \"$@\"",
        bin,
        "--log-format",
        "json",
        "coordinator",
        "--task",
        TASK,
        "--listen",
        &addr,
    ];
    let coordinator = spawn_program(d, "coordinator", "sh", &args, &[]);
    coordinator.wait_for(&["coordinator listening for hospitals"], 1, SHORT);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // 8 idle connections from each of 6 addresses: more than it can hold.
    let idle = runtime.block_on(async {
        let mut idle = Vec::new();
        for source in 2..8 {
            for _ in 0..8 {
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket
                    .bind(format!("127.0.0.{source}:0").parse().unwrap())
                    .unwrap();
                if let Ok(s) = socket.connect(addr.parse().unwrap()).await {
                    idle.push(s);
                }
            }
        }
        idle
    });
    std::thread::sleep(Duration::from_secs(1));
    let cpu = cpu_seconds(coordinator.pid());
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(coordinator.pid()) - cpu;
    assert!(used < 1.0, "{used} CPU seconds in 3 s: the accept loop spins");
    let lines = coordinator.count(&["cannot accept cluster connections"]);
    assert!((1..=2).contains(&lines), "{lines} lines:\n{}", coordinator.log());
    // Once they go, a hospital joins.
    drop(idle);
    let _h = hospital(d, "h1", &addr, 1, &[]);
    coordinator.wait_for(&["hospital said hello"], 1, SHORT);
}
