//! A model's round trip over the cluster, coordinator -> hospital ->
//! coordinator, as a ratio to raw loopback TCP measured in the same run.
//!
//! The "coordinator" is this process; the "hospital" is this benchmark
//! binary started again as an echo node (MEDFED_BENCH_ECHO), so the bytes
//! cross a real socket between two processes. One round trip is the whole
//! path: encode the Train message (JSON header + raw tensors), chunk it,
//! ractor_cluster, decode and reassemble; the echo node sends the same
//! tensors back as an Update. Raw TCP echoes the same number of bytes, and
//! so does a raw mutual-TLS stream with the nodes' own rustls settings (the
//! peer of the TLS figures). Plain and mutual TLS; 4 MiB and 64 MiB models.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use ractor::pg::{self, GroupChangeMessage};
use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use medfed_actors::cluster::gate::Identity;
use medfed_actors::cluster::link::{send, Inbox};
use medfed_actors::cluster::node::{self, NodeOptions};
use medfed_actors::cluster::{tls, Envelope, TlsFiles, WireStats};
use medfed_actors::messages::wire::Uplinked;
use medfed_actors::messages::{Ask, ToCoordinator, ToHospital, TrainOutcome};
use medfed_models::learner::{GlobalModel, LocalUpdate, Release, TrainPlan};
use medfed_models::{Layout, Params, TensorSpec};

mod support;
use support::{mean_ns, output_dir};

const COOKIE: &str = "bench-Cookie/7Hq2xVw9Lp4Rz8Kd1Mb0Ty";
const SIZES_MIB: [usize; 2] = [4, 64];

fn main() {
    if let Ok(spec) = std::env::var("MEDFED_BENCH_ECHO") {
        echo_node(&spec);
        return;
    }
    let dir = output_dir();
    let mut c = Criterion::default().output_directory(&dir).configure_from_args();
    let certs = tempfile::tempdir().expect("a temporary directory");
    let made = Command::new(env!("CARGO_BIN_EXE_medfed"))
        .args(["cluster", "gen-certs", "--hospitals", "hospital", "--out"])
        .arg(certs.path())
        .output()
        .expect("medfed gen-certs runs");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));

    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut group = c.benchmark_group("cluster_transfer");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for mib in SIZES_MIB {
        group.throughput(Throughput::Bytes((2 * mib as u64) << 20));
        group.bench_function(format!("raw_tcp_{mib}MiB"), |b| {
            b.iter_custom(|iters| raw_tcp_round_trips(mib << 20, iters))
        });
        group.bench_function(format!("raw_tls_{mib}MiB"), |b| {
            b.iter_custom(|iters| runtime.block_on(raw_tls_round_trips(certs.path(), mib << 20, iters)))
        });
    }
    for tls in [false, true] {
        let mode = if tls { "tls" } else { "plain" };
        let files = tls.then(|| files(certs.path(), "coordinator"));
        let mut bench = runtime.block_on(Echo::start(mode, files, certs.path()));
        for mib in SIZES_MIB {
            let message = train_message(mib);
            group.throughput(Throughput::Bytes((2 * mib as u64) << 20));
            group.bench_function(format!("cluster_{mode}_{mib}MiB"), |b| {
                b.iter_custom(|iters| runtime.block_on(bench.round_trips(&message, iters)))
            });
        }
        bench.stop();
    }
    group.finish();
    c.final_summary();

    for mib in SIZES_MIB {
        let Some(raw) = mean_ns(&dir, "cluster_transfer", &format!("raw_tcp_{mib}MiB")) else {
            continue;
        };
        let gbs = |ns: f64| 2.0 * (mib << 20) as f64 / ns;
        let raw_tls = mean_ns(&dir, "cluster_transfer", &format!("raw_tls_{mib}MiB"));
        for mode in ["plain", "tls"] {
            let Some(t) = mean_ns(&dir, "cluster_transfer", &format!("cluster_{mode}_{mib}MiB")) else {
                continue;
            };
            print!(
                "{mib} MiB model round trip, cluster {mode}: {:.1} ms ({:.2} GB/s); raw loopback TCP {:.1} ms ({:.2} GB/s): ratio {:.3}",
                t / 1e6,
                gbs(t),
                raw / 1e6,
                gbs(raw),
                raw / t
            );
            match raw_tls {
                Some(peer) if mode == "tls" => println!(
                    "; raw rustls stream {:.1} ms ({:.2} GB/s): ratio {:.3}",
                    peer / 1e6,
                    gbs(peer),
                    peer / t
                ),
                _ => println!(),
            }
        }
    }
}

fn files(dir: &Path, name: &str) -> TlsFiles {
    TlsFiles {
        cert: dir.join(format!("{name}.pem")),
        key: dir.join(format!("{name}-key.pem")),
        ca: dir.join("ca.pem"),
    }
}

