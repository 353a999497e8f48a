//! medfed's cluster handshake, run inside TLS (when configured) before
//! ractor_cluster sees a byte. Mutual: the coordinator proves it holds the
//! cookie first, over a nonce the hospital chose and one of its own; only
//! then does the hospital prove it. So a hospital never answers a peer that
//! has proven nothing (a rogue server learns nothing from it), and no proof
//! can be replayed or relayed into another session (both nonces, both roles
//! and, under TLS, the channel's exporter key are in it). The coordinator
//! does answer any client first: its proof lets whoever connects test
//! cookie guesses offline, which is why weak cookies are refused (and why
//! the port belongs behind TLS). 256-bit nonces; constant-time comparison.
//! Every message is small and bounded.
//!
//! hospital -> coordinator  MAGIC, role, name length, name, nonce_h
//! coordinator -> hospital  MAGIC, nonce_c, proof_c
//! hospital -> coordinator  proof_h
//! coordinator -> hospital  verdict (accepted | refused | busy), reason

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::cookie::Cookie;
use super::identity::Identity;

/// Protocol and version: any other first bytes are not this handshake.
/// 2: sessions carry direct frames beside ractor_cluster's (`direct`).
pub const MAGIC: &[u8; 16] = b"MEDFED-CLUSTER/2";
const NONCE: usize = 32;
const PROOF: usize = 32;
const ROLE_HOSPITAL: u8 = 1;
const LABEL: &[u8] = b"medfed cluster handshake v1";
const MAX_REASON: usize = 1024;

const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;
const BUSY: u8 = 2;
/// Busy because another session of the same identity is active.
const DUPLICATE: u8 = 3;

/// The label of a refusal for an active duplicate session.
pub const DUPLICATE_LABEL: &str = "duplicate_session";

/// The TLS exporter label binding proofs to the channel.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-medfed-cluster-handshake";

/// A refusal the coordinator sends, with its reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    /// Worth retrying later (another session of the same hospital is
    /// still alive); otherwise the hospital stops.
    pub retry: bool,
    pub label: &'static str,
}

impl Refusal {
    /// A refusal not worth retrying, counted under `label`.
    pub fn fatal(label: &'static str, reason: String) -> Self {
        Self {
            reason,
            retry: false,
            label,
        }
    }
}

/// Why a handshake did not end in a session.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(
        "the peer does not speak medfed's cluster handshake (another protocol, or an older medfed release)"
    )]
    NotMedfed,
    #[error("the peer broke off the handshake: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("the peer closed the connection without answering the hello ({0})")]
    Unanswered(std::io::Error),
    #[error("malformed handshake: {0}")]
    Malformed(String),
    #[error("the hospital's proof of the cluster cookie is wrong (a wrong cookie on one side)")]
    WrongCookie,
    #[error(
        "the coordinator did not prove it holds the cluster cookie (a wrong cookie on one side, \
         or not this federation's coordinator): nothing was answered"
    )]
    CoordinatorUnproven,
    #[error("refused: {}", .0.reason)]
    Refused(Refusal),
}

impl Failure {
    /// A stable label for counters.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NotMedfed => "not_medfed",
            Self::Io(_) => "broken_off",
            Self::Tls(_) => "tls",
            Self::Unanswered(_) => "unanswered",
            Self::Malformed(_) => "malformed",
            Self::WrongCookie => "wrong_cookie",
            Self::CoordinatorUnproven => "coordinator_unproven",
            Self::Refused(r) => r.label,
        }
    }
}

fn role_label(identity: &Identity) -> &'static [u8] {
    match identity {
        Identity::Coordinator => b"coordinator",
        Identity::Hospital(_) => b"hospital",
    }
}

struct Transcript<'a> {
    client_nonce: &'a [u8],
    server_nonce: &'a [u8],
    client: &'a [u8],
    binding: &'a [u8],
}

impl Transcript<'_> {
    fn proof_of(&self, cookie: &Cookie, prover: &Identity) -> [u8; 32] {
        cookie.proof(&self.parts(prover))
    }

    fn verify(&self, cookie: &Cookie, prover: &Identity, claimed: &[u8]) -> bool {
        cookie.verify(&self.parts(prover), claimed)
    }

    fn parts<'p>(&'p self, prover: &Identity) -> [&'p [u8]; 6] {
        [
            LABEL,
            role_label(prover),
            self.client_nonce,
            self.server_nonce,
            self.client,
            self.binding,
        ]
    }
}

fn nonce() -> [u8; NONCE] {
    use aws_lc_rs::rand::SecureRandom;
    let mut n = [0u8; NONCE];
    // The system's generator fails only when the OS has none: not recoverable.
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut n)
        .expect("the operating system's random generator");
    n
}