fn model(mib: usize) -> Params {
    let n = (mib << 20) / 4;
    let layout = Arc::new(Layout::new(vec![TensorSpec::new("w", &[n])]).expect("one tensor"));
    let values = (0..n).map(|i| (i as f32) * 1e-7).collect();
    Params::new(layout, values).expect("fits")
}

const BENCH_ASK: Ask = Ask {
    run: 1,
    round: 1,
    attempt: 0,
};

fn train_message(mib: usize) -> ToHospital {
    ToHospital::Train {
        ask: BENCH_ASK,
        model: GlobalModel {
            params: Arc::new(model(mib)),
            standardizer: None,
        },
        plan: TrainPlan {
            round: 1,
            attempt: 0,
            local_epochs: 1,
            batch_size: 32,
            learning_rate: 0.1,
            l2: 0.0,
            seed: 1,
            proximal_mu: 0.0,
            privacy: None,
        },
        shares: None,
    }
}

/// Echo `size` bytes through a loopback socket `iters` times.
fn raw_tcp_round_trips(size: usize, iters: u64) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let client = TcpStream::connect(addr).expect("connect");
    client.set_nodelay(true).expect("nodelay");
    let payload = vec![7u8; size];
    let mut back = vec![0u8; size];
    let start = Instant::now();
    for _ in 0..iters {
        let mut writer = client.try_clone().expect("clone");
        std::thread::scope(|s| {
            s.spawn(|| writer.write_all(&payload).expect("write"));
            (&client).read_exact(&mut back).expect("read");
        });
    }
    let elapsed = start.elapsed();
    drop(client);
    let _ = server.join();
    elapsed
}

/// Echo `size` bytes through a mutual-TLS loopback stream `iters` times,
/// with the nodes' own rustls settings and certificates; writing and
/// reading run in parallel, as in the raw TCP peer.
async fn raw_tls_round_trips(certs: &Path, size: usize, iters: u64) -> Duration {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let acceptor = tls::acceptor(&files(certs, "coordinator")).expect("a TLS acceptor");
    let connector = tls::connector(&files(certs, "hospital")).expect("a TLS connector");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        tcp.set_nodelay(true).expect("nodelay");
        let stream = acceptor.accept(tcp).await.expect("TLS accept");
        let (mut r, mut w) = tokio::io::split(stream);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w.write_all(&buf[..n]).await.is_err() || w.flush().await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let name = tls::server_name(&addr.to_string()).expect("a server name");
    let stream = connector.connect(name, tcp).await.expect("TLS connect");
    let (mut r, mut w) = tokio::io::split(stream);
    let mut payload = vec![7u8; size];
    let mut back = vec![0u8; size];
    let start = Instant::now();
    for _ in 0..iters {
        let writer = tokio::spawn(async move {
            w.write_all(&payload).await.expect("write");
            w.flush().await.expect("flush");
            (w, payload)
        });
        r.read_exact(&mut back).await.expect("read");
        (w, payload) = writer.await.expect("the writer");
    }
    let elapsed = start.elapsed();
    drop((r, w));
    server.abort();
    elapsed
}

/// This process's end: a node the echo process connects to.
struct Echo {
    node: node::Node,
    child: Child,
    echo: ActorRef<Envelope>,
    replies: UnboundedReceiver<()>,
    stats: Arc<WireStats>,
}