async fn read_magic<S: AsyncRead + Unpin>(io: &mut S) -> Result<(), Failure> {
    let mut magic = [0u8; MAGIC.len()];
    io.read_exact(&mut magic).await?;
    if &magic != MAGIC {
        return Err(Failure::NotMedfed);
    }
    Ok(())
}

/// The hospital's side. `me` is the hospital; `binding` the channel's
/// exporter key under TLS (empty without).
pub async fn as_hospital<S>(io: &mut S, cookie: &Cookie, me: &Identity, binding: &[u8]) -> Result<(), Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Identity::Hospital(name) = me else {
        return Err(Failure::Malformed("only hospitals dial a coordinator".into()));
    };
    let client_nonce = nonce();
    let mut hello = MAGIC.to_vec();
    hello.push(ROLE_HOSPITAL);
    hello.push(u8::try_from(name.len()).map_err(|_| Failure::Malformed("name too long".into()))?);
    hello.extend_from_slice(name.as_bytes());
    hello.extend_from_slice(&client_nonce);
    io.write_all(&hello).await?;
    io.flush().await?;

    read_magic(io).await.map_err(|e| match e {
        Failure::Io(e) => Failure::Unanswered(e),
        other => other,
    })?;
    let mut server_nonce = [0u8; NONCE];
    io.read_exact(&mut server_nonce).await?;
    let mut server_proof = [0u8; PROOF];
    io.read_exact(&mut server_proof).await?;
    let stamp = me.stamp();
    let transcript = Transcript {
        client_nonce: &client_nonce,
        server_nonce: &server_nonce,
        client: &stamp,
        binding,
    };
    if !transcript.verify(cookie, &Identity::Coordinator, &server_proof) {
        return Err(Failure::CoordinatorUnproven);
    }
    io.write_all(&transcript.proof_of(cookie, me)).await?;
    io.flush().await?;

    let mut head = [0u8; 3];
    io.read_exact(&mut head).await?;
    let len = usize::from(u16::from_be_bytes([head[1], head[2]]));
    if len > MAX_REASON {
        return Err(Failure::Malformed(format!("a {len}-byte reason")));
    }
    let mut reason = vec![0u8; len];
    io.read_exact(&mut reason).await?;
    // The coordinator's words, shown in this hospital's log.
    let reason = crate::names::plain(&String::from_utf8_lossy(&reason));
    match head[0] {
        ACCEPTED => Ok(()),
        code @ (REFUSED | BUSY | DUPLICATE) => Err(Failure::Refused(Refusal {
            reason,
            retry: code != REFUSED,
            label: if code == DUPLICATE {
                DUPLICATE_LABEL
            } else {
                "refused"
            },
        })),
        other => Err(Failure::Malformed(format!("verdict {other}"))),
    }
}

/// What the coordinator learnt from a hospital's first message.
pub struct Claim {
    pub identity: Identity,
    client_nonce: [u8; NONCE],
}

/// The coordinator's side, up to the hospital's proof: returns who the
/// hospital says it is, proven by the cookie. The caller decides admission
/// and sends the verdict with `answer`.
pub async fn as_coordinator<S>(io: &mut S, cookie: &Cookie, binding: &[u8]) -> Result<Claim, Failure>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    read_magic(io).await?;
    let mut head = [0u8; 2];
    io.read_exact(&mut head).await?;
    if head[0] != ROLE_HOSPITAL {
        return Err(Failure::Malformed(format!("role {}", head[0])));
    }
    let mut name = vec![0u8; usize::from(head[1])];
    io.read_exact(&mut name).await?;
    let name = String::from_utf8(name).map_err(|_| Failure::Malformed("a name that is not UTF-8".into()))?;
    crate::names::check_hospital_name(&name).map_err(Failure::Malformed)?;
    let mut client_nonce = [0u8; NONCE];
    io.read_exact(&mut client_nonce).await?;
    let identity = Identity::Hospital(name);

    let server_nonce = nonce();
    let stamp = identity.stamp();
    let transcript = Transcript {
        client_nonce: &client_nonce,
        server_nonce: &server_nonce,
        client: &stamp,
        binding,
    };
    let mut hello = MAGIC.to_vec();
    hello.extend_from_slice(&server_nonce);
    hello.extend_from_slice(&transcript.proof_of(cookie, &Identity::Coordinator));
    io.write_all(&hello).await?;
    io.flush().await?;

    let mut proof = [0u8; PROOF];
    io.read_exact(&mut proof).await?;
    if !transcript.verify(cookie, &identity, &proof) {
        let _ = answer(
            io,
            Err(&Refusal::fatal("wrong_cookie", "wrong cluster cookie".into())),
        )
        .await;
        return Err(Failure::WrongCookie);
    }
    Ok(Claim {
        identity,
        client_nonce,
    })
}

impl Claim {
    /// The nonce the hospital chose (for tests of freshness).
    pub fn client_nonce(&self) -> &[u8] {
        &self.client_nonce
    }
}