impl Echo {
    async fn start(mode: &str, tls: Option<TlsFiles>, certs: &Path) -> Echo {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let stats = Arc::new(WireStats::default());
        let (node, _events) = node::start(NodeOptions {
            listen: Some(format!("127.0.0.1:{port}").parse().expect("address")),
            tls: tls.clone(),
            directory: stats.directory.clone(),
            ..NodeOptions::new(
                Identity::Coordinator.node_name_prefix(),
                Identity::Coordinator,
                COOKIE.into(),
            )
        })
        .await
        .expect("node starts");
        let (tx, replies) = unbounded_channel();
        Actor::spawn(None, Receiver, (group("origin", mode), tx, stats.clone(), None))
            .await
            .expect("receiver starts");
        let certs_arg = if tls.is_some() {
            certs.display().to_string()
        } else {
            String::new()
        };
        let child = Command::new(std::env::current_exe().expect("this binary"))
            .env("MEDFED_BENCH_ECHO", format!("{port}|{mode}|{certs_arg}"))
            .spawn()
            .expect("echo node starts");
        let echo_group = group("echo", mode);
        let start = Instant::now();
        let echo = loop {
            if let Some(c) = pg::get_members(&echo_group)
                .into_iter()
                .find(|c| !c.get_id().is_local())
            {
                break ActorRef::<Envelope>::from(c);
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the echo node did not connect"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        Echo {
            node,
            child,
            echo,
            replies,
            stats,
        }
    }

    async fn round_trips(&mut self, message: &ToHospital, iters: u64) -> Duration {
        let start = Instant::now();
        for _ in 0..iters {
            send(&self.echo, message.clone(), &self.stats).expect("sent");
            self.replies.recv().await.expect("a reply");
        }
        start.elapsed()
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.node.stop();
    }
}

/// Groups in the namespaces the gate lets each role join: the echo node is
/// a hospital (its task's link group), the origin the coordinator.
fn group(role: &str, mode: &str) -> String {
    match role {
        "echo" => format!("medfed.link.bench_{mode}"),
        _ => format!("medfed.coordinator.bench_{mode}"),
    }
}

/// Decodes whole messages; on the echo node it answers each Train with an
/// Update carrying the same tensors, on this side it signals the bench.
struct Receiver;

type ReceiverArgs = (String, UnboundedSender<()>, Arc<WireStats>, Option<String>);

struct ReceiverState {
    /// The echo node decodes requests; this side decodes the answers.
    requests: Inbox<ToHospital>,
    answers: Inbox<Uplinked>,
    done: UnboundedSender<()>,
    stats: Arc<WireStats>,
    /// On the echo node: the group of the origin to answer.
    answer_to: Option<String>,
    origin: Option<ActorRef<Envelope>>,
}

impl Actor for Receiver {
    type Msg = Envelope;
    type State = ReceiverState;
    type Arguments = ReceiverArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Envelope>,
        (own_group, done, stats, answer_to): ReceiverArgs,
    ) -> Result<ReceiverState, ActorProcessingErr> {
        pg::join(own_group, vec![myself.get_cell()]);
        if let Some(g) = &answer_to {
            pg::monitor(g.clone(), myself.get_cell());
        }
        Ok(ReceiverState {
            requests: Inbox::new(stats.clone()),
            answers: Inbox::new(stats.clone()),
            done,
            stats,
            answer_to,
            origin: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Envelope>,
        envelope: Envelope,
        state: &mut ReceiverState,
    ) -> Result<(), ActorProcessingErr> {
        if state.answer_to.is_none() {
            if state.answers.accept(envelope).is_some() {
                let _ = state.done.send(());
            }
            return Ok(());
        }
        match (state.requests.accept(envelope), state.origin.clone()) {
            (Some(ToHospital::Train { ask, model, .. }), Some(origin)) => {
                // The model's own buffer goes back (a hospital's update is
                // a buffer of its own too): no copy in the echo.
                let delta = Arc::try_unwrap(model.params).unwrap_or_else(|shared| (*shared).clone());
                let update = Uplinked {
                    link: "bench".into(),
                    message: ToCoordinator::Update {
                        ask,
                        outcome: TrainOutcome::Trained {
                            update: LocalUpdate {
                                delta,
                                num_examples: 1,
                                train_loss: None,
                                release: Release::NonPrivate,
                                privacy: None,
                            },
                        },
                    },
                };
                send(&origin, update, &state.stats)?;
            }
            _ => {
                let _ = state.done.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Envelope>,
        event: SupervisionEvent,
        state: &mut ReceiverState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ProcessGroupChanged(GroupChangeMessage::Join(_, g, cells)) = event {
            if Some(&g) == state.answer_to.as_ref() {
                state.origin = cells
                    .into_iter()
                    .find(|c| !c.get_id().is_local())
                    .map(ActorRef::from);
            }
        }
        Ok(())
    }
}

/// The echo process: connect to the bench's node and answer every model.
fn echo_node(spec: &str) {
    let mut parts = spec.splitn(3, '|');
    let (port, mode, certs) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or_default().to_string(),
    );
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async move {
        let tls = (!certs.is_empty()).then(|| files(&PathBuf::from(&certs), "hospital"));
        let me = Identity::Hospital("hospital".into());
        let stats = Arc::new(WireStats::default());
        let (node, _events) = node::start(NodeOptions {
            tls,
            directory: stats.directory.clone(),
            ..NodeOptions::new(
                format!("{}00000000000000b1", me.node_name_prefix()),
                me,
                COOKIE.into(),
            )
        })
        .await
        .expect("echo node starts");
        let (tx, _rx) = unbounded_channel();
        Actor::spawn(
            None,
            Receiver,
            (group("echo", &mode), tx, stats, Some(group("origin", &mode))),
        )
        .await
        .expect("echo starts");
        node.connect(&format!("127.0.0.1:{port}"))
            .await
            .expect("connects");
        // Until the benchmark kills this process.
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(node);
    });
}