/// Send the coordinator's verdict.
pub async fn answer<S: AsyncWrite + Unpin>(io: &mut S, verdict: Result<(), &Refusal>) -> std::io::Result<()> {
    let (code, reason) = match verdict {
        Ok(()) => (ACCEPTED, ""),
        Err(r) if r.retry && r.label == DUPLICATE_LABEL => (DUPLICATE, r.reason.as_str()),
        Err(r) if r.retry => (BUSY, r.reason.as_str()),
        Err(r) => (REFUSED, r.reason.as_str()),
    };
    let reason = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
    let mut out = vec![code];
    out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
    out.extend_from_slice(reason);
    io.write_all(&out).await?;
    io.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOKIE: &str = "k3J9vQ1xW8pL0aZt+R7mN2cY5hF6eD4s";
    const OTHER: &str = "Zq8Lp3Vx0Ws9Ty2Ur5Ia7Ob1Nc4Md6Ke";

    async fn pair(
        hospital_cookie: &str,
        coordinator_cookie: &str,
    ) -> (Result<(), Failure>, Result<Identity, Failure>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let hc = Cookie::new(hospital_cookie).unwrap();
        let cc = Cookie::new(coordinator_cookie).unwrap();
        let me = Identity::Hospital("h1".into());
        let hospital = async move { as_hospital(&mut a, &hc, &me, b"").await };
        let coordinator = async move {
            let claim = as_coordinator(&mut b, &cc, b"").await?;
            answer(&mut b, Ok(())).await?;
            Ok(claim.identity)
        };
        tokio::join!(hospital, coordinator)
    }

    #[tokio::test]
    async fn the_same_cookie_authenticates_both_sides() {
        let (h, c) = pair(COOKIE, COOKIE).await;
        h.unwrap();
        assert_eq!(c.unwrap(), Identity::Hospital("h1".into()));
    }

    #[tokio::test]
    async fn a_coordinator_without_the_cookie_gets_no_answer() {
        let (h, c) = pair(COOKIE, OTHER).await;
        assert!(matches!(h, Err(Failure::CoordinatorUnproven)), "{h:?}");
        // The hospital hung up without a proof: the coordinator saw nothing.
        assert!(matches!(c, Err(Failure::Io(_))), "{c:?}");
    }

    #[tokio::test]
    async fn a_rogue_server_learns_nothing_but_the_hello() {
        // It answers with random bytes where the proof goes: the hospital
        // sends nothing more (no value computed with the cookie).
        let (mut a, mut b) = tokio::io::duplex(4096);
        let cookie = Cookie::new(COOKIE).unwrap();
        let me = Identity::Hospital("h1".into());
        let hospital = tokio::spawn(async move { as_hospital(&mut a, &cookie, &me, b"").await });
        let mut hello = vec![0u8; MAGIC.len() + 2 + 2 + NONCE];
        b.read_exact(&mut hello).await.unwrap();
        let mut reply = MAGIC.to_vec();
        reply.extend_from_slice(&[7u8; NONCE + PROOF]);
        b.write_all(&reply).await.unwrap();
        let result = hospital.await.unwrap();
        assert!(matches!(result, Err(Failure::CoordinatorUnproven)));
        let mut rest = Vec::new();
        b.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the hospital sent {} more bytes", rest.len());
    }

    #[tokio::test]
    async fn proofs_are_bound_to_both_nonces_and_the_channel() {
        let cookie = Cookie::new(COOKIE).unwrap();
        let cookie = &cookie;
        let h = Identity::Hospital("h1".into());
        let stamp = h.stamp();
        let t = |cn: &'static [u8], sn: &'static [u8], binding: &'static [u8]| {
            let stamp = stamp.clone();
            move |prover: &Identity| {
                Transcript {
                    client_nonce: cn,
                    server_nonce: sn,
                    client: &stamp,
                    binding,
                }
                .proof_of(cookie, prover)
            }
        };
        let base = t(b"a", b"b", b"")(&h);
        assert_ne!(base, t(b"a", b"c", b"")(&h));
        assert_ne!(base, t(b"c", b"b", b"")(&h));
        assert_ne!(base, t(b"a", b"b", b"tls")(&h));
        // A coordinator's proof is never a hospital's (no reflection).
        assert_ne!(base, t(b"a", b"b", b"")(&Identity::Coordinator));
    }

    #[tokio::test]
    async fn anything_else_is_not_medfed() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let cookie = Cookie::new(COOKIE).unwrap();
        // ractor_cluster's own first frame: a u64 length.
        a.write_all(&[0, 0, 0, 0, 0, 0, 0, 40, 10, 38, 10, 20, 0, 0, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let r = as_coordinator(&mut b, &cookie, b"").await;
        assert!(matches!(r, Err(Failure::NotMedfed)), "{:?}", r.err());
    }
}
